"""Train the `tiny_clip` reward: a tiny open_clip CLIP, contrastively, on a synthetic world.

    python -m flowrl.rewards.train_tiny_clip                    # regenerates the shipped weights
    python -m flowrl.rewards.train_tiny_clip --world geneval    # the `geneval_clip` weights

shapes (default): each step is one batch of all 90 prompts (no duplicate captions, so every
off-diagonal pair is a true negative), freshly rendered at random size/position, plus Gaussian
pixel noise of random strength so the scorer also reacts to the noisy images a generator
produces. geneval (flowrl.data.geneval, 32 px, 1143 prompts): each step `--batch` distinct
prompts drawn without replacement from all of them (optionally up to `--hard-fraction` of the
batch a drawn prompt's hard negative: its colours swapped, its relation mirrored; default 0, as
0.5 measured no better at 600 steps). Captions all differ, yet a
few are true of each other's renderings (the same scene said two ways: "a red square" / "one red
square", "a red circle left of a blue square" / "a blue square right of a red circle"; or a
less specific caption: "a circle"): such off-diagonal pairs are false negatives, a handful per
uniform batch, which caps the exact-caption top-1 (the verified top-1 counts any caption the
rule verifier accepts). Rendered and noised as shapes; the architecture is the same at
32 px with 4 px patches (64 tokens), as for shapes. Trained on all prompts: the reward model knows the whole
world; only the generator has held-out prompts. Weights are stored fp16 (the 49k-token BPE
embedding dominates the size).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from flowrl.rewards.clip import TINY_CLIP_FILES, clip_preprocess, resolve_arch, write_tiny_clip_config

WORLDS = tuple(TINY_CLIP_FILES)
MIN_SCHEDULED_STEPS = 20
GENEVAL_STEPS = 600  # geneval's default --steps (the shipped weights' run; see the compositional-world README)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch whose i-th image matches the i-th caption."""
    logits = logit_scale.exp().clamp(max=100) * img @ txt.T  # [B, B]
    labels = torch.arange(len(img))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, image_size: int, seed: int, per_prompt: int = 4) -> float:
    """Fraction of fresh clean renderings whose best-matching caption (of all 90) is their own."""
    from flowrl.data.shapes import all_specs, render_batch

    specs = all_specs()
    txt = F.normalize(model.encode_text(tokenizer([s.prompt for s in specs])), dim=-1)
    images = render_batch([s for s in specs for _ in range(per_prompt)], seed=seed)
    img = F.normalize(model.encode_image(clip_preprocess(images, image_size)), dim=-1)
    target = torch.arange(len(specs)).repeat_interleave(per_prompt)
    return (img @ txt.T).argmax(-1).eq(target).float().mean().item()


def hard_negatives(spec) -> dict[str, object]:
    """A geneval spec's captions that differ from it by one composition and are false on its
    renderings: 'colour_swap' (the two objects' colours exchanged; position and color_attr
    prompts of two colours) and 'mirrored' (the relation's mirror; position prompts)."""
    from dataclasses import replace

    from flowrl.data.geneval import mirrored

    out: dict[str, object] = {}
    if spec.category in ("position", "color_attr") and spec.objects[0].color != spec.objects[1].color:
        a, b = spec.objects
        out["colour_swap"] = replace(spec, objects=(replace(a, color=b.color), replace(b, color=a.color)))
    if spec.category == "position":
        out["mirrored"] = mirrored(spec)
    return out


@torch.no_grad()
def geneval_accuracy(score, seed: int, per_prompt: int = 2) -> dict:
    """On fresh clean renderings of all 1143 geneval prompts (per_prompt each): top-1 among all
    captions (overall and per category), and how often the true caption outscores each hard
    negative of `hard_negatives`. score(images, captions) -> [N images, M captions] similarities."""
    from flowrl.data.geneval import CATEGORIES, all_specs, render_batch
    from flowrl.rewards.geneval import GenEvalReward

    specs = all_specs()
    index = {s: i for i, s in enumerate(specs)}
    rows = [s for s in specs for _ in range(per_prompt)]
    images = render_batch(rows, seed=seed)
    sims = torch.cat([score(images[i : i + 512], [s.prompt for s in specs]) for i in range(0, len(rows), 512)])
    target = torch.tensor([index[s] for s in rows])
    hit = sims.argmax(-1).eq(target).float()
    cats = [s.category for s in rows]
    out = {
        f"zero_shot_top1_{len(specs)}way": hit.mean().item(),
        "zero_shot_top1_by_category": {c: hit[[i for i, x in enumerate(cats) if x == c]].mean().item() for c in CATEGORIES},
    }
    # the best caption may be another true description of the same image (see the module docstring)
    verified = GenEvalReward()(images, [specs[k].prompt for k in sims.argmax(-1).tolist()])
    out[f"zero_shot_top1_{len(specs)}way_verified"] = verified.mean().item()
    true = sims.gather(1, target[:, None])[:, 0]
    for kind in ("colour_swap", "mirrored"):
        pairs = [(i, index[n[kind]]) for i, s in enumerate(rows) if kind in (n := hard_negatives(s))]
        i, j = torch.tensor(pairs).T
        out[f"true_beats_{kind}"] = true[i].gt(sims[i, j]).float().mean().item()
        out[f"true_beats_{kind}_n"] = len(pairs)
    return out


