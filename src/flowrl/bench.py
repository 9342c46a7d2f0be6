"""`make bench`: performance measured side by side in one run (this machine is noisy, so only
ratios within one run are comparable). Writes experiments/bench/results.md and results.csv.

Current contents: the embedded model's sampling cost by patch size (why the shipped model uses
4x4 patches), and the share of ODE-sampling wall time spent inside model forwards.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parents[2] / "experiments" / "bench"


def _time(fn, repeats: int) -> float:
    """Median wall seconds of fn() over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _time_model(model, batch: int, repeats: int) -> tuple[float, float]:
    """(forward s, forward+backward s) of model.velocity on a batch at sigma 0.5."""
    x = torch.randn(batch, *model.latent_shape)
    sigma = torch.full((batch,), 0.5)
    prompts = ["a red circle on a blue background"] * batch

    def forward():
        with torch.no_grad():
            model.velocity(x, sigma, model.encode_prompts(prompts))

    def train_step():
        model.velocity(x, sigma, model.encode_prompts(prompts)).square().mean().backward()

    return _time(forward, repeats), _time(train_step, max(1, repeats // 2))


def bench_patch_sizes(batch: int, repeats: int) -> list[dict]:
    """Forward and train-step time of the tiny FLUX model at patch 2 (256 tokens) vs 4 (64 tokens),
    same width and depth, interleaved so both see the same machine load."""
    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

    rows = []
    for patch in (4, 2):
        torch.manual_seed(0)
        model = TinyFluxModel(TinyFluxConfig(patch_size=patch))
        forward_s, train_step_s = _time_model(model, batch, repeats)
        rows.append(
            {
                "what": f"tiny_flux patch {patch} ({model.latent_shape[0]} tokens)",
                "batch": batch,
                "forward_s": forward_s,
                "train_step_s": train_step_s,
            }
        )
    base = rows[0]
    for r in rows:
        r["forward_vs_patch4"] = r["forward_s"] / base["forward_s"]
        r["train_step_vs_patch4"] = r["train_step_s"] / base["train_step_s"]
    return rows


def bench_forward_share(batch: int, num_steps: int) -> dict:
    """Share of ODE sampling wall time spent in model forwards (the rest is sampler overhead)."""
    from flowrl.models.tiny_flux import TinyFluxModel
    from flowrl.sampling.ode import ode_sample
    from flowrl.sampling.sigmas import flow_sigmas

    model = TinyFluxModel.from_pretrained().eval()
    forward_s = 0.0
    inner = model.velocity

    def timed_velocity(*args, **kwargs):
        nonlocal forward_s
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        forward_s += time.perf_counter() - start
        return out

    model.velocity = timed_velocity
    embeds = model.encode_prompts(["a red circle on a blue background"] * batch)
    x = model.initial_noise(batch, torch.Generator().manual_seed(0))
    ode_sample(model, x, flow_sigmas(num_steps), embeds)  # warm-up
    forward_s = 0.0
    start = time.perf_counter()
    ode_sample(model, x, flow_sigmas(num_steps), embeds)
    total = time.perf_counter() - start
    return {
        "what": f"ODE sampling {batch} images x {num_steps} steps (shipped model)",
        "total_s": total,
        "forward_share": forward_s / total,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {platform.platform()}"
    patch_rows = bench_patch_sizes(args.batch, args.repeats)
    share = bench_forward_share(args.batch, 16)
    lines = [
        "# flowrl bench",
        "",
        f"Machine: {machine}",
        "",
        "Command: `make bench` (`python -m flowrl.bench`)",
        "",
        "| model | batch | forward s | train step s | forward vs patch 4 | train step vs patch 4 |",
        "|---|---|---|---|---|---|",
    ]
    for r in patch_rows:
        lines.append(
            f"| {r['what']} | {r['batch']} | {r['forward_s']:.3f} | {r['train_step_s']:.3f} | "
            f"{r['forward_vs_patch4']:.2f}x | {r['train_step_vs_patch4']:.2f}x |"
        )
    lines += ["", f"{share['what']}: {share['total_s']:.2f} s, {100 * share['forward_share']:.1f}% of it in model forwards.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    with open(args.out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted({k for r in patch_rows for k in r}))
        w.writeheader()
        w.writerows(patch_rows)


if __name__ == "__main__":
    main()
