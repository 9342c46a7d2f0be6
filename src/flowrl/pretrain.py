"""Pretrain the embedded tiny FLUX model with rectified flow on the synthetic shapes set.

    python -m flowrl.pretrain --out src/flowrl/assets/tiny_flux     # regenerates the shipped weights

Loss: || v_theta(x_t, sigma, text) - (noise - x_0) ||^2 with x_t = (1 - sigma) x_0 + sigma noise
and sigma ~ logit-normal(0, 1) (SD3's choice: most weight at mid noise). Only the 'train' split
of prompt combinations is seen; 'heldout' tests composition. Deterministic given --seed on a
fixed thread count. Short on purpose: the result is imperfect, which leaves RL room to improve.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm


def rectified_flow_loss(model, images: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
    x0 = model.encode_images(images)  # [B, N, C] in [-1, 1]
    noise = torch.randn(x0.shape, generator=generator)
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=generator))  # [B]
    s = sigma[:, None, None]
    x_t = (1 - s) * x0 + s * noise
    v = model.velocity(x_t, sigma, model.encode_prompts(prompts))
    return torch.nn.functional.mse_loss(v, noise - x0)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model, seed: int = 1234, num_steps: int = 16, per_prompt: int = 4) -> dict[str, float]:
    """`shapes` score of ODE samples (T 16, shift 3) on train and held-out prompts."""
    from flowrl.data.shapes import split_specs
    from flowrl.rewards.shapes import ShapesReward
    from flowrl.sampling.ode import generate

    reward = ShapesReward()
    out = {}
    for split in ("train", "heldout"):
        prompts = [s.prompt for s in split_specs(split) for _ in range(per_prompt)]
        images = generate(model, prompts, num_steps=num_steps, seed=seed)
        out[f"shapes/{split}"] = reward(images, prompts).mean().item()
    return out


def pretrain(
    out: Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    threads: int,
    save_every: int,
    config_overrides: dict,
    eval_per_prompt: int = 4,
) -> dict:
    from flowrl.data.shapes import render_batch, sample_specs
    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TinyFluxModel(TinyFluxConfig(**config_overrides)).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    log = []
    start = time.time()
    bar = tqdm(range(steps), desc=f"pretrain tiny_flux ({n_params / 1e6:.2f}M params)")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, warmup=min(50, steps // 10 + 1), peak=lr)
        specs = sample_specs("train", batch_size, rng)
        images = render_batch(specs, seed=rng.randrange(2**31))
        loss = rectified_flow_loss(model, images, [s.prompt for s in specs], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.append(loss.item())
        bar.set_postfix(loss=f"{sum(log[-20:]) / len(log[-20:]):.4f}")
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            model.save_pretrained(out)  # a crash loses at most save_every steps
    train_s = time.time() - start
    model.eval()
    model.save_pretrained(out)
    tail = log[-max(1, min(50, steps // 5)) :]  # last 20% of the steps (at most 50): the converged loss
    metrics = {
        "params": n_params,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "train_seconds": round(train_s, 1),
        "initial_loss": log[0],
        "final_loss": sum(tail) / len(tail),
    }
    metrics.update(evaluate(model, per_prompt=eval_per_prompt))
    (out / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    from flowrl.models.tiny_flux import WEIGHTS_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output directory (default: the shipped weights)")
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (results are reproducible for a fixed count)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--patch-size", type=int, default=None, help="override TinyFluxConfig.patch_size")
    args = p.parse_args(argv)
    overrides = {"patch_size": args.patch_size} if args.patch_size else {}
    metrics = pretrain(args.out, args.steps, args.batch_size, args.lr, args.seed, args.threads, args.save_every, overrides)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
