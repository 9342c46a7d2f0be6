"""Train the `tiny_clip` reward: a tiny open_clip CLIP, contrastively, on the synthetic shapes set.

    python -m flowrl.rewards.train_tiny_clip            # regenerates the shipped weights

Each step is one batch of all 90 prompts (no duplicate captions, so every off-diagonal pair is
a true negative), freshly rendered at random size/position, plus Gaussian pixel noise of random
strength so the scorer also reacts to the noisy images a generator produces. Trained on all
prompt combinations: the reward model knows the whole world; only the generator has held-out
prompts. Weights are stored fp16 (the 49k-token BPE embedding dominates the size).
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

from flowrl.rewards.clip import TINY_CLIP_ARCH, TINY_CLIP_WEIGHTS, clip_preprocess, resolve_arch, write_tiny_clip_config


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


def train(out_dir: Path, steps: int, lr: float, seed: int, threads: int, max_noise: float) -> dict:
    import open_clip
    from safetensors.torch import save_file

    from flowrl.data.shapes import all_specs, render_batch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    arch, weights = out_dir / TINY_CLIP_ARCH.name, out_dir / TINY_CLIP_WEIGHTS.name
    write_tiny_clip_config(arch)
    name, cfg = resolve_arch(arch)
    model = open_clip.create_model(name, pretrained=None).train()
    tokenizer = open_clip.get_tokenizer(name)
    size = cfg["vision_cfg"]["image_size"]
    specs = all_specs()
    tokens = tokenizer([s.prompt for s in specs])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.time()
    bar = tqdm(range(steps), desc="train tiny_clip")
    for _ in bar:
        order = rng.sample(range(len(specs)), len(specs))
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
        "zero_shot_top1_90way": zero_shot_accuracy(model, tokenizer, size, seed=seed + 1),
    }
    (out_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=TINY_CLIP_WEIGHTS.parent)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-noise", type=float, default=0.25, help="max std of the pixel-noise augmentation")
    args = p.parse_args(argv)
    print(json.dumps(train(args.out, args.steps, args.lr, args.seed, args.threads, args.max_noise), indent=2))


if __name__ == "__main__":
    main()
