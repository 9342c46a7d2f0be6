"""`uniform`: G full SDE trajectories per prompt, a fraction of the steps trained, one group per
prompt. DanceGRPO (method=dancegrpo: same initial noise per group, DanceGRPO step with eta,
timestep_fraction 0.6) and Flow-GRPO (method=flowgrpo: independent noise, Flow-GRPO SDE with
noise level a, per-prompt statistics) are two configurations of this one scheduler.
"""

from __future__ import annotations

import torch

from flowrl.step_schedulers.base import Jump, StepPlan, StepScheduler, check_rewards, group_normalize


class UniformStepScheduler(StepScheduler):
    name = "uniform"

    def __init__(
        self,
        num_steps: int = 16,
        group_size: int = 12,
        noise_level: float = 0.3,
        sde: str = "dance",
        timestep_fraction: float = 0.6,
        same_initial_noise: bool = True,
        group_by: str = "group",
        adv_clip: float = 5.0,
        method: str = "dancegrpo",
        multi_reward: str = "combined",
    ):
        super().__init__(num_steps, group_size, noise_level, sde, adv_clip, multi_reward)
        if not 0 < timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {timestep_fraction}")
        if group_by not in ("group", "prompt"):
            raise ValueError(f"group_by must be 'group' or 'prompt', got {group_by!r}")
        self.timestep_fraction = float(timestep_fraction)
        self.same_initial_noise = bool(same_initial_noise)
        self.group_by = group_by
        self.method = method

    @property
    def num_trained(self) -> int:
        """int(T * fraction) as DanceGRPO, at least one step."""
        return max(1, int(self.num_steps * self.timestep_fraction))

    def plan(self) -> StepPlan:
        return StepPlan(
            method=self.method,
            num_steps=self.num_steps,
            group_size=self.group_size,
            trajectory="sde",
            jumps=[Jump(i, i + 1) for i in range(self.num_steps)],
            trained_per_generation=self.num_trained,
            same_initial_noise=self.same_initial_noise,
            note=f"random {self.num_trained} of {self.num_steps} steps per iteration",
        )

    def trained_jumps(self, generator: torch.Generator | None = None) -> list[int]:
        """A random `timestep_fraction` of the T steps, drawn anew each iteration (sorted)."""
        perm = torch.randperm(self.num_steps, generator=generator)[: self.num_trained]
        return sorted(perm.tolist())

    sample_trained_steps = trained_jumps

    def final_advantages(self, rewards: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """rewards [P, G] -> advantages [P, G]: normalised within each group ('group'), or over
        every sample of the same prompt string in the batch ('prompt', Flow-GRPO's per-prompt
        stat tracking, which pools groups whose prompts repeat)."""
        if self.group_by == "group" or prompts is None:
            return group_normalize(rewards)
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"{rewards.shape[0]} groups but {len(prompts)} prompts")
        adv = torch.empty_like(rewards, dtype=torch.float32)
        for prompt in set(prompts):
            rows = [i for i, p in enumerate(prompts) if p == prompt]
            adv[rows] = group_normalize(rewards[rows].reshape(1, -1)).reshape(len(rows), -1)
        return adv

    def normalize(self, rewards: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """The final image's advantage, shared by every step of its trajectory: [P, G] -> [P, G, T]."""
        check_rewards(rewards, self.plan(), self.method)
        adv = self.final_advantages(rewards, prompts)
        return adv.unsqueeze(-1).expand(*adv.shape, self.num_steps)
