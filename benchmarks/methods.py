"""A method as the benchmarks run it: its train config composed by flowrl's one composer, its
step scheduler, optimizer and GRPO loss instantiated from that config as flowrl.train does, and
the optimizer step GRPOModule takes, without Lightning. Shared by the CPU bench and the GPU suite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.utils import get_class, instantiate

from flowrl.config.compose import compose, config_options

METHODS = tuple(config_options("method"))  # every method config, no list kept here
PROMPT = "a red circle on a blue background"


@dataclass
class MethodSetup:
    method: str
    cfg: object  # the composed train config
    step_scheduler: object
    overrides: list[str]


def compose_method(method: str, overrides: list[str], small: bool = False) -> MethodSetup:
    """conf/train.yaml with method=<method> and `overrides`; small: first the step scheduler's own
    small_overrides (its structure in seconds), then `overrides`."""
    overrides = list(overrides)
    if small:  # small_overrides is a class attribute: read it off the class, nothing instantiated
        target = compose([f"method={method}", *overrides]).method.step_scheduler._target_
        overrides = [*get_class(target).small_overrides, *overrides]
    cfg = compose([f"method={method}", *overrides])
    return MethodSetup(method, cfg, instantiate(cfg.method.step_scheduler), overrides)


def bench_prompts(plan, wanted: int = 1) -> list[str]:
    """`wanted` copies of the bench prompt, at least as many as the plan's update can split: an
    anchor plan whose optimizer steps split the rollout's prompts (steps_per_rollout shares of the
    anchors, TempFlow-GRPO's Flow-GRPO placement) needs that many prompts, and an update that
    emulates GPUs needs whole ones."""
    u = plan.update
    need = u.steps_per_rollout if plan.trajectory == "anchor" and u.step_every == "rollout" else 1
    if u.step_every in ("samples", "edges"):  # whole emulated GPUs (BranchGRPO: 2 trees per GPU)
        need = max(need, u.prompts_per_rank)
    return [PROMPT] * max(wanted, need)


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    """The config's optimizer (a partial AdamW) at lr = method.lr x train.lr_scale, as GRPOModule."""
    return instantiate(cfg.optimizer)(params, lr=cfg.method.lr * cfg.train.lr_scale)


def make_loss(cfg, **overrides):
    """The config's LossConfig (the method's clip, advantage clip, KL); overrides e.g. kl_beta=0.0."""
    return instantiate(cfg.loss, **overrides)


def optimizer_step_fn(model, opt, grad_clip: float):
    """What GRPOModule does after each of the plan's optimizer steps: clip, step, zero; a step
    with a cause (a non-finite value, no term) only drops its gradients."""

    def step(cause=None):
        if cause is None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return cause

    return step
