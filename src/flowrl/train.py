"""GRPO training: `python -m flowrl.train [overrides]` / `flowrl-train` (or `make train` for the
embedded default). The run itself is flowrl.training.loop.train; this is the command line."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from flowrl.config.compose import CONF_DIR, apply_smoke, run_checked
from flowrl.config.errors import exit_on_user_error
from flowrl.training.loop import train


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """The run; returns `optimized_metric` of its summary for a sweeper (Optuna) to optimise."""
    return train(apply_smoke(cfg)).get(cfg.get("optimized_metric"))


def cli() -> None:
    """The command line checked first (one line, exit 2, in about a second), then Hydra's main."""
    run_checked(main, "train")


if __name__ == "__main__":
    cli()
