"""Sampling a protocol with fixed noise and scoring every image; the statistics of the scores.

Noise: one generator seeded with the sampler's seed, drawn chunk by chunk in prompt order (each
prompt's `samples_per_prompt` rows in a row), which is the same stream `flowrl.sampling.ode.
generate` draws at once (torch's CPU normal fills a tensor in blocks of 16 values: a chunk of a
whole number of blocks continues the stream exactly; a latent of another size is drawn at once).
So a protocol with a training run's evaluation settings makes that run's images bit for bit, and
every checkpoint evaluated by one protocol sees the same noise (the pairs of a paired comparison).
Images are scored chunk by chunk and dropped (only the grid's first rows are kept), so the
memory does not grow with the number of prompts.

Statistics, the training run's evaluation's own (flowrl.evaluation.stats):
- per reward: the mean, and the percentile bootstrap 95% interval over prompts (`bootstrap_ci`);
- per category, where the protocol has categories (a jsonl prompt file's, or a reward's own such
  as GenEval's verifier): `category_means` (each category's mean, their mean `overall` with its
  stratified bootstrap interval), and each category's own bootstrap interval;
- two checkpoints (the first the baseline): per reward, the paired difference over the same
  prompts and noises: per prompt the mean over its samples, then flowrl.analysis.stats.
  paired_comparison (the mean difference, its paired-t 95% interval, scipy's ttest_rel p-value).
"""

from __future__ import annotations

import contextlib
import math

import torch

from flowrl.evaluation.protocol import Sampler

NORMAL_BLOCK = 16  # torch's CPU normal_ fills tensors of >= 16 values in blocks of 16


def sample_and_score(model, prompts: list[str], rewards: dict, sampler: Sampler, keep: int = 0, desc: str = "sampling"):
    """Images of every (prompt, sample) under the sampler's ODE, each scored by every reward.
    Returns ({reward: [N] fp32 scores}, the first `keep` images), N = len(prompts) x samples_per_prompt."""
    from tqdm.auto import tqdm

    from flowrl.sampling.ode import ode_sample
    from flowrl.sampling.sigmas import noise_schedule

    rows = [p for p in prompts for _ in range(sampler.samples_per_prompt)]
    sigmas = noise_schedule(sampler.num_steps, sampler.shift, sampler.sigma_grid)
    g = torch.Generator().manual_seed(sampler.seed)
    shape = tuple(model.latent_shape)
    whole = None if math.prod(shape) % NORMAL_BLOCK == 0 else torch.randn((len(rows), *shape), generator=g)
    full = sampler.full_precision and hasattr(model, "full_precision")
    precision = model.full_precision() if full else contextlib.nullcontext()
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in rewards}
    kept: list[torch.Tensor] = []
    with torch.no_grad(), precision, tqdm(total=len(rows), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for start in range(0, len(rows), sampler.batch_size):
            chunk = rows[start : start + sampler.batch_size]
            noise = whole[start : start + len(chunk)] if whole is not None else torch.randn((len(chunk), *shape), generator=g)
            x = ode_sample(model, noise.to(model.device), sigmas, model.encode_prompts(chunk))
            images = model.decode(x).float().cpu()
            for name, reward in rewards.items():
                scores[name].append(reward(images, chunk).float().cpu())
            room = keep - sum(len(k) for k in kept)
            if room > 0:
                kept.append(images[:room])
            bar.update(len(chunk))
    return {n: torch.cat(v) for n, v in scores.items()}, (torch.cat(kept) if kept else torch.empty(0))


class _Categories:
    """A protocol file's categories in the shape category_means reads: `.categories(rows)`."""

    def __init__(self, by_prompt: dict[str, str]):
        self.by_prompt = by_prompt

    def categories(self, rows: list[str]) -> list[str]:
        return [self.by_prompt[p] for p in rows]


def summarize(
    scores: dict[str, torch.Tensor],
    rewards: dict,
    prompts: list[str],
    per_prompt: int,
    categories: list[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """One row per (reward, category): {'reward', 'category' ('all', a category, or 'overall': the
    mean over categories), 'n_prompts', 'mean', 'ci_low', 'ci_high'}; the intervals are bootstrap
    95% over prompts (stratified by category for 'overall')."""
    from flowrl.evaluation.stats import bootstrap_ci, category_means

    rows = [p for p in prompts for _ in range(per_prompt)]
    file_cats = None
    if categories is not None:
        by_prompt = {}
        for p, c in zip(prompts, categories, strict=True):
            if by_prompt.setdefault(p, c) != c:
                file_cats = None  # one prompt text under two categories: not groupable by text
                break
        else:
            file_cats = _Categories({p: c if c is not None else "uncategorized" for p, c in by_prompt.items()})
    out = []
    for name, s in scores.items():
        low, high = bootstrap_ci(s.view(len(prompts), per_prompt), resamples, seed)
        out.append(_row(name, "all", len(prompts), s.mean().item(), low, high))
        grouper = rewards[name] if hasattr(rewards[name], "categories") else file_cats
        if grouper is None:
            continue
        cats = category_means(grouper, name, s, rows, per_prompt, resamples, seed)
        labels = grouper.categories(rows)
        for cat in dict.fromkeys(labels):
            idx = torch.tensor([i for i, c in enumerate(labels) if c == cat])
            low, high = bootstrap_ci(s[idx].view(-1, per_prompt), resamples, seed)
            out.append(_row(name, cat, len(idx) // per_prompt, cats[f"val/category/{name}/{cat}"], low, high))
        overall = f"val/category/{name}/overall"
        if overall in cats:
            ci = (
                cats.get(f"val_ci/category/{name}/overall/low", math.nan),
                cats.get(f"val_ci/category/{name}/overall/high", math.nan),
            )
            out.append(_row(name, "overall", len(prompts), cats[overall], *ci))
    return out


def _row(reward: str, category: str, n: int, mean: float, low: float, high: float) -> dict:
    return {
        "reward": reward,
        "category": category,
        "n_prompts": n,
        "mean": float(mean),
        "ci_low": float(low),
        "ci_high": float(high),
    }


def metrics(protocol: str, table: list[dict]) -> dict[str, float]:
    """The table as MLflow metrics: eval/<protocol>/<reward> (its mean over all images),
    eval_ci/<protocol>/<reward>/low|high, and eval/<protocol>/category/<reward>/<category>
    (GenEval's overall as .../overall)."""
    out = {}
    for r in table:
        key = f"{protocol}/{r['reward']}" if r["category"] == "all" else f"{protocol}/category/{r['reward']}/{r['category']}"
        out[f"eval/{key}"] = r["mean"]
        if not math.isnan(r["ci_low"]):
            out[f"eval_ci/{key}/low"], out[f"eval_ci/{key}/high"] = r["ci_low"], r["ci_high"]
    return out


def paired(base: dict[str, torch.Tensor], other: dict[str, torch.Tensor], per_prompt: int) -> list[dict]:
    """Per reward, `other` minus `base` over the same prompts and noises: per prompt the mean of its
    samples, then the paired comparison (mean difference, paired-t 95% CI, ttest_rel p)."""
    from flowrl.analysis.stats import paired_comparison

    out = []
    for name in base:
        if name not in other:
            continue
        a = other[name].view(-1, per_prompt).double().mean(1).numpy()
        b = base[name].view(-1, per_prompt).double().mean(1).numpy()
        c = paired_comparison(a, b)
        out.append({"reward": name} | {k: c[k] for k in ("n_pairs", "mean_diff", "ci_low", "ci_high", "p_value")})
    return out
