"""Print a method's step plan and per-prompt budget without loading a model.

    python -m flowrl.plan method=dancegrpo
    python -m flowrl.plan --json method=flowgrpo method.group_size=8
    python -m flowrl.plan --iteration 60 method=mixgrpo      # the plan of a later iteration

Composes the packaged conf/train.yaml with the given Hydra overrides and instantiates only the step
scheduler, so it answers in a few seconds. Optimizer steps per iteration are for
train.prompts_per_step prompts; random choices (DanceGRPO's per-sample steps) are drawn from a
generator seeded with `seed`, so the printed plan is the one iteration 0 of that run trains.
"""

from __future__ import annotations

import json
import sys

from flowrl.config.compose import compose


def compose_plan(overrides: list[str], iteration: int = 0):
    """(plan of `iteration`, prompts per iteration, the rollout's memory estimate) for a composed config."""
    import torch
    from hydra.utils import instantiate

    cfg = compose(overrides)
    plan = instantiate(cfg.method.step_scheduler).plan(iteration, torch.Generator().manual_seed(cfg.seed))
    return plan, int(cfg.train.prompts_per_step), rollout_memory(cfg, plan)


def rollout_memory(cfg, plan) -> dict | None:
    """The rollout's estimated peak memory (StepPlan.rollout_memory on the model's sizes and
    train.max_batch) with the machine's memory it is checked against; None for an unknown model."""
    from flowrl.config.feasibility import machine_memory, model_shapes

    shapes = model_shapes(cfg.get("model"))
    if shapes is None:
        return None
    prompts, max_batch = int(cfg.train.prompts_per_step), int(cfg.train.max_batch)
    parts = plan.rollout_memory(prompts, *shapes, max_batch=max_batch)
    have = machine_memory(cfg)
    return {
        "bytes": sum(parts.values()),
        "parts": parts,
        "latent_numel": shapes[0],
        "image_numel": shapes[1],
        "max_batch": max_batch,
        "machine_bytes": have[0] if have else None,
        "machine": have[1] if have else None,
    }


def format_plan(plan, num_prompts: int = 1, iteration: int = 0, memory: dict | None = None) -> str:
    from flowrl.config.feasibility import human_bytes

    b = plan.budget()
    info = plan.to_json(num_prompts)
    jumps = " ".join(f"{j.start}->{j.stop}" + (f" (w {j.loss_weight:.3g})" if j.loss_weight != 1 else "") for j in plan.jumps)
    trained = info["trained_step_indices"]
    lines = [
        f"method {plan.method} (iteration {iteration}): T={plan.num_steps}, G={plan.group_size}, trajectory={plan.trajectory}, "
        f"same initial noise per group: {plan.same_initial_noise}, scored image: {plan.score}",
        f"stochastic jumps (sigma indices): {jumps}",
        f"trained: {plan.note}" + (f" (starting at {trained})" if trained is not None else ""),
    ]
    for br in plan.branches:
        comps = "; ".join(" ".join(map(str, c)) for c in br.completions)
        lines.append(f"  branch {br.jump.start}->{br.jump.stop}: completions {comps}")
    if plan.intermediate_completions:
        lens = " ".join(str(len(c) - 1) for c in plan.intermediate_completions)
        lines.append(f"  dense rewards: every x_i (i = 0..{plan.num_steps - 1}) ODE-completed in {lens} steps")
    lines += [
        f"update: {info['update']}, {info['optimizer_steps_per_iteration']} optimizer steps per iteration of {num_prompts} prompt(s)",
        "budget per prompt (NFE as the papers count them):",
        f"  NFE per generation     {b['nfe_per_generation']}",
        f"  NFE per prompt         {b['nfe_per_prompt']}",
        f"  reward queries         {b['reward_queries_per_prompt']}",
        f"  backward passes        {b['trained_steps_per_prompt']}",
        f"  training forwards      {b['training_forwards_per_prompt']} (with grad + the objective's views {list(plan.objective.views)})",
        f"objective: {info['objective']}" + (f", policy copies {info['policies']}" if plan.policies else ""),
    ]
    if plan.levels is not None:
        lines.insert(2, f"sampler {plan.sampler} (deterministic, cfg_scale {plan.cfg_scale}), levels {plan.levels.to_dict()}")
    if memory is not None:
        parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in memory["parts"].items())
        have = f" of this machine's {human_bytes(memory['machine_bytes'])} {memory['machine']}" if memory["machine_bytes"] else ""
        lines.append(
            f"rollout peak memory (estimate, {num_prompts} prompt(s), train.max_batch {memory['max_batch']}): "
            f"{human_bytes(memory['bytes'])}{have} ({parts})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`flowrl-plan [--json] [--iteration N] [overrides]`: the overrides checked as flowrl-train
    checks them (one line, exit 2), then the plan printed."""
    import argparse

    from flowrl.config.compose import check_command_line
    from flowrl.config.errors import UserFacingError

    parser = argparse.ArgumentParser(
        prog="flowrl-plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.add_argument("--iteration", type=int, default=0, help="the plan of this iteration (default 0)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config, e.g. method=dancegrpo")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if args.iteration < 0:
        parser.error("--iteration takes a non-negative integer")
    try:
        check_command_line(args.overrides)
    except UserFacingError as err:
        print(f"flowrl: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    plan, num_prompts, memory = compose_plan(args.overrides, args.iteration)
    if args.json:
        print(json.dumps({"iteration": args.iteration, **plan.to_json(num_prompts), "rollout_memory": memory}))
    else:
        print(format_plan(plan, num_prompts, args.iteration, memory))


if __name__ == "__main__":
    main()
