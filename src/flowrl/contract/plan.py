"""The step-scheduler interface: where a GRPO variant puts its stochasticity, how it groups
samples, which steps it trains and where its optimizer steps fall. Everything else (model,
rollout engine, loss, trainer) is shared.

One contract crosses each border, once per iteration:

    plan = step_scheduler.plan(iteration, generator)   # frozen: all the engine and the update see
    ro   = rollout(model, plan, prompts, score_fn, ...) # sampling/rollout.py
    adv  = step_scheduler.advantages(scores, plan, prompts)  # one [M_j, K_j] tensor per jump
    policy_update(model, plan, ro, adv, ...)            # flowrl/update.py: the trained-jump loop

Sigma indices run 0..T (sigmas[0] = 1 is noise, sigmas[T] = 0 the image); a Jump start -> stop is
one model evaluation (NFE) that moves x from sigmas[start] to sigmas[stop] stochastically, with
the StepSettings it carries. Deterministic steps are Euler ODE steps.

Layouts (P prompts, G samples per group, J = len(plan.jumps)), prompt-major throughout:
  rewards the engine hands back: [P, G, *plan.score_shape]
    "sde" trajectories: [P, G] (the scored final image), or [P, G, T+1] with intermediate completions
    "anchor" trajectories: [P, G, B, C] (branch, completion schedule)
  the engine's jump sets: jump j has M_j start states with K_j successors each:
    "sde": M = P*G (sample p*G+g), K = 1;  "anchor": M = P (the prompt's anchor state), K = G
    "tree": one jump per step j, M_j = P*n_j (the tree's n_j nodes before step j, prompt-major,
      depth-first order), K_j = 2 at a split step else 1; the G leaves are the group (BranchGRPO)
  advantages: one tensor per jump, [M_j, K_j] (the jump set's own layout)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flowrl.contract.objectives import ClippedRatio, Objective, PolicyCopy
from flowrl.sampling.steps import LOG_PROBS, SDEStepOutput, dance_sde_step, ode_step, sde_step

STEP_KINDS = ("ode", "dance", "sde", "cps")


@dataclass(frozen=True)
class StepSettings:
    """How one transition is taken and how its log-prob is evaluated: everything the engine and
    the policy update need to know about it, so neither calls back into the step scheduler.

    kind: "ode" (Euler), "dance" (DanceGRPO step, eta = noise_level), "sde" (Flow-GRPO SDE,
    a = noise_level), "cps" (coefficients-preserving sampling, a = noise_level).
    std_dev_t: "sde" only, the diffusion coefficient itself instead of a*sqrt(sigma/(1-sigma))
    (DenseGRPO's psi(t)). sigma_max: the sigma in std_dev_t's denominator where sigma = 1 (the
    schedule's sigmas[1], as flow_grpo). log_prob: "gaussian" | "mse" (official CPS form)."""

    kind: str = "sde"
    noise_level: float = 0.0
    std_dev_t: float | None = None
    sigma_max: float | None = None
    log_prob: str = "gaussian"

    def __post_init__(self):
        if self.kind not in STEP_KINDS:
            raise ValueError(f"step kind must be one of {STEP_KINDS}, got {self.kind!r}")
        if self.noise_level < 0 or (self.std_dev_t is not None and self.std_dev_t < 0):
            raise ValueError(f"noise level must be >= 0, got {self.noise_level} (std_dev_t {self.std_dev_t})")
        if self.std_dev_t is not None and self.kind != "sde":
            raise ValueError(f"std_dev_t goes with kind 'sde' only, got kind {self.kind!r}")
        if self.log_prob not in LOG_PROBS:
            raise ValueError(f"log_prob must be one of {LOG_PROBS}, got {self.log_prob!r}")

    def __call__(self, x, v, sigma, sigma_next, noise=None, prev_sample=None, generator=None) -> SDEStepOutput:
        """One transition sigma -> sigma_next from x with velocity v(x, sigma); fp32 math."""
        if self.kind == "ode":
            x_next = ode_step(x, v, sigma, sigma_next)
            zero = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
            mean = x_next.float()
            return SDEStepOutput(x_next, mean, torch.zeros((), device=x.device), zero, torch.zeros((), device=x.device))
        if self.kind == "dance":
            return dance_sde_step(
                x, v, sigma, sigma_next, eta=self.noise_level, noise=noise, prev_sample=prev_sample, generator=generator
            )
        return sde_step(
            x,
            v,
            sigma,
            sigma_next,
            noise_level=self.noise_level,
            noise=noise,
            prev_sample=prev_sample,
            generator=generator,
            sigma_max=self.sigma_max,
            sde_type=self.kind,
            std_dev_t=self.std_dev_t,
            log_prob=self.log_prob,
        )

    def to_dict(self) -> dict:
        out = {"sde": self.kind, "noise_level": self.noise_level}
        if self.std_dev_t is not None:
            out["std_dev_t"] = self.std_dev_t
        return out


ODE = StepSettings("ode")


@dataclass(frozen=True)
class Jump:
    """One stochastic transition sigmas[start] -> sigmas[stop] (stop > start), one NFE."""

    start: int
    stop: int
    step: StepSettings = field(default_factory=StepSettings)
    # multiplies this jump's policy term (after the advantage clamp, before the KL): TempFlow-GRPO's
    # noise-aware weighting, GRPO-Guard's 1 / |dt| re-weighting; 1 for every other method
    loss_weight: float = 1.0

    def __post_init__(self):
        if not self.loss_weight > 0:
            raise ValueError(f"a jump's loss_weight must be > 0, got {self.loss_weight}")

    def to_dict(self) -> dict:
        out = {"start": self.start, "stop": self.stop, **self.step.to_dict()}
        if self.loss_weight != 1.0:
            out["loss_weight"] = self.loss_weight
        return out


LEVEL_KINDS = ("permutation", "stratified")


@dataclass(frozen=True)
class LevelSchedule:
    """ "final" plans: the noise levels (sigma indices of plan.sigmas) each sample is re-noised at
    for its `count` training terms, x_sigma = (1 - sigma) x0 + sigma eps.
    "permutation": per sample the first `count` of a random permutation of 0..T-1 (DiffusionNFT);
    "stratified": one index drawn uniformly from each stratum [bounds[k], bounds[k+1]) of the
      sigma indices, one draw shared by each block of `share_rows` consecutive samples (AWM's
      micro-batch). Seeded, frozen when the plan is built."""

    kind: str
    count: int
    bounds: tuple[int, ...] = ()
    share_rows: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.kind not in LEVEL_KINDS:
            raise ValueError(f"level kind must be one of {LEVEL_KINDS}, got {self.kind!r}")
        if self.count < 1 or self.share_rows < 1:
            raise ValueError(f"levels need count >= 1 and share_rows >= 1, got {self.count}, {self.share_rows}")
        if self.kind == "stratified" and (
            len(self.bounds) != self.count + 1 or any(b >= c for b, c in zip(self.bounds, self.bounds[1:]))
        ):
            raise ValueError(f"stratified levels need count + 1 rising bounds, got {self.bounds} for count {self.count}")

    def table(self, num_rows: int, num_steps: int) -> torch.Tensor:
        """[num_rows, count] long sigma indices in 0..T-1."""
        g = torch.Generator().manual_seed(self.seed)
        if self.kind == "permutation":
            if self.count > num_steps:
                raise ValueError(f"{self.count} levels per sample from {num_steps} steps")
            return torch.stack([torch.randperm(num_steps, generator=g)[: self.count] for _ in range(num_rows)])
        if self.bounds[-1] > num_steps or self.bounds[0] < 0:
            raise ValueError(f"level strata {self.bounds} outside the sigma indices 0..{num_steps - 1}")
        lo, hi = torch.tensor(self.bounds[:-1]), torch.tensor(self.bounds[1:])
        blocks = -(-num_rows // self.share_rows)
        draws = lo + (torch.rand(blocks, self.count, generator=g) * (hi - lo)).long()  # [blocks, K]
        return draws.repeat_interleave(self.share_rows, dim=0)[:num_rows]

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "count": self.count}
        if self.kind == "stratified":
            out |= {"bounds": list(self.bounds), "share_rows": self.share_rows}
        return out


SAMPLERS = ("euler", "dpm2")


@dataclass(frozen=True)
class Branch:
    """G samples leave the anchor state x_start with one SDE jump, then follow each deterministic
    completion (sigma indices, rising to T) to a scored image. A completion normally starts where
    the jump lands (completion[0] == jump.stop); the latent is treated as being at
    sigmas[completion[0]] (E-GRPO's official sampler restarts at jump.start + 1: see entropy_merge)."""

    jump: Jump
    completions: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class TermBlock:
    """The start states `rows` of jump `jump` whose transitions one optimizer step trains."""

    jump: int  # index into plan.jumps
    rows: torch.Tensor  # [R] long, sorted: start-state rows of the jump set (see the module docstring)
    # [R, K] bool, step_every "edges" only: which successors of each row this step trains (the
    # official BranchGRPO steps count edges, so a split's two children may fall in different steps);
    # None: all K successors of every row
    successors: torch.Tensor | None = None


OptimizerStep = tuple[TermBlock, ...]

TRAJECTORIES = ("sde", "anchor", "final", "tree")

STEP_EVERY = ("jump", "samples", "rollout", "edges")

NORMALIZERS = ("mean", "fixed")


@dataclass(frozen=True)
class UpdateSchedule:
    """Which jumps are trained this iteration and how their gradients are grouped into optimizer
    steps. Every optimizer step's loss is the mean over its terms (one term per trained
    (sample, jump)); the official scripts' normalisations all reduce to this.

    trained: plan.jumps indices trained for every sample, or None with per_sample = (k, pool):
      each sample trains k jumps drawn at random from jumps[:pool] (DanceGRPO).
    step_every:
      "jump": one optimizer step per trained jump, over all its samples (E-GRPO, G²RPO);
      "samples": DanceGRPO's and MixGRPO's gradient_accumulation_steps. Their scripts hold
        `prompts_per_rank` prompts (x G samples) per GPU, loop over a GPU's samples in order and
        step every `samples_per_step` of them, the gradients averaged over the GPUs: global step o
        is the o-th `samples_per_step` samples of every rank. flowrl's P prompts emulate P /
        prompts_per_rank such ranks (1 prompt per GPU in finetune_flux_grpo.sh and the MixGRPO
        script: 3 and 4 steps per iteration whatever P). A remainder makes a last, smaller step
        (the official scripts let its gradient be zeroed at the next iteration);
      "rollout": `steps_per_rollout` steps, each over an equal share of the (optionally
        shuffled) samples and every trained jump (Flow-GRPO: 2; DenseGRPO: 1);
      "edges" ("tree" plans, BranchGRPO): every emulated rank (`prompts_per_rank` prompts) lists
        its trained edges (start state, successor), shuffles them (torch.randperm seeded seed + 1 +
        rank, when `shuffle`) and steps every `edges_per_step` of them, the last step taking the
        rest; global step o is the o-th split of every rank.
    normalizer: "mean" (above) or "fixed": a step's loss is the sum of its terms over one fixed
      denominator, `edges_per_step` x (trained edges per prompt) x (emulated ranks) (BranchGRPO's
      sum / (GA x E_tree) per GPU, the GPUs averaged: a remainder step weighs less than a full
      one). "edges" plans only.
    drop_zero_advantage: samples whose advantage is exactly 0 at every jump leave the update (their
      terms neither count in the mean nor add a KL term), as flow_grpo's train_sd3.py filters them
      ("sde" plans). Their rows are still evaluated with their chunk, keeping the rollout's batches.
    seed: the random draws (per-sample jumps, the shuffle), frozen when the plan is built."""

    trained: tuple[int, ...] | None = None
    per_sample: tuple[int, int] | None = None
    step_every: str = "rollout"
    samples_per_step: int | None = None
    prompts_per_rank: int = 1
    steps_per_rollout: int = 1
    shuffle: bool = False
    drop_zero_advantage: bool = False
    seed: int = 0
    edges_per_step: int | None = None
    normalizer: str = "mean"

    def __post_init__(self):
        if (self.trained is None) == (self.per_sample is None):
            raise ValueError("an update schedule needs exactly one of `trained` and `per_sample`")
        if self.step_every not in STEP_EVERY:
            raise ValueError(f"step_every must be one of {STEP_EVERY}, got {self.step_every!r}")
        if self.step_every == "samples" and (self.samples_per_step is None or self.samples_per_step < 1):
            raise ValueError(f"step_every 'samples' needs samples_per_step >= 1, got {self.samples_per_step}")
        if self.steps_per_rollout < 1 or self.prompts_per_rank < 1:
            raise ValueError(
                f"steps_per_rollout and prompts_per_rank must be >= 1, got {self.steps_per_rollout}, {self.prompts_per_rank}"
            )
        if self.per_sample is not None and not 1 <= self.per_sample[0] <= self.per_sample[1]:
            raise ValueError(f"per_sample (k, pool) needs 1 <= k <= pool, got {self.per_sample}")
        if self.step_every == "edges" and (self.edges_per_step is None or self.edges_per_step < 1):
            raise ValueError(f"step_every 'edges' needs edges_per_step >= 1, got {self.edges_per_step}")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {self.normalizer!r}")
        if self.normalizer == "fixed" and self.step_every != "edges":
            raise ValueError("normalizer 'fixed' goes with step_every 'edges'")

    @property
    def trained_per_sample(self) -> int:
        return len(self.trained) if self.trained is not None else self.per_sample[0]

    def to_dict(self) -> dict:
        out = {"step_every": self.step_every}
        if self.step_every == "samples":
            out |= {"samples_per_step": self.samples_per_step, "prompts_per_rank": self.prompts_per_rank}
        if self.step_every == "rollout":
            out |= {"steps_per_rollout": self.steps_per_rollout, "shuffle": self.shuffle}
        if self.step_every == "edges":
            out |= {"edges_per_step": self.edges_per_step, "prompts_per_rank": self.prompts_per_rank, "shuffle": self.shuffle}
        if self.normalizer != "mean":
            out["normalizer"] = self.normalizer
        if self.drop_zero_advantage:
            out["drop_zero_advantage"] = True
        return out


@dataclass(frozen=True)
class StepPlan:
    """What to roll out for one prompt this iteration, which transitions to train and where the
    optimizer steps fall. Built once per iteration by the step scheduler, then read only."""

    method: str
    sigmas: tuple[float, ...]  # [T+1] the noise schedule, 1 -> 0
    group_size: int  # G
    # "sde": G stochastic trajectories per prompt | "anchor": ODE anchor + branches |
    # "final": G deterministic generations of which only x0 and the reward are kept (forward process)
    trajectory: str
    jumps: tuple[Jump, ...]  # the stochastic jumps of one generation ("final": none)
    update: UpdateSchedule
    same_initial_noise: bool  # the G samples of a group start from the same x_1
    branches: tuple[Branch, ...] = ()  # "anchor" only
    # "sde" only: for sigma index i (0..T-1), the ODE schedule that completes x_i to an image
    # (DenseGRPO's intermediate rewards); empty = only the final image is scored.
    intermediate_completions: tuple[tuple[int, ...], ...] = ()
    # "sde" only: the scored final image is the last latent ("final") or the x0 prediction of
    # the last step, x_{T-1} - sigma_{T-1} * v ("last_x0", DanceGRPO).
    score: str = "final"
    note: str = ""  # how trained steps are chosen, in words
    # what the update trains (flowrl.contract.objectives): the clipped ratio of the SDE family, or a
    # forward-process objective on "final" plans
    objective: Objective = field(default_factory=ClippedRatio)
    # weight copies the trainer keeps and soft-updates after every iteration (the objective's views)
    policies: tuple[PolicyCopy, ...] = ()
    # "final" only: the sampler of the G generations (deterministic; "euler" ODE or DPM-Solver++(2M)
    # "dpm2"), the noise levels of the training terms, and the CFG scale of both rollout and training
    # (None = the model's; 1.0 = CFG off, for models that do CFG)
    sampler: str = "euler"
    levels: LevelSchedule | None = None
    cfg_scale: float | None = None
    # "tree" only (BranchGRPO): the steps at which every node splits in two (sigma indices 0..T-1,
    # rising), and the factor on a split child's noise (its log-prob keeps the unscaled std)
    tree_splits: tuple[int, ...] = ()
    split_noise_scale: float = 1.0

    def __post_init__(self):
        t = self.num_steps
        if self.trajectory not in TRAJECTORIES:
            raise ValueError(f"trajectory must be one of {TRAJECTORIES}, got {self.trajectory!r}")
        if self.score not in ("final", "last_x0"):
            raise ValueError(f"score must be 'final' or 'last_x0', got {self.score!r}")
        names = [c.name for c in self.policies]
        if len(set(names)) != len(names) or sum(c.samples for c in self.policies) > 1:
            raise ValueError(f"policy copies need distinct names and at most one that samples, got {self.policies}")
        missing = [v for v in self.objective.views if v != "reference" and v not in names]
        if missing:
            raise ValueError(f"the objective reads the policy copies {missing}, which the plan does not keep")
        if self.trajectory != "tree" and (self.tree_splits or self.split_noise_scale != 1.0):
            raise ValueError("tree_splits and split_noise_scale go with trajectory 'tree'")
        if self.trajectory != "tree" and self.update.step_every == "edges":
            raise ValueError("step_every 'edges' goes with trajectory 'tree'")
        if self.trajectory == "final":
            if self.jumps or self.branches or self.intermediate_completions or self.levels is None:
                raise ValueError("a 'final' plan has no jumps, branches or intermediate completions, and needs levels")
            if isinstance(self.objective, ClippedRatio):
                raise ValueError("a 'final' plan keeps no log-probs: it needs a forward-process objective")
            if self.sampler not in SAMPLERS:
                raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
            if self.update.trained is None or any(not 0 <= k < self.levels.count for k in self.update.trained):
                raise ValueError(f"a 'final' plan trains level columns 0..{self.levels.count - 1}, got {self.update.trained}")
            if self.update.step_every == "samples" or self.update.drop_zero_advantage:
                raise ValueError("a 'final' plan steps per rollout or per level, without the zero-advantage filter")
            return
        if not isinstance(self.objective, ClippedRatio):
            raise ValueError(f"{self.trajectory!r} plans train the clipped ratio of their jumps")
        if not self.jumps:
            raise ValueError("a plan needs at least one stochastic jump")
        if self.trajectory == "sde":
            starts = [j.start for j in self.jumps]
            if any(j.stop != j.start + 1 for j in self.jumps) or starts != sorted(set(starts)) or starts[-1] >= t:
                raise ValueError(f"sde trajectories take single-step jumps in order within 0..{t}, got {self.jumps}")
        elif self.trajectory == "tree":
            self._check_tree()
        else:
            if self.intermediate_completions or self.score != "final":
                raise ValueError("anchor plans score their completions; no intermediate completions or last_x0")
            if len(self.branches) != len(self.jumps) or len({len(b.completions) for b in self.branches}) != 1:
                raise ValueError("an anchor plan needs one branch per jump, each with the same number of completions")
            for b, j in zip(self.branches, self.jumps):
                if b.jump != j:
                    raise ValueError(f"branch jump {b.jump} is not plan jump {j}")
                for c in b.completions:
                    if not (j.start < c[0] <= t and c[-1] == t and list(c) == sorted(set(c))):
                        raise ValueError(f"completion {c} of jump {j} must rise from after {j.start} to {t}")
        for i, c in enumerate(self.intermediate_completions):
            if c[0] != i or c[-1] != t:
                raise ValueError(f"intermediate completion {c} must run from {i} to {t}")
        trained = self.update.trained if self.update.trained is not None else range(self.update.per_sample[1])
        if any(not 0 <= j < len(self.jumps) for j in trained):
            raise ValueError(f"trained jumps {list(trained)} must index the plan's {len(self.jumps)} jumps")
        if self.trajectory == "anchor" and (self.update.per_sample is not None or self.update.step_every == "samples"):
            raise ValueError("anchor plans train whole branches: no per-sample jumps, no step_every 'samples'")

    def _check_tree(self) -> None:
        t, s = self.num_steps, list(self.tree_splits)
        if [(j.start, j.stop) for j in self.jumps] != [(i, i + 1) for i in range(t)]:
            raise ValueError(f"a tree plan takes one single-step jump per step 0..{t - 1}, got {self.jumps}")
        if any(j.step.kind == "ode" for j in self.jumps):
            raise ValueError("a tree plan's jumps are stochastic (the ODE steps of BranchGRPO-Mix are not built)")
        if not s or s != sorted(set(s)) or s[0] < 0 or s[-1] >= t:
            raise ValueError(f"tree_splits must be distinct rising step indices within 0..{t - 1}, got {self.tree_splits}")
        if self.group_size != 2 ** len(s):
            raise ValueError(f"a tree with {len(s)} splits has {2 ** len(s)} leaves, the group; group_size is {self.group_size}")
        if not self.split_noise_scale > 0:
            raise ValueError(f"split_noise_scale must be > 0, got {self.split_noise_scale}")
        if self.branches or self.intermediate_completions or self.same_initial_noise is not True:
            raise ValueError("a tree plan has one root per prompt (same_initial_noise), no branches, no intermediate completions")
        u = self.update
        if u.per_sample is not None or u.step_every == "samples" or u.drop_zero_advantage:
            raise ValueError(
                "a tree plan trains whole jumps: no per-sample jumps, no step_every 'samples', no zero-advantage filter"
            )

    # ---- the tree ("tree" plans) ---------------------------------------------------------------
    def tree_widths(self) -> list[int]:
        """n_0..n_T: a tree's nodes at each depth (the states before step i; n_T = G leaves)."""
        return [2 ** sum(s < i for s in self.tree_splits) for i in range(self.num_steps + 1)]

    # ---- the schedule ---------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def sigma_tensor(self) -> torch.Tensor:
        return torch.tensor(self.sigmas, dtype=torch.float32)

    def step_at(self, i: int) -> StepSettings:
        """ "sde" trajectories: how step i -> i+1 is taken (its jump's settings, else ODE)."""
        for j in self.jumps:
            if j.start == i:
                return j.step
        return ODE

    def jump_layout(self, j: int, num_prompts: int) -> tuple[int, int]:
        """(M, K) of jump j's jump set: start states and successors per start state ("final": the
        one advantage column, a sample's)."""
        if self.trajectory in ("sde", "final"):
            return num_prompts * self.group_size, 1
        if self.trajectory == "tree":
            n = self.tree_widths()
            return num_prompts * n[j], n[j + 1] // n[j]
        return num_prompts, self.group_size

    def per_jump(self, adv: torch.Tensor) -> list[torch.Tensor]:
        """Advantages [P, G, J] -> one [M_j, K_j] tensor per jump, the jump sets' layout ("final":
        [P, G, 1] -> [[P*G, 1]], one advantage per sample for all its levels)."""
        p, g, n = adv.shape
        want = len(self.jumps) if self.trajectory != "final" else 1
        if g != self.group_size or n != want:
            raise ValueError(f"advantages must be [P, {self.group_size}, {want}], got {tuple(adv.shape)}")
        if self.trajectory == "tree":  # edge j of leaf g's path: every (G / n_{j+1})-th leaf is one child
            widths = self.tree_widths()
            return [adv[:, :: g // widths[j + 1], j].reshape(self.jump_layout(j, p)) for j in range(n)]
        return [adv[:, :, j].reshape(self.jump_layout(j, p)) for j in range(n)]

    @property
    def score_shape(self) -> tuple[int, ...]:
        """Trailing dims of the rewards the engine returns for this plan, after [P, G]."""
        if self.trajectory == "anchor":
            return (len(self.branches), len(self.branches[0].completions))
        if self.intermediate_completions:
            return (self.num_steps + 1,)
        return ()

    # ---- the update ---------------------------------------------------------------------------
    @property
    def num_columns(self) -> int:
        """The term columns an update block indexes (TermBlock.jump): the jumps, or a "final" plan's
        level columns."""
        return self.levels.count if self.trajectory == "final" else len(self.jumps)

    def level_table(self, num_prompts: int) -> torch.Tensor:
        """ "final" plans: [P*G, levels.count] long, the sigma index of every (sample, level) term."""
        return self.levels.table(num_prompts * self.group_size, self.num_steps)

    def trained_mask(self, num_prompts: int) -> torch.Tensor:
        """[M, J] bool: which (start state, jump) transitions are trained this iteration ("final":
        [P*G, levels.count], which (sample, level column) terms)."""
        m = num_prompts if self.trajectory == "anchor" else num_prompts * self.group_size
        u = self.update
        if self.trajectory == "tree":  # M differs per jump: [max M_j, J], jump j's rows past M_j False
            rows = [self.jump_layout(j, num_prompts)[0] for j in range(len(self.jumps))]
            mask = torch.zeros(max(rows), len(self.jumps), dtype=torch.bool)
            for j in u.trained:
                mask[: rows[j], j] = True
            return mask
        mask = torch.zeros(m, self.num_columns, dtype=torch.bool)
        if u.trained is not None:
            mask[:, list(u.trained)] = True
            return mask
        k, pool = u.per_sample
        g = torch.Generator().manual_seed(u.seed)
        for row in range(m):  # each sample its own draw (DanceGRPO: a randperm per sample)
            mask[row, torch.randperm(pool, generator=g)[:k]] = True
        return mask

    def optimizer_steps(self, num_prompts: int, keep: torch.Tensor | None = None) -> list[OptimizerStep]:
        """The update of this iteration for P prompts: the optimizer steps in order, each the
        trained (start state, jump) blocks whose gradients it accumulates. Deterministic given the
        plan (its draws are seeded), so the engine and the update derive the same steps.
        `keep` [M] bool (flow_grpo's zero-advantage filter): the rows left out before the
        (shuffled) rows are split into steps, as train_sd3.py filters before it batches."""
        mask = self.trained_mask(num_prompts)
        if keep is not None:
            mask &= keep.view(-1, 1)
        m = mask.shape[0]
        u = self.update
        jumps_in_order = list(u.trained) if u.trained is not None else list(range(self.num_columns))
        if u.step_every == "edges":
            return self._edge_steps(num_prompts, mask, jumps_in_order)
        if u.step_every == "jump":
            steps = [(TermBlock(j, torch.nonzero(mask[:, j]).squeeze(1)),) for j in jumps_in_order]
            return [s for s in steps if s[0].rows.numel() or keep is not None]
        order = torch.arange(m)
        if u.shuffle:
            order = torch.randperm(m, generator=torch.Generator().manual_seed(u.seed + 1))
        if keep is not None and u.step_every == "rollout":
            order = order[keep[order]]
        if u.step_every == "samples":
            if num_prompts % u.prompts_per_rank:
                raise ValueError(
                    f"{self.method}: {num_prompts} prompts per iteration are not whole ranks of "
                    f"prompts_per_rank {u.prompts_per_rank} (train.prompts_per_step must be a multiple of it)"
                )
            # every emulated rank's samples in order, split every samples_per_step: step o is the
            # o-th split of each rank. Where samples_per_step does not divide a rank's samples the
            # last step takes the rest (the official scripts zero those gradients at the next
            # iteration: unintended waste).
            ranks = [
                order[r : r + u.prompts_per_rank * self.group_size] for r in range(0, m, u.prompts_per_rank * self.group_size)
            ]
            per_rank = [rank.split(u.samples_per_step) for rank in ranks]
            parts = [torch.cat([splits[o] for splits in per_rank]) for o in range(len(per_rank[0]))]
        else:
            if u.steps_per_rollout > m:
                raise ValueError(f"{self.method}: steps_per_rollout {u.steps_per_rollout} > {m} start states")
            parts = order.tensor_split(u.steps_per_rollout) if order.numel() else []
        steps = []
        for part in parts:
            rows = part.sort().values
            blocks = tuple(TermBlock(j, rows[mask[rows, j]]) for j in jumps_in_order if mask[rows, j].any())
            if blocks or keep is not None:  # with rows filtered out, a step may be empty: it stays (DDP ranks step together)
                steps.append(blocks)
        if keep is not None and u.step_every == "rollout":
            steps += [()] * (u.steps_per_rollout - len(steps))
        return steps

    def _edge_steps(self, num_prompts: int, mask: torch.Tensor, jumps_in_order: list[int]) -> list[OptimizerStep]:
        """step_every "edges": each emulated rank's trained edges (jump, row, successor), listed
        jump by jump, row by row, optionally shuffled (seed + 1 + rank), split every edges_per_step;
        step o gathers the o-th split of every rank, as (jump, rows, successors) blocks."""
        u = self.update
        if num_prompts % u.prompts_per_rank:
            raise ValueError(
                f"{self.method}: {num_prompts} prompts per iteration are not whole ranks of "
                f"prompts_per_rank {u.prompts_per_rank} (train.prompts_per_step must be a multiple of it)"
            )
        layout = {j: self.jump_layout(j, num_prompts) for j in jumps_in_order}
        per_rank = []
        for r in range(num_prompts // u.prompts_per_rank):
            edges = []
            for j in jumps_in_order:
                (_m, k), per_prompt = layout[j], layout[j][0] // num_prompts
                lo, hi = r * u.prompts_per_rank * per_prompt, (r + 1) * u.prompts_per_rank * per_prompt
                edges += [(j, row, c) for row in range(lo, hi) if mask[row, j] for c in range(k)]
            e = torch.tensor(edges, dtype=torch.long).view(-1, 3)
            if u.shuffle:
                e = e[torch.randperm(e.shape[0], generator=torch.Generator().manual_seed(u.seed + 1 + r))]
            per_rank.append(e.split(u.edges_per_step))
        steps = []
        for o in range(max(len(p) for p in per_rank)):
            e = torch.cat([p[o] for p in per_rank if o < len(p)])
            blocks = []
            for j in jumps_in_order:
                ej = e[e[:, 0] == j]
                if ej.shape[0]:
                    rows = ej[:, 1].unique(sorted=True)
                    succ = torch.zeros(rows.numel(), layout[j][1], dtype=torch.bool)
                    succ[torch.searchsorted(rows, ej[:, 1].contiguous()), ej[:, 2]] = True
                    blocks.append(TermBlock(j, rows, succ))
            steps.append(tuple(blocks))
        return steps

    def loss_denominator(self, num_prompts: int) -> int | None:
        """normalizer "fixed": every optimizer step's loss is its terms' sum over this; None: the
        step's mean. BranchGRPO's per-GPU loss is sum / (GA x E_tree) (edges_per_step x the trained
        edges of one tree) and the GPUs' gradients are averaged: x the emulated ranks."""
        if self.update.normalizer != "fixed":
            return None
        ranks = num_prompts // self.update.prompts_per_rank
        return self.update.edges_per_step * self.trained_edges_per_prompt() * ranks

    def trained_edges_per_prompt(self) -> int:
        """ "tree" plans: the trained edges of one tree (jump j has n_{j+1} edges)."""
        n = self.tree_widths()
        return sum(n[j + 1] for j in self.update.trained)

    def first_step_rows(self, num_prompts: int) -> dict[int, torch.Tensor]:
        """{jump: rows} trained by the first optimizer step: the engine forwards them as chunks of
        their own, and the update with the same chunks (flowrl.engine.rollout's docstring: why)."""
        steps = self.optimizer_steps(num_prompts)
        return {b.jump: b.rows for b in steps[0]} if steps else {}

    # ---- cost ----------------------------------------------------------------------------------
    def nfe_per_generation(self) -> int:
        """Model evaluations behind one of the G samples, as the papers count them (anchor
        steps, shared by the group, not counted; a branch's jump counts 1)."""
        if self.trajectory in ("final", "tree"):  # "final": one per sampler step; "tree": a leaf's path
            return self.num_steps
        if self.trajectory == "sde":
            return self.num_steps + sum(len(c) - 1 for c in self.intermediate_completions)
        return sum(1 + sum(len(c) - 1 for c in b.completions) for b in self.branches)

    def anchor_nfe(self) -> int:
        """ODE steps of the shared anchor trajectory needed to reach the last branch point."""
        return max((b.jump.start for b in self.branches), default=0)

    def budget(self) -> dict[str, int]:
        """Per-prompt cost: NFE, reward-model queries, backward passes (= trained terms: a
        (sample, jump) transition, or a "final" plan's (sample, level)) and the training forwards
        (one with grad per term, plus one without per view the objective reads besides it; the
        SDE family's KL reference forward, a run setting, is not in it)."""
        g = self.group_size
        if self.trajectory == "tree":  # one forward per node and step (a split's children share it), a query per leaf
            terms = self.trained_edges_per_prompt()
            return {
                "nfe_per_generation": self.nfe_per_generation(),
                "nfe_per_prompt": sum(self.tree_widths()[: self.num_steps]),
                "reward_queries_per_prompt": g,
                "trained_steps_per_prompt": terms,
                "training_forwards_per_prompt": terms * (1 + len(self.objective.views)),
            }
        if self.trajectory == "sde":
            rewards = g * (1 + len(self.intermediate_completions))
        elif self.trajectory == "final":
            rewards = g
        else:
            rewards = g * sum(len(b.completions) for b in self.branches)
        terms = g * self.update.trained_per_sample
        return {
            "nfe_per_generation": self.nfe_per_generation(),
            "nfe_per_prompt": self.anchor_nfe() + g * self.nfe_per_generation(),
            "reward_queries_per_prompt": rewards,
            "trained_steps_per_prompt": terms,
            "training_forwards_per_prompt": terms * (1 + len(self.objective.views)),
        }

    def cost(
        self, num_prompts: int, latent_numel: int | None = None, image_numel: int | None = None, max_batch: int = 64
    ) -> dict[str, float]:
        """What one iteration of `num_prompts` prompts costs, in a budget's units (flowrl.training.budget),
        and, given one sample's latent and image sizes (flowrl.config.feasibility.model_shapes), the
        rollout's estimated peak memory in bytes (`rollout_memory_bytes`)."""
        b = self.budget()
        out = {"nfe": b["nfe_per_prompt"] * num_prompts, "reward_queries": b["reward_queries_per_prompt"] * num_prompts}
        if latent_numel is not None and image_numel is not None:
            out["rollout_memory_bytes"] = sum(self.rollout_memory(num_prompts, latent_numel, image_numel, max_batch).values())
        return out

    def rollout_memory(
        self, num_prompts: int, latent_numel: int, image_numel: int, max_batch: int = 64, keep_images: int = 64
    ) -> dict[str, int]:
        """Estimated peak bytes of one rollout (flowrl.engine.rollout) of `num_prompts` prompts, by
        what it holds at once, all fp32: "stored latents" (every state the update re-reads, the
        noise drawn up front, the latents being scored, a step's temporaries), "log-probs" and
        "decoded images" (one chunk of max_batch rows, plus the kept grid images). The model's own
        weights and activations are not in it."""
        p, g, t = num_prompts, self.group_size, self.num_steps
        n = p * g
        if self.trajectory == "tree":
            nodes = p * sum(self.tree_widths())  # every node's latent (jump sets' x and x_next share them)
            # the nodes, the step noise drawn up front [T, n], a step's repeated x / v, mean, next, the scored leaves
            latents = nodes + t * n + 4 * n + n + (nodes - p if self.objective.keeps_mean else 0)
            log_probs, scored = nodes - p, n
            images = min(max_batch, scored) + min(keep_images, scored)
            return {
                "stored latents": 4 * latents * latent_numel,
                "log-probs": 4 * log_probs,
                "decoded images": 4 * images * image_numel,
            }
        if self.trajectory == "final":
            # the state being sampled and a step's temporaries, x0, the re-noising noise [n, K]
            latents = n + 3 * n + n + n * self.levels.count
            log_probs, scored = 0, n
        elif self.trajectory == "sde":
            lanes = 1 + len(self.intermediate_completions)
            if self.objective.keeps_mean:  # mu_old of every trained jump (RatioNorm)
                lanes_mean = len(self.jumps)
            else:
                lanes_mean = 0
            # latents [n, T+1], noise [T, n], the scored latents [n * lanes], v / mean / next of a step
            latents = n * (t + 1) + t * n + n * lanes + 3 * n + n * lanes_mean
            log_probs, scored = n * t, n * lanes
        else:
            b, c = len(self.branches), len(self.branches[0].completions)
            # anchor x and v per branch point, the branches' noise and successors, the completion
            # lanes (concatenated), a jump's repeated x / v and its mean
            latents = 2 * b * p + b * n + b * n + b * c * n + 3 * n
            log_probs, scored = b * n, b * c * n
        images = min(max_batch, scored) + min(keep_images, scored)
        return {
            "stored latents": 4 * latents * latent_numel,
            "log-probs": 4 * log_probs,
            "decoded images": 4 * images * image_numel,
        }

    def trained_step_indices(self) -> list[int] | None:
        """Sigma indices where the trained jumps start, or None when drawn per sample (or per
        sample's levels: "final" plans)."""
        if self.update.trained is None or self.trajectory == "final":
            return None
        return [self.jumps[j].start for j in self.update.trained]

    def to_json(self, num_prompts: int = 1) -> dict:
        return {
            "method": self.method,
            "num_steps": self.num_steps,
            "sigmas": list(self.sigmas),
            "group_size": self.group_size,
            "trajectory": self.trajectory,
            "same_initial_noise": self.same_initial_noise,
            "score": self.score,
            "branches": [j.to_dict() for j in self.jumps],
            "jump_lengths": [j.stop - j.start for j in self.jumps],
            "completions": [[list(c) for c in b.completions] for b in self.branches],
            "intermediate_completions": [list(c) for c in self.intermediate_completions],
            "trained_per_generation": self.update.trained_per_sample,
            "trained_step_indices": self.trained_step_indices(),
            "trained_steps": self.note,
            "update": self.update.to_dict(),
            "prompts_per_iteration": num_prompts,
            "optimizer_steps_per_iteration": len(self.optimizer_steps(num_prompts)),
            "objective": self.objective.to_dict(),
            "policies": [c.to_dict() for c in self.policies],
            **({"sampler": self.sampler, "levels": self.levels.to_dict(), "cfg_scale": self.cfg_scale} if self.levels else {}),
            **(
                {
                    "tree_splits": list(self.tree_splits),
                    "split_noise_scale": self.split_noise_scale,
                    "tree_widths": self.tree_widths(),
                }
                if self.trajectory == "tree"
                else {}
            ),
            **self.budget(),
        }
