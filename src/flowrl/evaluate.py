"""Evaluate like the papers: `python -m flowrl.evaluate protocol=<name> [model=...] checkpoint=<...>`
(`flowrl-evaluate`).

    flowrl-evaluate protocol=toy_geneval checkpoint=outputs/train/<run>       # a toy run's final numbers
    flowrl-evaluate protocol=hpd_test model=flux_dev checkpoint=[none,<run>]  # base vs trained, paired
    flowrl-evaluate protocol=drawbench_ood model=sd35_medium checkpoint=<final_model dir>

Samples the protocol's prompts with its fixed noise under its sampler settings (steps, shift / grid,
guidance, resolution, samples per prompt), scores every image with every reward of the protocol,
and writes into the Hydra run directory:
  table.md      mean ± 95% CI per reward (and per category where the protocol has them), each
                checkpoint side by side, and each later checkpoint's paired difference against the
                first over the same prompts and noises (mean diff, paired-t 95% CI, ttest_rel p)
  scores.csv    one row per image: checkpoint, prompt index, sample, prompt, category, scores
  grid_<checkpoint>.png, summary.json
and one MLflow run per checkpoint (experiment `evaluate`), tagged `protocol` and `checkpoint`, with
eval/<protocol>/<reward> metrics and these files. Bad input (an unknown protocol, a missing prompt
file, reward checkpoint or checkpoint path) is one line and exit status 2, before any model loads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from flowrl.config.compose import CONF_DIR
from flowrl.config.errors import exit_on_user_error


def evaluate(cfg: DictConfig) -> dict:
    """The whole evaluation; returns {'tables': {label: rows}, 'pairs': {label: rows}, 'metrics': {label: {...}}}."""
    from hydra.utils import instantiate

    from flowrl.config.schema import check_config
    from flowrl.evaluation.protocol import MODEL_OVERRIDES, Sampler, read_prompts
    from flowrl.evaluation.report import render_table, write_scores_csv
    from flowrl.evaluation.scoring import metrics, paired, sample_and_score, summarize
    from flowrl.evaluation.weights import load_model, resolve_all

    check_config(cfg)  # also run by the command line; here for callers of evaluate() itself
    protocol, name = cfg.protocol, str(cfg.protocol.name)
    weights = resolve_all(cfg.get("checkpoint"))
    sampler = Sampler.from_config(protocol.sampler)
    prompts = read_prompts(protocol)
    rewards = {n: instantiate(r) for n, r in protocol.rewards.items()}  # a missing reward file: before the model
    client, experiment_id = _tracking(cfg)  # an unreachable server fails now, not after the sampling
    n_images = len(prompts.prompts) * sampler.samples_per_prompt
    print(
        f"flowrl: protocol={name} | {len(prompts.prompts)} prompts x {sampler.samples_per_prompt} = {n_images} images per checkpoint "
        f"| {sampler.num_steps} steps | rewards {', '.join(rewards)} | checkpoints {', '.join(w.label for w in weights)}"
    )
    overrides = {k: getattr(sampler, k) for k in MODEL_OVERRIDES}
    keep = int(cfg.grid_prompts) * sampler.samples_per_prompt
    scores, grids = {}, {}
    for w in weights:
        model = load_model(cfg.model, w, overrides)
        if hasattr(model, "precompute_prompts"):  # real backends: embed once, then the text encoders leave the GPU
            model.precompute_prompts(prompts.prompts)
        scores[w.label], grids[w.label] = sample_and_score(
            model, prompts.prompts, rewards, sampler, keep, desc=f"{name} {w.label}"
        )
        del model
        _free_device_memory()
    per = sampler.samples_per_prompt
    args = (rewards, prompts.prompts, per, prompts.categories, int(cfg.ci_resamples), sampler.seed)
    tables = {label: summarize(s, *args) for label, s in scores.items()}
    labels = list(scores)
    pairs = {label: paired(scores[labels[0]], scores[label], per) for label in labels[1:]}
    header = {
        "protocol": name,
        "paper": protocol.get("paper"),
        "model": f"{cfg.model.get('_target_')} (the paper's: {protocol.get('model')})",
        "prompts": f"{len(prompts.prompts)} x {per} samples"
        + (f" ({protocol.prompts.file})" if protocol.prompts.get("file") else ""),
        "sampler": ", ".join(f"{k} {v}" for k, v in sampler.__dict__.items() if v is not None),
        "checkpoints": ", ".join(f"{w.label} = {w.given}" for w in weights),
    }
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = render_table(header, tables, pairs)
    (out / "table.md").write_text(text)
    write_scores_csv(out / "scores.csv", prompts.prompts, prompts.categories, per, scores)
    files = [out / "table.md", out / "scores.csv"]
    from flowrl.utils.images import save_grid

    for label, grid in grids.items():
        if len(grid):
            path = out / f"grid_{_safe(label)}.png"
            save_grid(grid, path, nrow=max(per, 4), upscale=max(1, 128 // grid.shape[-1]))
            files.append(path)
    result = {
        "tables": tables,
        "pairs": pairs,
        "metrics": {label: metrics(name, rows) for label, rows in tables.items()},
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    files.append(out / "summary.json")
    _log_runs(cfg, client, experiment_id, header, weights, result, files, sampler, len(prompts.prompts))
    print(text)
    print(f"flowrl: table, scores.csv and grids in {out}")
    return result


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@#" else "_" for c in label)


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _tracking(cfg):
    """(MlflowClient, experiment id) on the configured store; the first contact as flowrl.train's."""
    from mlflow.tracking import MlflowClient

    from flowrl.training.tracking import _first_contact, ensure_experiment, resolve_tracking_uri, sqlite_store_lock

    uri = resolve_tracking_uri(cfg.logger.get("tracking_uri"))
    with sqlite_store_lock(uri), _first_contact(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = ensure_experiment(client, cfg.logger.experiment_name)
    return client, experiment_id


def _log_runs(cfg, client, experiment_id, header, weights, result, files, sampler, n_prompts) -> None:
    """One FINISHED run per checkpoint: tags protocol / checkpoint / paper / model, the sampler as
    params, eval/<protocol>/... metrics (and paired/<reward>/... against the first checkpoint), the files."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    from flowrl.training.tracking import git_commit

    name = header["protocol"]
    now = int(time.time() * 1000)
    first = weights[0].label
    for w in weights:
        tags = {
            "protocol": name,
            "checkpoint": w.given,
            "checkpoint_label": w.label,
            "paper": str(header["paper"])[:5000],
            "model": str(cfg.model.get("_target_")),
            "flowrl.command": "evaluate",
            **{str(k): str(v) for k, v in (cfg.logger.get("tags") or {}).items()},
        }
        commit = git_commit()
        if commit:
            tags["git_commit"] = commit
        run = client.create_run(experiment_id, run_name=f"{name} {w.label}", tags=tags)
        run_id = run.info.run_id
        values = dict(result["metrics"][w.label])
        if w.label != first:
            for r in result["pairs"][w.label]:
                for k in ("mean_diff", "ci_low", "ci_high", "p_value"):
                    if r[k] == r[k]:  # not NaN
                        values[f"paired/{name}/{r['reward']}/{k}"] = r[k]
            client.set_tag(run_id, "baseline", weights[0].given)
        params = {f"sampler.{k}": v for k, v in sampler.__dict__.items() if v is not None} | {"prompts": n_prompts}
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("mlflow.note.content", f"flowrl-evaluate protocol={name} checkpoint={w.given}")],
        )
        for path in files:
            if not path.name.startswith("grid_") or path.name == f"grid_{_safe(w.label)}.png":
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
        print(f"flowrl: MLflow run {run_id} ({name} {w.label}, experiment {cfg.logger.experiment_name})")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


def cli() -> None:
    """`flowrl-evaluate`: the command line checked first (one line, exit 2), then Hydra's main."""
    from flowrl.config.compose import run_checked

    run_checked(main, "evaluate")


if __name__ == "__main__":
    sys.exit(cli())
