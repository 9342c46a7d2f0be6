"""The rollout engine: executes a StepPlan with batched model calls, no gradient, and records
what training needs (each jump's start states, their sampled successors and their log-probs
under the rollout policy). One code path for the tiny and the real models. The plan is all the
engine reads: every jump carries its own step settings, so nothing calls back into the step
scheduler.

Four trajectory kinds (plan.trajectory):
  "sde"    G full stochastic trajectories per prompt (DanceGRPO, Flow-GRPO, DenseGRPO); with
           plan.intermediate_completions every intermediate latent is also ODE-completed and scored.
  "anchor" one ODE anchor trajectory per prompt; at each branch point the G samples leave the
           anchor with one SDE jump, then follow each completion schedule (E-GRPO, G²RPO).
  "final"  G deterministic generations per prompt with the plan's sampler (Euler or DPM-Solver++(2M));
           only the final samples x0, their rewards and the noise that re-noises them for the
           update's levels are kept (DiffusionNFT, AWM).
  "tree"   one root per prompt; every step is stochastic and at a split step every node gets two
           children that share its velocity (BranchGRPO); the G leaves are the group.
All deterministic completions of a rollout run together in one "wavefront": every forward
takes up to `max_batch` rows, whatever sigma each row is at (the models take one sigma per row).

Rows are prompt-major: prompt p's group is rows p*G .. p*G+G-1. The velocity at an anchor state
is computed once and shared by the G jumps that leave it (they differ only in their noise), so an
anchor branch costs the papers' count minus one NFE per sample; `Rollout.nfe` is what was spent.

The forward of a jump's start states runs the rows that the plan's first optimizer step trains
as chunks of their own (`plan.first_step_rows`), and the policy update evaluates them with the
same chunks: a row's result depends on the batch it is computed in (measured on CPU for batches
under 16 rows), so this is what makes the ratio exactly 1 before the first update.

Every random draw (the initial noise, each stochastic step's noise) comes from a NoiseSource
(flowrl.engine.noise): by default the run's generator in the engine's historical order; a test or the
bench hands the engine the noise another sampler uses, to compare images element-wise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flowrl.contract import StepPlan, StepSettings
from flowrl.engine.noise import NoiseSource, noise_source
from flowrl.models.base import PromptEmbeds
from flowrl.sampling.steps import ode_step, predict_x0

ScoreFn = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]  # images [B,3,H,W], prompts -> {part: [B]}


@dataclass
class JumpSet:
    """The stochastic jumps sigmas[start] -> sigmas[stop] of one rollout for one plan jump: M
    distinct start states with K sampled successors each (K = 1 for full SDE trajectories,
    K = G for a branch leaving the anchor). Training re-evaluates one forward per start state."""

    start: int
    stop: int
    step: StepSettings  # how the jump was taken (the plan's), so training replays it alone
    x: torch.Tensor  # [M, *latent] state before the jump
    embed_index: torch.Tensor  # [M] long: row of Rollout.embeds (the prompt)
    x_next: torch.Tensor  # [M, K, *latent] sampled states after the jump
    log_prob: torch.Tensor  # [M, K] fp32 log-prob of each successor under the rollout policy
    # [M, K, *latent] the rollout's transition mean of each successor, when plan.objective.keeps_mean
    mean: torch.Tensor | None = None


@dataclass
class Rollout:
    """One rollout of P prompts x G samples; crosses engine -> module / update."""

    prompts: list[str]  # [P]
    group_size: int
    embeds: PromptEmbeds  # [P]
    sigmas: torch.Tensor  # [T+1]
    jump_sets: list[JumpSet]  # one per plan jump, in plan.jumps order
    parts: dict[str, torch.Tensor]  # raw reward of every scored image, [P, G, *plan.score_shape]
    images: torch.Tensor  # [n, 3, H, W] the first scored images (for sample grids)
    nfe: int  # model evaluations (rows x forwards) spent
    forwards: int  # model calls
    final: torch.Tensor | None = None  # "final" plans: [P*G, *latent] the sampled x0
    level_noise: torch.Tensor | None = None  # "final" plans: [P*G, K, *latent] the re-noising eps per level

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)


def initial_noise(model, num_prompts: int, group_size: int, same_in_group: bool, noise: NoiseSource) -> torch.Tensor:
    """x_1 [P*G, *latent]: one draw per prompt repeated over its group (DanceGRPO), or one per row."""
    if same_in_group:
        return noise.initial(model, num_prompts, 1).repeat_interleave(group_size, dim=0)
    return noise.initial(model, num_prompts, group_size)


def chunks(n: int, size: int):
    """Row slices of at most `size`: the batching of every forward, rollout and training alike."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def forward_chunks(n: int, size: int, first: torch.Tensor | None = None):
    """Row-index chunks of at most `size` covering 0..n-1: the rows `first` (in their order)
    as chunks of their own, then the others in order. The policy update chunks `first` the same
    way, so those rows see the same batches in the rollout and in training."""
    if first is None or first.numel() in (0, n):
        for sl in chunks(n, size):
            yield torch.arange(sl.start, sl.stop)
        return
    rest = torch.ones(n, dtype=torch.bool)
    rest[first] = False
    for rows in (first, torch.nonzero(rest).squeeze(1)):
        for sl in chunks(rows.numel(), size):
            yield rows[sl]


