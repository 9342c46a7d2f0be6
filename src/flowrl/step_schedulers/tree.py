"""Follows Fredreic1849/BranchGRPO fastvideo/train_branchgrpo_flux.py@ffc3c90 (unchanged at 19fbb9f)
and scripts/finetune/finetune_flux_branchgrpo_8gpus.sh@19fbb9f; deviations:
- one forward per (node, step) is batched over the tree's frontier (max_batch rows), where the
  official loop runs every node alone; a split parent's training forward is shared by its children
  when both fall in the same optimizer step (the official code takes one forward per edge: the same
  gradient, fewer forwards);
- the edge shuffle per emulated rank is torch.randperm seeded from the plan (seed + 1 + rank), not
  Python's random.shuffle seeded by seed + rank: the same rule, other draws;
- the old log-prob is evaluated on the sample as stored (fp32 on the tiny model); the official code
  evaluates it on the fp32 sample before casting the child to bf16, so its ratio is not exactly 1
  before the first update;
- the remainder optimizer step is grad-clipped like every other (the official remainder step clips
  only when no full step ran in the iteration: `if grad_norm is None`);
- `init_same_noise` (one x_1 for every prompt of a rank) is not reproduced: one root per prompt,
  each its own draw (within a tree there is one root anyway);
- pruning (depth, width modes 1 and 2) and BranchGRPO-Mix (ODE steps outside a window) are not
  built; the shipped script runs neither. `fusion: prob_weighted` (the paper's path weighting,
  `--tree_prob_weighted`) is in `fuse_rewards` but refused at run time: the advantages interface
  hands a step scheduler no log-probs;
- the NaN guards' `continue` still counting toward the accumulation boundary is not reproduced
  (flowrl skips a non-finite optimizer step whole).

`tree` (BranchGRPO, Li et al. 2025, arXiv 2509.06040): one tree per prompt. The root is x_1;
every denoising step is a DanceGRPO SDE step (eta 0.3) of every node of the frontier, and at a
split step each node draws two children from its one velocity, their noise multiplied by
`split_noise_scale` (4) while the log-prob keeps the unscaled std. The 2^len(splits) leaves are
the group, scored on the x0 prediction of their last step. Rewards flow up (a node's reward is the
mean of its leaf descendants); advantages are normalised per depth (= per denoising step) within
each prompt's tree, (R - mean) / (std + 1e-8) with the unbiased std, 0 where std < 1e-6 or a depth
has one node; an edge carries its child's advantage, clamped to +-5. Every edge trains; an
optimizer step every 12 shuffled edges of an emulated GPU (2 prompts per GPU in the script),
each step's loss sum / (12 x edges per tree). No KL. Rollout NFE per prompt = sum_i n_i (203 for T
20, splits 0, 3, 6, 9; the paper's 13.68 per leaf counts nodes).
"""

from __future__ import annotations

from typing import Literal

import torch

from flowrl.contract import Jump, StepPlan, StepSettings, UpdateSchedule, check_rewards
from flowrl.step_schedulers.base import (
    KnobError,
    Knobs,
    NonNegInt,
    PosFloat,
    PosInt,
    StepScheduler,
    check_distinct,
    check_whole_ranks,
)

FUSIONS = ("mean", "prob_weighted")
ZERO_STD = 1e-6  # compute_hierarchical_advantages_by_depth: std below this -> every advantage 0


def tree_widths(num_steps: int, splits) -> list[int]:
    """n_0..n_T: nodes per tree before each step (n_T = the leaves)."""
    return [2 ** sum(s < i for s in splits) for i in range(num_steps + 1)]


