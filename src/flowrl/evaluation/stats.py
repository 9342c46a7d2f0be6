"""The held-out scores' statistics, shared by a training run's evaluation (flowrl.training.module)
and `flowrl.evaluate` (flowrl.evaluation.scoring): each mean's bootstrap 95% interval over prompts,
and GenEval's per-category accuracies with their overall. Torch only, so that `flowrl.evaluate`
does not import Lightning for them."""

from __future__ import annotations

import torch


def category_means(
    reward, name: str, scores: torch.Tensor, prompts: list[str], per_prompt: int = 1, resamples: int = 0, seed: int = 0
) -> dict[str, float]:
    """`val/category/<name>/<category>` for a reward that groups prompts by category (GenEval's
    verifier), `.../overall`, GenEval's headline number: the mean over the categories present,
    and with `resamples` its bootstrap 95% interval `val_ci/category/<name>/overall/low|high`
    (prompts resampled within each category: `prompts` holds each prompt per_prompt times in a row)."""
    if not hasattr(reward, "categories"):
        return {}
    from flowrl.rewards.geneval import summarize

    cats = reward.categories(prompts)
    rows = {c: [i for i, x in enumerate(cats) if x == c] for c in dict.fromkeys(cats)}
    out = {f"val/category/{name}/{c}": v for c, v in summarize({c: scores[r] for c, r in rows.items()}).items()}
    if resamples and rows:
        g = torch.Generator().manual_seed(seed)
        boot = torch.zeros(resamples)
        for r in rows.values():  # [prompts of c, per_prompt] -> per-prompt means, resampled
            per = scores[r].float().view(-1, per_prompt).mean(1)
            boot += per[torch.randint(len(per), (resamples, len(per)), generator=g)].mean(1) / len(rows)
        low, high = torch.quantile(boot, torch.tensor([0.025, 0.975])).tolist()
        out |= {f"val_ci/category/{name}/overall/low": low, f"val_ci/category/{name}/overall/high": high}
    return out


def bootstrap_ci(scores: torch.Tensor, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of scores [prompts, samples], resampling prompts
    (a prompt's samples share it, so they are not independent draws): the evaluation's own
    sampling noise, for binary verifier scores as for continuous rewards."""
    per_prompt = scores.float().mean(1)  # [P]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(per_prompt), (resamples, len(per_prompt)), generator=g)
    means = per_prompt[idx].mean(1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail])).tolist()
    return low, high