class _Counter:
    def __init__(self):
        self.nfe = 0
        self.forwards = 0

    def velocity(self, model, x, sigma, embeds):
        self.nfe += x.shape[0]
        self.forwards += 1
        return model.velocity(x, sigma, embeds)


def _velocities(model, x, sigma, embeds: PromptEmbeds, max_batch: int, counter: _Counter, first=None) -> torch.Tensor:
    """v for every row of x at one sigma, in forward_chunks of at most max_batch rows."""
    v = torch.empty_like(x)
    for rows in forward_chunks(x.shape[0], max_batch, first):
        idx = rows.to(x.device)
        v[idx] = counter.velocity(model, x[idx], sigma.expand(rows.numel()).to(x), embeds[rows])
    return v


def ode_complete_and_score(
    model,
    x: torch.Tensor,
    embed_index: torch.Tensor,
    schedules: list[list[int]],
    lane_of_row: torch.Tensor,
    sigmas: torch.Tensor,
    embeds: PromptEmbeds,
    prompts: list[str],
    score_fn: ScoreFn,
    max_batch: int,
    counter: _Counter,
    keep_images: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Integrate the ODE for every row along its lane's schedule (sigma indices), decode, score.

    x [R, *latent] (modified in place), embed_index [R] (prompt of each row), lane_of_row [R]
    (index into schedules). Wavefront: at tick t every row that still has a step left moves one
    step; the active rows go through the model max_batch at a time, each at its own sigma.
    Returns ({part: [R]}, the first keep_images images).
    """
    sched = torch.full((len(schedules), max(len(s) for s in schedules)), -1, dtype=torch.long)
    for i, s in enumerate(schedules):
        sched[i, : len(s)] = torch.tensor(s)
    row_sched = sched[lane_of_row.cpu()]  # [R, L] sigma indices, -1 past the end
    steps_left = (row_sched >= 0).sum(1) - 1  # [R]
    for t in range(int(steps_left.max())):
        active = torch.nonzero(steps_left > t).squeeze(1)
        for sl in chunks(active.numel(), max_batch):
            rows = active[sl]
            s, s_next = sigmas[row_sched[rows, t]], sigmas[row_sched[rows, t + 1]]
            xr = x[rows.to(x.device)]
            v = counter.velocity(model, xr, s.to(xr), embeds[embed_index[rows]])
            x[rows.to(x.device)] = ode_step(xr, v, s, s_next)
    parts: dict[str, list[torch.Tensor]] = {}
    kept = []
    for sl in chunks(x.shape[0], max_batch):
        images = model.decode(x[sl])
        rows_prompts = [prompts[i] for i in embed_index[sl].tolist()]
        for name, score in score_fn(images, rows_prompts).items():
            parts.setdefault(name, []).append(score.float().cpu())
        if sum(k.shape[0] for k in kept) < keep_images:
            kept.append(images.cpu())
    images = torch.cat(kept)[:keep_images] if kept else torch.empty(0)
    return {k: torch.cat(v) for k, v in parts.items()}, images


@torch.no_grad()
def rollout(
    model,
    plan: StepPlan,
    prompts: list[str],
    score_fn: ScoreFn,
    generator: torch.Generator | None = None,
    max_batch: int = 64,
    keep_images: int = 64,
    noise: NoiseSource | None = None,
) -> Rollout:
    """Execute `plan` for P prompts: sample, record the jumps, score every image the plan asks for.
    Every random draw comes from `noise` (flowrl.engine.noise), by default GeneratorNoise(generator)."""
    prompts = list(prompts)
    noise = noise_source(noise, generator)
    run = {"sde": _rollout_sde, "anchor": _rollout_anchor, "final": _rollout_final, "tree": _rollout_tree}[plan.trajectory]
    with cfg_scale(model, plan.cfg_scale):
        return run(model, plan, prompts, score_fn, noise, max_batch, keep_images)


@contextlib.contextmanager
def cfg_scale(model, scale: float | None):
    """Within the block a model that does classifier-free guidance (it has `do_cfg`: SD3.5) uses
    `scale` (the plan's cfg_scale: 1.0 = CFG off, DiffusionNFT and AWM); None or a model without
    CFG (FLUX's guidance is an embedding, the tiny model has none): unchanged."""
    if scale is None or not hasattr(model, "do_cfg"):
        yield
        return
    before = model.guidance_scale
    model.guidance_scale = float(scale)
    try:
        yield
    finally:
        model.guidance_scale = before


def _rollout_sde(model, plan: StepPlan, prompts, score_fn, noise: NoiseSource, max_batch, keep_images) -> Rollout:
    """G full trajectories per prompt, each step taken as the plan says (its jump's SDE, else
    ODE); P*G*T NFE in about ceil(P*G / max_batch) * T forwards, plus the intermediate
    completions when the plan asks for them."""
    g, t, p = plan.group_size, plan.num_steps, len(prompts)
    sigmas = plan.sigma_tensor()
    counter = _Counter()
    embeds = model.encode_prompts(prompts)
    row_embeds = embeds.repeat_interleave(g)
    x = initial_noise(model, p, g, plan.same_initial_noise, noise)
    n = x.shape[0]
    latents = torch.empty((n, t + 1, *x.shape[1:]), dtype=x.dtype, device=x.device)  # preallocated
    log_probs = torch.zeros((n, t), dtype=torch.float32, device=x.device)
    latents[:, 0] = x
    eps = noise.steps(model, range(t), p, g)  # [T, n, *latent], drawn up front: chunking cannot change samples
    means = {} if plan.objective.keeps_mean else None  # step i -> [n, *latent] transition mean
    jump_at = {j.start: idx for idx, j in enumerate(plan.jumps)}
    first = plan.first_step_rows(p)
    v = None
    for i in range(t):
        v = _velocities(model, latents[:, i], sigmas[i], row_embeds, max_batch, counter, first.get(jump_at.get(i)))
        out = plan.step_at(i)(latents[:, i], v, sigmas[i], sigmas[i + 1], noise=eps[i])
        latents[:, i + 1] = out.prev_sample
        log_probs[:, i] = out.log_prob
        if means is not None and i in jump_at:
            means[i] = out.mean.unsqueeze(1)
    row_prompt = torch.arange(p).repeat_interleave(g)
    jump_sets = [
        JumpSet(
            j.start,
            j.stop,
            j.step,
            latents[:, j.start],
            row_prompt,
            latents[:, j.stop].unsqueeze(1),
            log_probs[:, j.start : j.start + 1],
            None if means is None else means[j.start],
        )
        for j in plan.jumps
    ]
    # Scored images: the final latent (lane 0, schedule [T]: no NFE), or, for DanceGRPO, the x0
    # prediction of the last step (no last-step noise); then the ODE completion of each
    # intermediate latent x_i (lane 1 + i) when the plan asks for dense rewards.
    final = latents[:, t] if plan.score == "final" else predict_x0(latents[:, t - 1], v, sigmas[t - 1]).to(x.dtype)
    lanes = [(t,), *plan.intermediate_completions]
    x_all = torch.cat([final, *(latents[:, i] for i in range(len(lanes) - 1))])
    lane_of_row = torch.arange(len(lanes)).repeat_interleave(n)
    parts, images = ode_complete_and_score(
        model,
        x_all,
        row_prompt.repeat(len(lanes)),
        lanes,
        lane_of_row,
        sigmas,
        embeds,
        prompts,
        score_fn,
        max_batch,
        counter,
        keep_images=keep_images,
    )
    parts = {k: v.view(len(lanes), p, g) for k, v in parts.items()}
    if plan.intermediate_completions:  # [P, G, T+1]: R(x_0), ..., R(x_{T-1}), R(x_T) = the final reward
        parts = {k: torch.cat([v[1:], v[:1]]).permute(1, 2, 0) for k, v in parts.items()}
    else:
        parts = {k: v[0] for k, v in parts.items()}
    return Rollout(prompts, g, embeds, sigmas, jump_sets, parts, images, counter.nfe, counter.forwards)


def _rollout_anchor(model, plan: StepPlan, prompts, score_fn, noise: NoiseSource, max_batch, keep_images) -> Rollout:
    """One ODE anchor per prompt up to the last branch point; G jumps per branch from the anchor
    state (velocity shared); every (branch, completion) lane completed in one wavefront."""
    g, p = plan.group_size, len(prompts)
    sigmas = plan.sigma_tensor()
    counter = _Counter()
    embeds = model.encode_prompts(prompts)
    jump_at = {j.start: idx for idx, j in enumerate(plan.jumps)}
    last = max(jump_at)
    first = plan.first_step_rows(p)
    x = noise.initial(model, p, 1)  # one anchor noise per prompt
    anchor_x, anchor_v = {}, {}
    for i in range(last + 1):
        v = _velocities(model, x, sigmas[i], embeds, max_batch, counter, first.get(jump_at.get(i)))
        if i in jump_at:
            anchor_x[i], anchor_v[i] = x, v
        if i < last:
            x = ode_step(x, v, sigmas[i], sigmas[i + 1])
    eps = noise.steps(model, [b.jump.start for b in plan.branches], p, g)  # [B, P*G, *latent]
    row_prompt = torch.arange(p).repeat_interleave(g)
    jump_sets, lane_x, schedules = [], [], []
    for b, branch in enumerate(plan.branches):
        j = branch.jump
        xr, vr = anchor_x[j.start].repeat_interleave(g, 0), anchor_v[j.start].repeat_interleave(g, 0)
        out = j.step(xr, vr, sigmas[j.start], sigmas[j.stop], noise=eps[b])
        jump_sets.append(
            JumpSet(
                j.start,
                j.stop,
                j.step,
                anchor_x[j.start],
                torch.arange(p),
                out.prev_sample.view(p, g, *x.shape[1:]),
                out.log_prob.view(p, g),
            )
        )
        for c in branch.completions:
            lane_x.append(out.prev_sample)
            schedules.append(c)
    n_comp = len(plan.branches[0].completions)
    lane_of_row = torch.arange(len(schedules)).repeat_interleave(p * g)
    parts, images = ode_complete_and_score(
        model,
        torch.cat(lane_x),
        row_prompt.repeat(len(schedules)),
        schedules,
        lane_of_row,
        sigmas,
        embeds,
        prompts,
        score_fn,
        max_batch,
        counter,
        keep_images=keep_images,
    )
    parts = {k: v.view(len(plan.branches), n_comp, p, g).permute(2, 3, 0, 1) for k, v in parts.items()}  # [P, G, B, C]
    return Rollout(prompts, g, embeds, sigmas, jump_sets, parts, images, counter.nfe, counter.forwards)


def _score_samples(model, x, group_size, sigmas, embeds, prompts, score_fn, max_batch, counter, keep_images):
    """Decode and score final samples x [P*G, *latent] (prompt-major, no further steps): ({part: [P, G]}, images)."""
    p = len(prompts)
    parts, images = ode_complete_and_score(
        model,
        x.clone(),
        torch.arange(p).repeat_interleave(group_size),
        [(len(sigmas) - 1,)],
        torch.zeros(x.shape[0], dtype=torch.long),
        sigmas,
        embeds,
        prompts,
        score_fn,
        max_batch,
        counter,
        keep_images=keep_images,
    )
    return {k: v.view(p, group_size) for k, v in parts.items()}, images


def _rollout_final(model, plan: StepPlan, prompts, score_fn, noise: NoiseSource, max_batch, keep_images) -> Rollout:
    """G deterministic generations per prompt with the plan's sampler (P*G*T NFE), the final
    samples scored; keeps x0 and the re-noising noise of every (sample, level) term, drawn here
    from the noise source (NoiseSource.steps with the level columns as starts)."""
    from flowrl.sampling.dpm_solver import DPMSolver2

    g, t, p = plan.group_size, plan.num_steps, len(prompts)
    sigmas = plan.sigma_tensor()
    counter = _Counter()
    embeds = model.encode_prompts(prompts)
    row_embeds = embeds.repeat_interleave(g)
    x = initial_noise(model, p, g, plan.same_initial_noise, noise)
    solver = DPMSolver2(sigmas) if plan.sampler == "dpm2" else None
    for i in range(t):
        v = _velocities(model, x, sigmas[i], row_embeds, max_batch, counter)
        x = solver.step(x, v, i) if solver is not None else ode_step(x, v, sigmas[i], sigmas[i + 1])
    level_noise = noise.steps(model, range(plan.levels.count), p, g).transpose(0, 1)  # [n, K, *latent]
    parts, images = _score_samples(model, x, g, sigmas, embeds, prompts, score_fn, max_batch, counter, keep_images)
    return Rollout(prompts, g, embeds, sigmas, [], parts, images, counter.nfe, counter.forwards, x, level_noise)


def _rollout_tree(model, plan: StepPlan, prompts, score_fn, noise: NoiseSource, max_batch, keep_images) -> Rollout:
    """One tree per prompt (BranchGRPO): a frontier of P*n_i states, one batched velocity per step
    over it (sum_i P*n_i NFE); at a split step each state draws two successors from its one
    velocity, their noise multiplied by plan.split_noise_scale while the log-prob keeps the step's
    std (the step computes mean + std * noise and evaluates the density with std: pre-scaling the
    noise is BranchGRPO's rule). Children stay adjacent, so the frontier is in depth-first order
    and the leaves of prompt p are rows p*G .. p*G+G-1.
    Noise: x_1 = noise.initial(P, 1), one root per prompt; the step noise is noise.steps(0..T-1,
    P, G), [T, P*G, *latent], of which the child at depth i+1 that is the ancestor of leaves
    c*s .. (c+1)*s-1 (s = G / n_{i+1}) takes row p*G + c*s: a leaf's noise at the steps where it
    is its ancestors' first leaf (every step of leaf 0)."""
    g, t, p = plan.group_size, plan.num_steps, len(prompts)
    sigmas = plan.sigma_tensor()
    counter = _Counter()
    embeds = model.encode_prompts(prompts)
    widths = plan.tree_widths()
    x = noise.initial(model, p, 1)  # [P, *latent] the roots
    eps = noise.steps(model, range(t), p, g)  # [T, P*G, *latent], drawn up front
    first = plan.first_step_rows(p)
    row_prompt = torch.arange(p)
    jump_sets, v = [], None
    for i, jump in enumerate(plan.jumps):  # one jump per step (StepPlan checks it)
        k = widths[i + 1] // widths[i]
        v = _velocities(model, x, sigmas[i], embeds[row_prompt], max_batch, counter, first.get(i))
        e = eps[i].view(p, g, *x.shape[1:])[:, :: g // widths[i + 1]].reshape(-1, *x.shape[1:])
        if k > 1:
            e = e * plan.split_noise_scale
        xr, vr = (x, v) if k == 1 else (x.repeat_interleave(k, 0), v.repeat_interleave(k, 0))
        out = jump.step(xr, vr, sigmas[i], sigmas[i + 1], noise=e)
        mean = out.mean.view(x.shape[0], k, *x.shape[1:]) if plan.objective.keeps_mean else None
        x_next = out.prev_sample.view(x.shape[0], k, *x.shape[1:])
        jump_sets.append(JumpSet(i, i + 1, jump.step, x, row_prompt, x_next, out.log_prob.view(x.shape[0], k), mean))
        if i < t - 1:
            x, row_prompt = x_next.flatten(0, 1), row_prompt.repeat_interleave(k)
    # the scored leaves: the last latent, or (DanceGRPO's, BranchGRPO's) the x0 prediction of the
    # last step, x_{T-1} - sigma_{T-1} v, the same for a split's two children
    last = jump_sets[-1]
    if plan.score == "final":
        leaves = last.x_next.flatten(0, 1)
    else:
        x0 = predict_x0(last.x, v, sigmas[t - 1]).to(last.x.dtype)
        leaves = x0.repeat_interleave(last.x_next.shape[1], 0)
    parts, images = _score_samples(model, leaves, g, sigmas, embeds, prompts, score_fn, max_batch, counter, keep_images)
    return Rollout(prompts, g, embeds, sigmas, jump_sets, parts, images, counter.nfe, counter.forwards)


def jump_log_prob(model, rollout: Rollout, jump_set: JumpSet, rows: torch.Tensor):
    """Re-evaluate the jumps of start states `rows` under the current policy (the training
    forward, with grad): one velocity per start state, shared by its K successors, the step
    replayed with the settings it was sampled with. Returns the SDEStepOutput over the rows'
    len(rows)*K successors (log_prob [len(rows)*K])."""
    idx = rows.to(jump_set.x.device)
    x = jump_set.x[idx]
    k = jump_set.x_next.shape[1]
    sigma = rollout.sigmas[jump_set.start]
    v = model.velocity(x, sigma.expand(x.shape[0]).to(x), rollout.embeds[jump_set.embed_index[rows]])
    return jump_set.step(
        x.repeat_interleave(k, 0),
        v.repeat_interleave(k, 0),
        sigma,
        rollout.sigmas[jump_set.stop],
        prev_sample=jump_set.x_next[idx].flatten(0, 1),
    )
