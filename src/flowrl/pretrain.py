"""Pretrain the embedded tiny FLUX model with rectified flow on a synthetic world.

    python -m flowrl.pretrain --out src/flowrl/assets/tiny_flux     # regenerates the shipped weights
    python -m flowrl.pretrain --world geneval --out /tmp/tiny_flux_geneval   # the compositional world

--world shapes (default, the shipped model): flowrl.data.shapes at 32 px, patch 4, evaluated by
the `shapes` reward. --world geneval: flowrl.data.geneval at 32 px, patch 4 (the same 64 tokens), the text table over the world's 23 words, training
prompts drawn by sample_specs("train") (a category uniformly, then a prompt), evaluated by the
`geneval` verifier on train and held-out prompts, per category (experiments/compositional-world).

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


WORLDS = ("shapes", "geneval")


def world_config(world: str) -> dict:
    """TinyFluxConfig fields a world needs (on top of the dataclass defaults)."""
    if world == "shapes":
        return {}
    if world == "geneval":
        from flowrl.data.geneval import IMAGE_SIZE, all_specs, vocabulary
        from flowrl.models.tiny_flux import PAD, UNK, TinyFluxConfig

        longest = max(len(s.prompt.split()) for s in all_specs())
        max_len = TinyFluxConfig.max_text_len
        if longest > max_len:
            raise ValueError(f"geneval prompts run to {longest} words, over max_text_len {max_len}")
        return {"image_size": IMAGE_SIZE, "vocab": [PAD, UNK, *vocabulary()]}
    raise ValueError(f"world must be one of {WORLDS}, got {world!r}")


def evaluate_geneval(
    model, seed: int = 1234, num_steps: int = 16, per_prompt: int = 2, limit: int | None = None
) -> dict[str, float]:
    """`geneval` verifier on ODE samples (T 16, shift 3) of every train and held-out prompt
    (`limit`: at most that many of each category's prompts, evenly spaced; for quick checks).
    geneval/<split>: the mean over the split's prompts of the all-or-nothing score (each prompt's
    samples averaged first: every prompt has per_prompt of them); geneval/<split>/<category>:
    per category; geneval/<split>/overall: GenEval's number, the mean over the categories."""
    from flowrl.data.geneval import CATEGORIES, split_specs
    from flowrl.rewards.geneval import GenEvalReward, summarize
    from flowrl.sampling.ode import generate

    reward = GenEvalReward()
    out = {}
    for split in ("train", "heldout"):
        specs = []
        for cat in CATEGORIES:
            of_cat = split_specs(split, [cat])
            specs += of_cat if limit is None or len(of_cat) <= limit else of_cat[:: -(-len(of_cat) // limit)]
        prompts = [s.prompt for s in specs for _ in range(per_prompt)]
        images = generate(model, prompts, num_steps=num_steps, seed=seed)
        cats = reward.category_scores(images, prompts)
        out[f"geneval/{split}"] = torch.stack(list(cats.values())).nansum(0).mean().item()
        out.update({f"geneval/{split}/{k}": v for k, v in summarize(cats).items()})
    return out


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
    eval_per_prompt: int | None = None,
    world: str = "shapes",
    eval_limit: int | None = None,
) -> dict:
    """Train, save to `out` and evaluate (eval_per_prompt samples per prompt: default 4 for
    shapes' 90 prompts, 2 for geneval's 1143; geneval's eval_limit: prompts per category)."""
    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

    if world == "shapes":
        from flowrl.data.shapes import render_batch, sample_specs
    elif world == "geneval":
        from flowrl.data.geneval import render_batch, sample_specs
    config_overrides = world_config(world) | config_overrides

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
        "world": world,
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
    eval_start = time.time()
    if world == "geneval":
        metrics.update(evaluate_geneval(model, per_prompt=eval_per_prompt or 2, limit=eval_limit))
    else:
        metrics.update(evaluate(model, per_prompt=eval_per_prompt or 4))
    metrics["eval_seconds"] = round(time.time() - eval_start, 1)
    (out / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    from flowrl.models.tiny_flux import WEIGHTS_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", choices=WORLDS, default="shapes", help="training world (default shapes: the shipped model)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: the world's weights in flowrl/assets)")
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (results are reproducible for a fixed count)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--patch-size", type=int, default=None, help="override TinyFluxConfig.patch_size")
    p.add_argument("--eval-per-prompt", type=int, default=None, help="samples per prompt (default 4 shapes, 2 geneval)")
    p.add_argument("--eval-limit", type=int, default=None, help="geneval: evaluate at most N prompts per category")
    args = p.parse_args(argv)
    overrides = {"patch_size": args.patch_size} if args.patch_size else {}
    out = args.out or (WEIGHTS_DIR if args.world == "shapes" else WEIGHTS_DIR.parent / f"tiny_flux_{args.world}")
    metrics = pretrain(
        out,
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        args.threads,
        args.save_every,
        overrides,
        eval_per_prompt=args.eval_per_prompt,
        world=args.world,
        eval_limit=args.eval_limit,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
