"""`python -m flowrl.calibrate method=densegrpo [overrides]`: run a method's exploration
calibration on its own and save the result, so several training runs can share one table.

Composes the same config as `python -m flowrl.train`, builds the model, reward and step
scheduler, runs `method.calibration.iterations` rounds (DenseGRPO's Alg. 1) on train prompts, and
writes `<output_dir>/noise_levels.json`. Train with it:
    python -m flowrl.train method=densegrpo method.noise_levels_file=<that file>
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from flowrl.config.compose import CONF_DIR
from flowrl.config.errors import exit_on_user_error
from flowrl.training.build import build_module, calibration_prompts


def calibrate(cfg: DictConfig) -> Path:
    from hydra.utils import instantiate

    from flowrl.config.errors import UserFacingError
    from flowrl.training.build import seed_everything

    seed_everything(cfg.seed)
    if not instantiate(cfg.method.step_scheduler).will_calibrate():  # before any model loads
        raise UserFacingError(
            f"method {cfg.method.name} has nothing to calibrate with these settings (a method that calibrates, "
            "e.g. densegrpo, needs method.calibration.iterations > 0 and no noise-level table given)"
        )
    module, data = build_module(cfg)
    record = module.calibrate(calibration_prompts(data, cfg))
    out = Path(cfg.paths.output_dir) / "noise_levels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    levels = " ".join(f"{x:.3f}" for x in record["noise_levels"])
    print(f"noise levels per step: {levels}\nwritten to {out}")
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from flowrl.config.compose import apply_smoke

    calibrate(apply_smoke(cfg))


def cli() -> None:
    """`flowrl-calibrate`: the command line checked first, then Hydra's main."""
    from flowrl.config.compose import run_checked

    run_checked(main, "train")


if __name__ == "__main__":
    cli()
