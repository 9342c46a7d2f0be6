"""Sample a model on a prompt split and score it with every configured reward.

    python -m flowrl.sample                          # tiny model, held-out prompts, 3 rewards
    python -m flowrl.sample split=train per_prompt=8 model.path=/tmp/my_tiny

Prints a table (reward -> mean score) and writes samples.png + scores.json in the Hydra run dir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from flowrl.config.compose import CONF_DIR
from flowrl.config.errors import exit_on_user_error


def run(cfg: DictConfig) -> dict[str, float]:
    from hydra.utils import instantiate

    from flowrl.sampling.ode import generate
    from flowrl.utils.images import save_grid

    model = instantiate(cfg.model)
    prompts_all = getattr(instantiate(cfg.data), cfg.split)
    prompts = [p for p in prompts_all for _ in range(cfg.per_prompt)]
    start = time.time()
    images = generate(model, prompts, num_steps=cfg.num_steps, shift=cfg.shift, seed=cfg.seed)
    seconds = time.time() - start
    scores = {}
    for name, reward_cfg in cfg.rewards.items():
        scores[name] = instantiate(reward_cfg)(images, prompts).mean().item()
    out = Path(cfg.paths.output_dir)
    save_grid(images, out / "samples.png", nrow=cfg.per_prompt * 6, upscale=2)
    result = {
        "split": cfg.split,
        "num_images": len(prompts),
        "num_steps": cfg.num_steps,
        "sampling_seconds": round(seconds, 2),
        "scores": scores,
    }
    (out / "scores.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(prompts)} images x {cfg.num_steps} steps in {seconds:.1f} s ({cfg.split} prompts)")
    for name, value in scores.items():
        print(f"  {name:<12} {value:.4f}")
    print(f"grid: {out / 'samples.png'}")
    return scores


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


def cli() -> None:
    """`flowrl-sample`: the command line checked first, then Hydra's main."""
    from flowrl.config.compose import run_checked

    run_checked(main, "sample")


if __name__ == "__main__":
    cli()
