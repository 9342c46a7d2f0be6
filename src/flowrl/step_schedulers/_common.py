"""What several step schedulers share (variant files never import each other): the update-block
parser, completion schedules, checks, and the full-SDE-trajectory machinery of `uniform` and
`dense_reward`."""

from __future__ import annotations

import torch

from flowrl.contract import Jump, StepPlan, StepSettings, UpdateSchedule, check_rewards
from flowrl.contract.objectives import PolicyCopy
from flowrl.contract.plan import LevelSchedule
from flowrl.step_schedulers.base import StepScheduler

SELECTIONS = ("random_per_sample", "first")


def strided_completion(start: int, num_steps: int, granularity: int) -> tuple[int, ...]:
    """Sigma indices from `start` to T: one fine step start -> start+1, then a stride of g
    (G²RPO's sigmas[:e+2] ++ sigmas[e+2::g] with start = e+1; E-GRPO's official
    sigmas[:k+l+1] ++ sigmas[k+l+1::g]). Where the strided tail misses sigma = 0 its last point
    is replaced by T. Both official samplers do the same in effect: they decode the x0
    prediction of the last point they evaluate, which is the Euler step from it to sigma 0."""
    tail = list(range(start + 1, num_steps + 1, granularity))
    if tail:
        tail[-1] = num_steps
    return tuple(dict.fromkeys([start, *tail]))


def update_schedule(cfg: dict | None, trained=None, per_sample=None, seed: int = 0) -> UpdateSchedule:
    """An UpdateSchedule from a method's `update:` config block ({step_every, samples_per_step,
    prompts_per_rank, steps_per_rollout, shuffle, drop_zero_advantage}) and the trained jumps."""
    cfg = dict(cfg or {})
    known = ("step_every", "samples_per_step", "prompts_per_rank", "steps_per_rollout", "shuffle", "drop_zero_advantage")
    unknown = set(cfg) - set(known)
    if unknown:
        raise ValueError(f"unknown update keys {sorted(unknown)}; known: {', '.join(known)}")
    return UpdateSchedule(
        trained=None if trained is None else tuple(trained),
        per_sample=per_sample,
        step_every=cfg.get("step_every", "rollout"),
        samples_per_step=cfg.get("samples_per_step"),
        prompts_per_rank=int(cfg.get("prompts_per_rank", 1)),
        steps_per_rollout=int(cfg.get("steps_per_rollout", 1)),
        shuffle=bool(cfg.get("shuffle", False)),
        drop_zero_advantage=bool(cfg.get("drop_zero_advantage", False)),
        seed=seed,
    )


def check_granularities(granularities) -> list[int]:
    out = [int(g) for g in granularities]
    if not out or min(out) < 1 or len(set(out)) != len(out):
        raise ValueError(f"granularities must be distinct integers >= 1, got {out}")
    return out


def final_advantages(
    rewards: torch.Tensor, prompts: list[str] | None, group_by: str, global_std: bool, unbiased: bool, eps: float
) -> torch.Tensor:
    """rewards [P, G] -> advantages [P, G]: normalised within each group ('group'), or over
    every sample of the same prompt string in the batch ('prompt', Flow-GRPO's per-prompt
    stat tracking, which pools groups whose prompts repeat). global_std: divide by the std of
    every reward of the rollout instead of the group's (flow_grpo's `global_std`, on in all
    its SD3 configs; DiffusionNFT and AWM keep it), the mean staying per group / prompt."""
    r = rewards.float()
    if group_by == "prompt" and prompts is not None:
        if len(prompts) != r.shape[0]:
            raise ValueError(f"{r.shape[0]} groups but {len(prompts)} prompts")
        keys = list(dict.fromkeys(prompts))
        member = torch.tensor([keys.index(p) for p in prompts])  # [P] -> pooled prompt id
    else:
        member = torch.arange(r.shape[0])
    mean = torch.stack([r[member == i].mean() for i in range(int(member.max()) + 1)])[member].unsqueeze(1)
    if global_std:
        std = r.std(unbiased=unbiased)
    else:
        std = torch.stack([r[member == i].std(unbiased=unbiased) for i in range(int(member.max()) + 1)])
        std = std[member].unsqueeze(1)
    return (r - mean) / (std + eps)


