"""One way to derive a seed from several parts (a run's seed, an iteration, a rank, a purpose):
numpy's SeedSequence, which mixes its entropy words so that nearby inputs give unrelated seeds,
instead of sums of hand-picked primes. The purpose string keeps two streams of the same (seed,
iteration, rank) apart."""

from __future__ import annotations

import zlib


def mix_seed(purpose: str, *parts: int) -> int:
    """A 32-bit seed for torch.Generator.manual_seed (its CPU generator keeps 32 bits): mix_seed(
    "rollout", seed, iteration, rank). Parts must be integers >= 0."""
    import numpy as np

    if any(int(p) < 0 for p in parts):
        raise ValueError(f"seed parts must be >= 0, got {parts}")
    entropy = [zlib.crc32(purpose.encode()), *(int(p) for p in parts)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])