def geneval_batch(partners: list[list[int]], size: int, hard_fraction: float, rng: random.Random) -> list[int]:
    """`size` distinct prompt indices: prompts drawn without replacement, each followed (until
    hard_fraction of the batch are such partners) by one of its hard negatives (partners[i], the
    indices of `hard_negatives`), so the batch itself contrasts swapped colours and mirrored
    relations, which a uniform draw of 128 of 1143 prompts pairs only ~1 time in 9."""
    picked: dict[int, None] = {}  # insertion-ordered set
    budget = int(hard_fraction * size)
    for i in rng.sample(range(len(partners)), size):
        picked.setdefault(i)
        if len(picked) < size and budget > 0 and partners[i]:
            before = len(picked)
            picked.setdefault(rng.choice(partners[i]))
            budget -= len(picked) - before
        if len(picked) == size:
            break
    return list(picked)


def embedding_scorer(model, tokenizer, image_size: int):
    """score(images, captions) -> cosine matrix, for geneval_accuracy on a model being trained."""

    def score(images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        txt = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
        img = F.normalize(model.encode_image(clip_preprocess(images, image_size)), dim=-1)
        return img @ txt.T

    return score


def train(
    out_dir: Path,
    steps: int,
    lr: float,
    seed: int,
    threads: int,
    max_noise: float,
    world: str = "shapes",
    batch: int = 128,
    eval_per_prompt: int = 2,
    hard_fraction: float = 0.0,
) -> dict:
    import open_clip
    from safetensors.torch import save_file

    if world == "shapes":
        from flowrl.data.shapes import all_specs, render_batch
    elif world == "geneval":
        from flowrl.data.geneval import all_specs, render_batch
    else:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    arch, weights = (out_dir / f.name for f in TINY_CLIP_FILES[world])
    write_tiny_clip_config(arch, world)
    name, cfg = resolve_arch(arch)
    model = open_clip.create_model(name, pretrained=None).train()
    tokenizer = open_clip.get_tokenizer(name)
    size = cfg["vision_cfg"]["image_size"]
    specs = all_specs()
    tokens = tokenizer([s.prompt for s in specs])
    # shapes: every prompt each step (90); geneval: `batch` distinct prompts of the 1143
    per_step = len(specs) if world == "shapes" else min(batch, len(specs))
    index = {s: i for i, s in enumerate(specs)}
    partners = [[index[n] for n in hard_negatives(s).values()] if world == "geneval" else [] for s in specs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    if steps >= MIN_SCHEDULED_STEPS:
        lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    else:  # smoke runs: OneCycleLR's 10% warm-up is under two steps (at 10 steps it divides by zero)
        lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    start = time.time()
    bar = tqdm(range(steps), desc=f"train tiny_clip ({world})")
    for _ in bar:
        if world == "shapes":
            order = rng.sample(range(len(specs)), per_step)
        else:
            order = geneval_batch(partners, per_step, hard_fraction, rng)
        images = render_batch([specs[i] for i in order], seed=rng.randrange(2**31))
        noise_std = torch.rand(len(order), 1, 1, 1) * max_noise
        images = (images + noise_std * torch.randn_like(images)).clamp(0, 1)
        img = F.normalize(model.encode_image(clip_preprocess(images, size)), dim=-1)
        txt = F.normalize(model.encode_text(tokens[order]), dim=-1)
        loss = clip_loss(img, txt, model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(weights))
    metrics = {
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "train_seconds": round(time.time() - start, 1),
        "final_loss": loss.item(),
        "params": sum(p.numel() for p in model.parameters()),
    }
    if world == "shapes":
        metrics["zero_shot_top1_90way"] = zero_shot_accuracy(model, tokenizer, size, seed=seed + 1)
    else:
        metrics |= {"world": world, "batch": per_step, "hard_fraction": hard_fraction, "threads": threads, "max_noise": max_noise}
        if eval_per_prompt > 0:
            metrics |= geneval_accuracy(embedding_scorer(model, tokenizer, size), seed + 1, eval_per_prompt)
    (out_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", choices=WORLDS, default="shapes", help="the synthetic world to train on")
    p.add_argument("--out", type=Path, default=None, help="default: the world's shipped assets dir")
    p.add_argument("--steps", type=int, default=None, help="default: 400 (shapes), GENEVAL_STEPS (geneval)")
    p.add_argument("--batch", type=int, default=128, help="geneval: distinct prompts per step (shapes: all 90)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--hard-fraction", type=float, default=0.0, help="geneval: share of a batch that is a drawn prompt's hard negative"
    )
    p.add_argument("--eval-per-prompt", type=int, default=2, help="geneval: clean renderings per prompt scored (0: none)")
    p.add_argument("--max-noise", type=float, default=0.25, help="max std of the pixel-noise augmentation")
    args = p.parse_args(argv)
    out = args.out or TINY_CLIP_FILES[args.world][1].parent
    steps = args.steps or (400 if args.world == "shapes" else GENEVAL_STEPS)
    metrics = train(
        out,
        steps,
        args.lr,
        args.seed,
        args.threads,
        args.max_noise,
        args.world,
        args.batch,
        args.eval_per_prompt,
        args.hard_fraction,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
