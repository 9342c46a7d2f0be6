"""Forward cost of the tiny model at the candidate resolutions of the compositional world.

Builds TinyFluxModel (the shipped architecture: 2 double + 4 single FLUX blocks, width 128) at each
(image_size, patch_size) and times one no-grad `velocity` at batch 64 with torch.utils.benchmark
(median of blocked_autorange), next to the model FLOPs (TinyFluxModel.forward_flops). The
candidates are timed in interleaved rounds and each reports its fastest round's median, so that
load from other processes on a shared machine inflates the numbers less (it only ever adds
time). Random weights: the cost does not depend on them. Usage:

    .venv/bin/python experiments/compositional-world/forward_cost.py [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

# (image_size, patch_size): 4 px patches keep a token's receptive field as today (64/144/256
# tokens); 6 and 8 px patches at 48/64 keep today's 64 tokens with wider ones (108/192 channels).
CANDIDATES = ((32, 4), (48, 4), (48, 6), (64, 4), (64, 8))


def build(size: int, patch: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = TinyFluxModel(TinyFluxConfig(image_size=size, patch_size=patch)).eval()
    tokens, channels = model.latent_shape
    x = torch.randn(batch, tokens, channels)
    embeds = model.encode_prompts(["a red circle left of a blue square"] * batch)
    timer = benchmark.Timer(
        stmt="with torch.no_grad(): model.velocity(x, 0.5, embeds)",
        globals={"torch": torch, "model": model, "x": x, "embeds": embeds},
    )
    gflops = model.forward_flops(batch) / 1e9
    return {
        "size": size,
        "patch": patch,
        "tokens": tokens,
        "channels": channels,
        "timer": timer,
        "gflops": gflops,
        "ms": float("inf"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), batch {args.batch}, fastest of {args.rounds} rounds")
    print("size patch tokens channels  median_ms  GFLOPs  ms/(32px,p4)")
    rows = [build(s, p, args.batch) for s, p in CANDIDATES]
    for _ in range(args.rounds):
        for r in rows:
            r["ms"] = min(r["ms"], r["timer"].blocked_autorange(min_run_time=args.min_run_time).median * 1e3)
    base = rows[0]["ms"]
    for r in rows:
        print(
            f"{r['size']:4d} {r['patch']:5d} {r['tokens']:6d} {r['channels']:8d} {r['ms']:10.1f} {r['gflops']:7.1f} {r['ms'] / base:12.2f}"
        )


if __name__ == "__main__":
    main()