class SDETrajectories(StepScheduler):
    """G full SDE trajectories per prompt (one jump per step), a share of the steps trained, the
    final image's group-relative advantage on every trained step. The machinery that `uniform`
    (DanceGRPO, Flow-GRPO) and `dense_reward` (DenseGRPO) configure; not a variant itself."""

    name = "sde_trajectories"

    def __init__(
        self,
        num_steps: int = 16,
        group_size: int = 12,
        noise_level: float = 0.3,
        sde: str = "dance",
        shift: float = 3.0,
        timestep_fraction: float = 0.6,
        timestep_selection: str = "random_per_sample",
        exclude_last_step: bool = True,
        same_initial_noise: bool = True,
        group_by: str = "group",
        global_std: bool = False,
        std_unbiased: bool = True,
        std_eps: float = 1e-8,
        score: str = "last_x0",
        cps_log_prob: str = "mse",
        update: dict | None = None,
        adv_clip: float = 5.0,
        method: str = "dancegrpo",
        multi_reward: str = "combined",
        sigma_grid: str = "shifted_linspace",
    ):
        super().__init__(num_steps, group_size, shift, adv_clip, multi_reward, std_unbiased, std_eps, method, sigma_grid)
        if not 0 < timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {timestep_fraction}")
        if timestep_selection not in SELECTIONS:
            raise ValueError(f"timestep_selection must be one of {SELECTIONS}, got {timestep_selection!r}")
        if group_by not in ("group", "prompt"):
            raise ValueError(f"group_by must be 'group' or 'prompt', got {group_by!r}")
        if exclude_last_step and num_steps < 2:
            raise ValueError("exclude_last_step needs num_steps >= 2")
        self.noise_level = float(noise_level)
        self.sde = sde
        self.timestep_fraction = float(timestep_fraction)
        self.timestep_selection = timestep_selection
        self.exclude_last_step = bool(exclude_last_step)
        self.same_initial_noise = bool(same_initial_noise)
        self.group_by = group_by
        self.global_std = bool(global_std)
        self.score = score
        self.cps_log_prob = {"official": "mse", "gaussian": "gaussian"}.get(cps_log_prob, cps_log_prob)
        self.update_cfg = dict(update or {"step_every": "rollout"})
        StepSettings(sde, self.noise_level)  # validate the step kind now, not at the first rollout
        update_schedule(self.update_cfg, trained=[0])  # and the update block

    @property
    def pool(self) -> int:
        """How many of the first steps may be trained: T - 1 (DanceGRPO never trains the last) or T."""
        return self.num_steps - 1 if self.exclude_last_step else self.num_steps

    @property
    def num_trained(self) -> int:
        """int(pool * fraction) as the official scripts, at least one step."""
        return max(1, int(self.pool * self.timestep_fraction))

    def step_settings(self, i: int) -> StepSettings:
        """How step i -> i+1 is sampled (one noise level for every step here)."""
        log_prob = self.cps_log_prob if self.sde == "cps" else "gaussian"
        return StepSettings(self.sde, self.noise_level, sigma_max=self.sigmas[1], log_prob=log_prob)

    def jumps(self) -> tuple[Jump, ...]:
        return tuple(Jump(i, i + 1, self.step_settings(i)) for i in range(self.num_steps))

    def plan(self, iteration: int = 0, generator: torch.Generator | None = None) -> StepPlan:
        k = self.num_trained
        if self.timestep_selection == "first":
            upd = update_schedule(self.update_cfg, trained=range(k), seed=self.seed_from(generator))
            note = f"the first {k} of {self.num_steps} steps, in order"
        else:
            upd = update_schedule(self.update_cfg, per_sample=(k, self.pool), seed=self.seed_from(generator))
            note = f"per sample, a random {k} of the first {self.pool} steps"
        return StepPlan(
            method=self.method,
            sigmas=self.sigmas,
            group_size=self.group_size,
            trajectory="sde",
            jumps=self.jumps(),
            update=upd,
            same_initial_noise=self.same_initial_noise,
            score=self.score,
            note=note,
        )

    def final_advantages(self, rewards: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        return final_advantages(rewards, prompts, self.group_by, self.global_std, self.std_unbiased, self.std_eps)

    def normalize(self, rewards: torch.Tensor, plan: StepPlan, prompts: list[str] | None = None) -> torch.Tensor:
        """The final image's advantage, shared by every jump of its trajectory: [P, G] -> [P, G, J]."""
        check_rewards(rewards, plan)
        adv = self.final_advantages(rewards, prompts)
        return adv.unsqueeze(-1).expand(*adv.shape, len(plan.jumps))


class FinalSamples(StepScheduler):
    """The forward-process family's machinery (DiffusionNFT, AWM configure it; not a variant):
    G deterministic generations per prompt with `sampler`, only x0 and the reward kept; the update
    re-noises each sample at `levels` sigma indices and trains the subclass's `objective()`,
    reading its policy copies `policies()`. Advantages: per-prompt mean over the global population
    std + 1e-4 (flow_grpo's stat tracker, which both official codes import), one per sample."""

    name = "final_samples"

    def __init__(
        self,
        num_steps: int,
        group_size: int,
        levels: dict,
        sampler: str = "euler",
        cfg_scale: float | None = 1.0,
        shift: float = 3.0,
        sigma_grid: str = "flow_match_euler",
        same_initial_noise: bool = False,
        group_by: str = "prompt",
        global_std: bool = True,
        std_unbiased: bool = False,
        std_eps: float = 1e-4,
        update: dict | None = None,
        adv_clip: float = 5.0,
        method: str | None = None,
        multi_reward: str = "combined",
    ):
        super().__init__(num_steps, group_size, shift, adv_clip, multi_reward, std_unbiased, std_eps, method, sigma_grid)
        if group_by not in ("group", "prompt"):
            raise ValueError(f"group_by must be 'group' or 'prompt', got {group_by!r}")
        self.levels_cfg = dict(levels)
        self.sampler = sampler
        self.cfg_scale = cfg_scale
        self.same_initial_noise = bool(same_initial_noise)
        self.group_by, self.global_std = group_by, bool(global_std)
        self.update_cfg = dict(update or {"step_every": "rollout"})
        self.level_schedule(0)  # validate now, not at the first rollout

    def level_schedule(self, seed: int) -> LevelSchedule:
        """The levels block as a LevelSchedule, sized from the schedule as the official codes do:
        {kind: permutation, fraction}: count = int(T * fraction) (DiffusionNFT's timestep_fraction);
        {kind: stratified, count, lo, fraction, share_rows}: bounds = int(linspace(lo, int(T * fraction),
        count + 1)) over the sigma indices (AWM's time_type "discrete_wo_init" with lo 1, "discrete" lo 0)."""
        cfg = dict(self.levels_cfg)
        kind, fraction = cfg.pop("kind"), float(cfg.pop("fraction"))
        count = int(cfg.pop("count")) if kind == "stratified" else max(1, int(self.num_steps * fraction))
        if kind == "stratified":
            lo, hi = int(cfg.pop("lo")), int(self.num_steps * fraction)
            if hi - lo < count:
                raise ValueError(
                    f"{count} level strata need int(T * fraction) - lo >= {count}, got {hi} - {lo} at T {self.num_steps}"
                )
            bounds = tuple(int(b) for b in torch.linspace(lo, hi, count + 1).tolist())
            out = LevelSchedule(kind, count, bounds, int(cfg.pop("share_rows", 1)), seed)
        else:
            out = LevelSchedule(kind, count, seed=seed)
        if cfg:
            raise ValueError(f"unknown levels keys {sorted(cfg)}")
        out.table(1, self.num_steps)  # the levels fit the schedule
        return out

    def objective(self):
        raise NotImplementedError

    def policies(self) -> tuple[PolicyCopy, ...]:
        return ()

    def plan(self, iteration: int = 0, generator: torch.Generator | None = None) -> StepPlan:
        seed = self.seed_from(generator)
        levels = self.level_schedule(seed)
        return StepPlan(
            method=self.method,
            sigmas=self.sigmas,
            group_size=self.group_size,
            trajectory="final",
            jumps=(),
            update=update_schedule(self.update_cfg, trained=range(levels.count), seed=seed),
            same_initial_noise=self.same_initial_noise,
            note=f"every sample at {levels.count} noise levels ({levels.kind})",
            objective=self.objective(),
            policies=self.policies(),
            sampler=self.sampler,
            levels=levels,
            cfg_scale=self.cfg_scale,
        )

    def normalize(self, rewards: torch.Tensor, plan: StepPlan, prompts: list[str] | None = None) -> torch.Tensor:
        """rewards [P, G] -> advantages [P, G, 1]: one per sample, for all its levels."""
        check_rewards(rewards, plan)
        adv = final_advantages(rewards, prompts, self.group_by, self.global_std, self.std_unbiased, self.std_eps)
        return adv.unsqueeze(-1)
