"""What an evaluation writes: the markdown table (mean ± 95% CI per reward and per category, the
paired differences), the CSV of per-image scores, the image grid, and the protocol's end-of-training
run (`eval_protocol=`: `run_in_training`)."""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path


def _num(x: float, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(r: dict) -> str:
    if math.isnan(r["ci_low"]):
        return _num(r["mean"])
    half = (r["ci_high"] - r["ci_low"]) / 2
    return f"{r['mean']:.4f} ± {half:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]"


def render_table(header: dict, tables: dict[str, list[dict]], pairs: dict[str, list[dict]] | None = None) -> str:
    """Markdown: the protocol's settings, then per reward a row per checkpoint (mean ± half-width
    [95% CI]), categories below, then each checkpoint's paired difference against the first."""
    lines = [f"# {header['protocol']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "protocol"]
    labels = list(tables)
    lines += ["", "Mean ± half-width [bootstrap 95% interval over prompts].", ""]
    lines += ["| reward | category | prompts | " + " | ".join(labels) + " |", "|---|---|---|" + "---|" * len(labels)]
    first = tables[labels[0]]
    for i, r in enumerate(first):
        cells = [_ci(tables[label][i]) for label in labels]
        lines.append(f"| {r['reward']} | {r['category']} | {r['n_prompts']} | " + " | ".join(cells) + " |")
    for label, rows in (pairs or {}).items():
        lines += ["", f"## {label} − {labels[0]} (paired over the same prompts and noises)", ""]
        lines += ["| reward | pairs (prompts) | mean diff | paired-t 95% CI | p (ttest_rel) |", "|---|---|---|---|---|"]
        for r in rows:
            ci = f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
            lines.append(f"| {r['reward']} | {r['n_pairs']} | {_num(r['mean_diff'])} | {ci} | {_num(r['p_value'], 3)} |")
    return "\n".join(lines) + "\n"


def write_scores_csv(path: Path, prompts: list[str], categories: list[str] | None, per_prompt: int, scores: dict) -> Path:
    """One row per image: checkpoint, prompt index, sample, prompt, category, one column per reward.
    `scores`: {checkpoint label: {reward: [N] tensor}}."""
    rewards = list(next(iter(scores.values())))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "prompt_index", "sample", "prompt", "category", *rewards])
        for label, by_reward in scores.items():
            columns = [by_reward[r].tolist() for r in rewards]
            for i, prompt in enumerate(prompts):
                for k in range(per_prompt):
                    row = i * per_prompt + k
                    cat = categories[i] if categories is not None else ""
                    w.writerow([label, i, k, prompt, cat, *(f"{c[row]:.6g}" for c in columns)])
    return path


def run_in_training(cfg, module, logger) -> dict[str, float]:
    """`eval_protocol=<name>` after a run's last iteration: the protocol on the evaluated weights (the
    EMA when on), logged into the run's MLflow run as eval/<protocol>/<reward> (and its intervals and
    categories) at step = iterations done, with its table and grid as artifacts. Every rank samples
    (the weights may be sharded); rank 0 logs. Returns the metrics."""
    from hydra.utils import instantiate

    from flowrl.evaluation.protocol import Sampler, read_prompts
    from flowrl.evaluation.scoring import metrics, sample_and_score, summarize
    from flowrl.training.distributed import is_rank_zero

    protocol = cfg.eval_protocol
    name = str(protocol.name)
    sampler = Sampler.from_config(protocol.sampler)
    prompts = read_prompts(protocol)
    rewards = {n: instantiate(r) for n, r in protocol.rewards.items()}
    if hasattr(module.model, "precompute_prompts"):
        module.model.precompute_prompts(prompts.prompts)
    module.model.eval()
    keep = int(cfg.get("val", {}).get("grid_prompts", 8)) * sampler.samples_per_prompt
    with module.evaluated_weights(), protocol_settings(module.model, sampler):
        scores, grid = sample_and_score(module.model, prompts.prompts, rewards, sampler, keep, desc=f"eval_protocol={name}")
    table = summarize(scores, rewards, prompts.prompts, sampler.samples_per_prompt, prompts.categories, seed=sampler.seed)
    out = metrics(name, table)
    if is_rank_zero() and hasattr(logger, "run_id"):
        logger.log_metrics(out, step=module.iteration)
        header = {
            "protocol": name,
            "paper": protocol.get("paper"),
            "prompts": f"{len(prompts.prompts)} x {sampler.samples_per_prompt} samples",
        }
        logger.experiment.log_text(logger.run_id, render_table(header, {"trained": table}), f"eval/{name}/table.md")
        if len(grid):
            from flowrl.training.tracking import log_image_grid

            log_image_grid(logger, grid, f"eval/{name}", step=module.iteration, nrow=max(sampler.samples_per_prompt, 4))
    return out


@contextlib.contextmanager
def protocol_settings(model, sampler):
    """Within the block the trained model samples at the protocol's resolution and guidance (a
    training run's model keeps its own outside: FLUX trains at 720 px, MixGRPO's evaluation is at
    1024 px). The tiny model has neither knob and is left as it is."""
    keys = (
        "guidance_scale",
        "height",
        "width",
        "latent_h",
        "latent_w",
        "img_ids",
    )  # img_ids: FLUX's RoPE positions of the latent grid
    saved = {k: getattr(model, k) for k in keys if hasattr(model, k)}
    try:
        if sampler.guidance_scale is not None and "guidance_scale" in saved:
            model.guidance_scale = sampler.guidance_scale
        factor = getattr(model, "vae_scale_factor", None)
        if factor and "height" in saved:
            h, w = sampler.height or model.height, sampler.width or model.width
            model.height, model.width, model.latent_h, model.latent_w = h, w, h // factor, w // factor
            if "img_ids" in saved:
                from flowrl.models.diffusers_base import latent_image_ids

                ids = saved["img_ids"]
                model.img_ids = latent_image_ids(model.latent_h // 2, model.latent_w // 2).to(ids.device, ids.dtype)
        yield
    finally:
        for k, v in saved.items():
            setattr(model, k, v)
