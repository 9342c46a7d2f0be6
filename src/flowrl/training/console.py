"""What a run prints, on rank 0: a header (the method, the reward it trains on, the ground truth
that judges it, its length), Lightning's progress bar in flowrl's words (iterations, not "Epoch
0/0"; no v_num; no it/s, which reads 0.00 for a one-batch evaluation), and a closing block that
says where the final model is, which MLflow run it was and the URL that opens it."""

from __future__ import annotations

UI_URL = "http://127.0.0.1:5000"  # make ui's default HOST and PORT


def trained_reward(cfg) -> str:
    """The reward option trained on (`reward=<name>`), or its class when not run by Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("reward")
        if choice:
            return str(choice)
    target = str(cfg.reward.get("_target_", "?"))
    return target.rsplit(".", 1)[-1]


def header(cfg, length: str | None) -> str:
    """'flowrl: E-GRPO (method=egrpo) | trains on reward=geneval | ground truth val/category/geneval/overall | 30 iterations'."""
    from flowrl.training.tracking import run_tags

    tags = run_tags(cfg)
    truth = tags.get("ground_truth", "none (no eval rewards)")
    parts = [
        f"method={cfg.method.get('name', '?')}",
        f"trains on reward={trained_reward(cfg)}",
        f"ground truth {truth}",
        length or tags.get("budget", ""),
    ]
    return "flowrl: " + " | ".join(p for p in parts if p)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's address of one run: on a tracking server its own; on a local store `make ui`'s."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_URL
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def closing(final_model, run_name: str, run_id: str, experiment: str, experiment_id: str, tracking_uri: str) -> str:
    """The block printed when a run finishes: where its results are."""
    lines = [
        f"final model  {final_model}",
        f"MLflow run   {run_name} (id {run_id}, experiment {experiment}, store {tracking_uri})",
    ]
    url = run_url(tracking_uri, experiment_id, run_id)
    if tracking_uri.startswith(("http://", "https://")):
        lines.append(f"open it      {url}")
    else:
        store = "" if tracking_uri == "sqlite:///mlflow.db" else f" STORE={tracking_uri}"
        lines.append(f"open it      make ui{store}, then {url}")
    return "\n".join(lines)


def progress_bar():
    """Lightning's rich progress bar in flowrl's words, or None (Lightning's default) without rich."""
    try:
        from lightning.pytorch.callbacks import RichProgressBar
        from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn
    except ImportError:
        return None

    class IterationBar(RichProgressBar):
        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

        def _get_train_description(self, _epoch: int) -> str:  # one epoch: its number says nothing
            return "iterations"

        @property
        def validation_description(self) -> str:
            return "held-out evaluation"

        def configure_columns(self, trainer):
            return [c for c in super().configure_columns(trainer) if not isinstance(c, ProcessingSpeedColumn)]

    return IterationBar()