def fuse_rewards(leaves: torch.Tensor, widths: list[int], edge_log_probs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Leaf rewards [P, G] (depth-first order) -> every depth's node rewards, [P, n_d] for d = 0..T.
    Mean fusion (the script's default): a node's reward is the mean of its leaf descendants.
    Probability-weighted (`--tree_prob_weighted`): from the leaves up, a node's reward is
    sum_c softmax_c(lp_c) R(c) over its children c, lp_c the single edge's log-prob;
    edge_log_probs[j] [P, n_{j+1}] are the edges of step j (their children's order)."""
    p, g = leaves.shape
    r = leaves.float()
    if edge_log_probs is None:
        return [r.view(p, n, g // n).mean(-1) for n in widths]
    out = [r]
    for j in range(len(widths) - 2, -1, -1):
        k = widths[j + 1] // widths[j]
        child = out[0].view(p, widths[j], k)
        w = torch.softmax(edge_log_probs[j].float().view(p, widths[j], k), dim=-1)
        out.insert(0, (w * child).sum(-1))
    return out


def depth_advantages(fused: list[torch.Tensor], unbiased: bool = True, eps: float = 1e-8) -> list[torch.Tensor]:
    """Per depth and per prompt's tree: (R - mean) / (std + eps); 0 where the depth has one node or
    std < 1e-6 (the official threshold, not only the eps). [P, n_d] -> [P, n_d]."""
    out = []
    for r in fused:
        if r.shape[1] < 2:
            out.append(torch.zeros_like(r))
            continue
        std = r.std(dim=1, unbiased=unbiased, keepdim=True)
        adv = (r - r.mean(dim=1, keepdim=True)) / (std + eps)
        out.append(torch.where(std < ZERO_STD, torch.zeros_like(adv), adv))
    return out


class TreeKnobs(Knobs):
    tree_splits: list[NonNegInt]  # the split steps (sigma indices 0..T-1)
    split_noise_scale: PosFloat  # a split child's noise factor (--tree_split_noise_scale)
    fusion: Literal[FUSIONS]
    gradient_accumulation_steps: PosInt  # edges per optimizer step, per GPU
    prompts_per_rank: PosInt  # prompts (trees) per emulated GPU
    step_every: Literal["edges", "rollout", "jump"]
    normalizer: Literal["fixed", "mean"]

    def check(self, method: dict, train: dict) -> None:
        check_distinct("tree_splits", self.tree_splits)
        t = method["num_steps"]
        if not self.tree_splits or max(self.tree_splits) >= t:
            raise KnobError("method.tree_splits", self.tree_splits, f"at least one split, each within 0..num_steps - 1 ({t - 1})")
        if method["group_size"] != 2 ** len(self.tree_splits):
            raise KnobError(
                "method.group_size", method["group_size"], f"2^len(tree_splits) = {2 ** len(self.tree_splits)} leaves"
            )
        if self.step_every == "edges":
            check_whole_ranks(self.prompts_per_rank, train)
        elif self.normalizer == "fixed":
            raise KnobError("method.normalizer", self.normalizer, "'fixed' goes with step_every=edges")
        if self.fusion != "mean":
            raise KnobError(
                "method.fusion", self.fusion, "mean (prob_weighted needs the edges' log-probs, not handed to advantages)"
            )


class TreeStepScheduler(StepScheduler):
    name = "tree"
    knobs = TreeKnobs
    sweep_knobs = ("split_noise_scale",)
    run_name_knobs = {
        "tree_splits": lambda v, m: "split" + "-".join(str(s) for s in v),
        "split_noise_scale": lambda v, m: f"ns{v:g}",
    }
    small_overrides = ("method.num_steps=4", "method.group_size=4", "method.tree_splits=[0,2]")

    def __init__(
        self,
        num_steps: int = 20,
        group_size: int = 16,
        tree_splits=(0, 3, 6, 9),
        split_noise_scale: float = 4.0,
        noise_level: float = 0.3,
        shift: float = 3.0,
        sigma_grid: str = "shifted_linspace",
        fusion: str = "mean",
        score: str = "last_x0",
        update: dict | None = None,
        adv_clip: float = 5.0,
        std_unbiased: bool = True,
        std_eps: float = 1e-8,
        method: str = "branchgrpo",
        multi_reward: str = "combined",
    ):
        super().__init__(num_steps, group_size, shift, adv_clip, multi_reward, std_unbiased, std_eps, method, sigma_grid)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion != "mean":
            raise ValueError("fusion prob_weighted needs the edges' log-probs, which advantages() is not handed (see the header)")
        self.tree_splits = tuple(int(s) for s in tree_splits)
        self.split_noise_scale = float(split_noise_scale)
        self.noise_level = float(noise_level)
        self.fusion = fusion
        self.score = score
        self.update_cfg = dict(update or {"step_every": "edges", "edges_per_step": 12, "prompts_per_rank": 2})
        self.plan(0)  # validate now, not at the first rollout

    def update_schedule(self, seed: int) -> UpdateSchedule:
        cfg = dict(self.update_cfg)
        known = ("step_every", "edges_per_step", "prompts_per_rank", "shuffle", "normalizer", "steps_per_rollout")
        unknown = set(cfg) - set(known)
        if unknown:
            raise ValueError(f"unknown update keys {sorted(unknown)}; known: {', '.join(known)}")
        every = cfg.get("step_every", "edges")
        return UpdateSchedule(
            trained=tuple(range(self.num_steps)),  # every edge (--ignore_last, --timestep_fraction are never read)
            step_every=every,
            edges_per_step=int(cfg["edges_per_step"]) if every == "edges" else None,
            prompts_per_rank=int(cfg.get("prompts_per_rank", 1)),
            steps_per_rollout=int(cfg.get("steps_per_rollout", 1)),
            shuffle=bool(cfg.get("shuffle", True)),
            normalizer=cfg.get("normalizer", "fixed" if every == "edges" else "mean"),
            seed=seed,
        )

    def plan(self, iteration: int = 0, generator: torch.Generator | None = None) -> StepPlan:
        step = StepSettings("dance", self.noise_level)
        return StepPlan(
            method=self.method,
            sigmas=self.sigmas,
            group_size=self.group_size,
            trajectory="tree",
            jumps=tuple(Jump(i, i + 1, step) for i in range(self.num_steps)),
            update=self.update_schedule(self.seed_from(generator)),
            same_initial_noise=True,
            score=self.score,
            note=f"every edge of every tree (splits at {list(self.tree_splits)}, {2 ** len(self.tree_splits)} leaves)",
            tree_splits=self.tree_splits,
            split_noise_scale=self.split_noise_scale,
        )

    def normalize(self, rewards: torch.Tensor, plan: StepPlan, prompts: list[str] | None = None) -> torch.Tensor:
        """Leaf rewards [P, G] -> [P, G, J]: entry [p, g, j] is the advantage of the edge of step j
        on leaf g's path (its child's, at depth j + 1); plan.per_jump takes one leaf per edge."""
        check_rewards(rewards, plan)
        widths = plan.tree_widths()
        adv = depth_advantages(fuse_rewards(rewards, widths), self.std_unbiased, self.std_eps)
        g = plan.group_size
        return torch.stack([adv[j + 1].repeat_interleave(g // widths[j + 1], dim=1) for j in range(len(plan.jumps))], -1)
