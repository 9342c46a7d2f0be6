"""flowrl.utils.seeds.mix_seed: numpy's SeedSequence, one function for every derived seed."""

import numpy as np
import pytest

from flowrl.utils.seeds import mix_seed


def test_mix_seed_is_seed_sequence_of_the_purpose_and_parts():
    import zlib

    want = int(np.random.SeedSequence([zlib.crc32(b"rollout"), 3, 7, 1]).generate_state(1, dtype=np.uint32)[0])
    assert mix_seed("rollout", 3, 7, 1) == want
    assert 0 <= want < 2**32  # torch's CPU generator keeps 32 bits


def test_streams_and_neighbours_differ():
    seeds = {mix_seed(p, s, i, r) for p in ("rollout", "prompts") for s in range(3) for i in range(3) for r in range(2)}
    assert len(seeds) == 2 * 3 * 3 * 2  # no collisions among nearby inputs, nor between purposes


def test_negative_parts_are_refused():
    with pytest.raises(ValueError, match=">= 0"):
        mix_seed("rollout", -1, 0)
