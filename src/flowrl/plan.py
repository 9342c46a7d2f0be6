"""Print a method's step plan and per-prompt budget without loading a model.

    python -m flowrl.plan method=dancegrpo
    python -m flowrl.plan --json method=flowgrpo method.group_size=8

Composes conf/train.yaml with the given Hydra overrides and instantiates only the step
scheduler, so it answers in a few seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_plan(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return instantiate(cfg.method.step_scheduler).plan()


def format_plan(plan) -> str:
    b = plan.budget()
    jumps = " ".join(f"{j.start}->{j.stop}" for j in plan.jumps)
    lines = [
        f"method {plan.method}: T={plan.num_steps}, G={plan.group_size}, trajectory={plan.trajectory}, "
        f"same initial noise per group: {plan.same_initial_noise}",
        f"stochastic jumps (sigma indices): {jumps}",
        f"trained: {plan.note or plan.trained_per_generation}",
    ]
    for br in plan.branches:
        comps = "; ".join(" ".join(map(str, c)) for c in br.completions)
        lines.append(f"  branch {br.jump.start}->{br.jump.stop}: completions {comps}")
    if plan.intermediate_completions:
        lens = " ".join(str(len(c) - 1) for c in plan.intermediate_completions)
        lines.append(f"  dense rewards: every x_i (i = 0..{plan.num_steps - 1}) ODE-completed in {lens} steps")
    lines += [
        "budget per prompt (NFE as the papers count them):",
        f"  NFE per generation     {b['nfe_per_generation']}",
        f"  NFE per prompt         {b['nfe_per_prompt']}",
        f"  reward queries         {b['reward_queries_per_prompt']}",
        f"  backward passes        {b['trained_steps_per_prompt']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(__doc__)
        return
    as_json = "--json" in args
    plan = compose_plan([a for a in args if a != "--json"])
    print(json.dumps(plan.to_json()) if as_json else format_plan(plan))


if __name__ == "__main__":
    main()
