"""The peer-structured loops: a step plan executed the way the official training scripts organise
their sampling and their update, and the batch sizes those scripts use. `make bench` times them
against flowrl's engine; tests import them (`from benchmarks.peers import peer_rollout`).

The loop structure follows the official DanceGRPO, Flow-GRPO, E-GRPO (VisualGRPO), G²RPO and
MixGRPO training scripts (files named in PEER_BATCHES); it is not their code. The engine's
primitives (`ode_step`, the plan's step settings, `policy_update`) are flowrl's own, so the peer
loops differ from the engine only in how the work is batched and ordered. Their noise comes from the
engine's noise source (flowrl.engine.noise), asked in the engine's order, so on the same weights and
seed they score the engine's images (to float rounding of other batchings; tests/benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowrl.engine.noise import NoiseSource, noise_source
from flowrl.engine.rollout import chunks
from flowrl.engine.update import policy_update
from flowrl.sampling.steps import ode_step


@dataclass(frozen=True)
class PeerBatches:
    rollout_batch: int  # rows per sampling forward
    update_batch: int  # rows per training forward
    source: str  # the official repository, file@commit (and line) the sizes come from


# Keyed by method config name (conf/method/<name>.yaml, whose first line names the same commits).
# The bench only: training never reads it.
PEER_BATCHES = {
    "awm": PeerBatches(
        6, 3, "scxue/advantage_weighted_matching config/dgx_awm.py@be51372: sample.train_batch_size 6, train.batch_size 3"
    ),
    "diffusionnft": PeerBatches(
        9,
        9,
        "NVlabs/DiffusionNFT config/nft.py@24af555: 9 images per GPU per batch (its bsz search, 8 GPUs), trained in those batches",
    ),
    "branchgrpo": PeerBatches(
        1,
        1,
        "Fredreic1849/BranchGRPO fastvideo/train_branchgrpo_flux.py@ffc3c90: one batch-1 forward per tree node (L426), one backward per edge",
    ),
    "dancegrpo": PeerBatches(
        1, 1, "XueZeyue/DanceGRPO fastvideo/train_grpo_flux.py@15cc71d: samples one at a time (L326), trains per sample"
    ),
    "densegrpo": PeerBatches(9, 9, "no public code: Flow-GRPO's batches (yifan123/flow_grpo config/grpo.py@ac4c86e)"),
    "egrpo": PeerBatches(
        1,
        1,
        "shengjun-zhang/VisualGRPO@ae619bf fastvideo/workers/sampler/flux_sampler.py: one forward per branch sample; "
        "fastvideo/trainer/grpo_trainer.py: one batch-1 forward per branch point",
    ),
    "tempflow_grpo": PeerBatches(
        1,
        1,
        "no public code: the branch samples one forward each, one batch-1 training forward per (sample, branch point), as G2RPO's train_g2rpo_hps.py",
    ),
    "grpo_guard": PeerBatches(
        9, 9, "yifan123/flow_grpo config/grpo_guard.py@9745241: Flow-GRPO's batches, 9 per GPU (16 GPUs x 9 x 8 batches)"
    ),
    "flowgrpo": PeerBatches(
        9, 9, "yifan123/flow_grpo config/grpo.py@ac4c86e: sample.batch_size / train.batch_size 9 per GPU (32-GPU SD3 configs)"
    ),
    "g2rpo": PeerBatches(
        1,
        1,
        "bcmi/Granular-GRPO fastvideo/train_g2rpo_hps.py@ef6ec9f: one forward per branch sample, "
        "one batch-1 forward per SDE step in training",
    ),
    "mixgrpo": PeerBatches(
        1, 1, "Tencent-Hunyuan/MixGRPO fastvideo/train_grpo_flux.py@e5cdd6a: samples one at a time, trains per sample"
    ),
}


def peer_batches(method: str) -> PeerBatches:
    if method not in PEER_BATCHES:
        raise KeyError(f"benchmarks.peers.PEER_BATCHES has no entry for method {method!r}: add the official script's batch sizes")
    return PEER_BATCHES[method]


def _ode_along(model, x, schedule: list[int], sigmas, embeds):
    for a, b in zip(schedule[:-1], schedule[1:]):
        v = model.velocity(x, sigmas[a].expand(x.shape[0]).to(x), embeds)
        x = ode_step(x, v, sigmas[a], sigmas[b])
    return x


@torch.no_grad()
def peer_rollout(
    model, plan, prompts: list[str], score_fn, generator=None, micro_batch: int = 2, noise: NoiseSource | None = None
) -> dict[str, torch.Tensor]:
    """The plan executed as the official scripts structure their sampling: one prompt at a time;
    the G samples of a group in micro-batches of `micro_batch` rows; each micro-batch runs step by
    step to its scored image(s) before the next starts. Full SDE trajectories: T stochastic steps,
    then (DenseGRPO) the ODE completion of every intermediate latent. Anchor plans: the ODE anchor
    once per prompt, then for each branch point, for each micro-batch: the jump, its velocity
    evaluated for every sample (the peers do not share it across the group), then each completion
    schedule. No forward mixes branch points or lanes.

    Spends exactly the papers' NFE: plan.budget()["nfe_per_prompt"] per prompt. Its noise is the
    engine's: `noise` (a NoiseSource), by default GeneratorNoise(generator) as the engine's, asked for
    the same draws in the same order (the initial noise, then every step's or branch's noise, all
    prompts at once), then read per prompt and micro-batch; so with the engine's seed it samples the
    engine's images, whatever the number of prompts and the micro-batch.
    Returns the rewards {part: [P, G, *plan.score_shape]} (the engine's layout)."""
    noise = noise_source(noise, generator)
    g, p_n = plan.group_size, len(prompts)
    if plan.trajectory in ("sde", "final"):  # the engine's draws (flowrl.engine.rollout), rows p*G + g
        x1 = noise.initial(model, p_n, 1 if plan.same_initial_noise else g)
        if plan.same_initial_noise:
            x1 = x1.repeat_interleave(g, dim=0)
        # [T, P*G, *latent]; "final": the level noise, drawn after sampling (nothing in between draws)
        eps = noise.steps(model, range(plan.num_steps if plan.trajectory == "sde" else plan.levels.count), p_n, g)
    elif plan.trajectory == "tree":
        x1 = noise.initial(model, p_n, 1)  # one root per prompt
        eps = noise.steps(model, range(plan.num_steps), p_n, g)  # [T, P*G, *latent]
    else:
        x1 = noise.initial(model, p_n, 1)  # one anchor per prompt
        eps = noise.steps(model, [b.jump.start for b in plan.branches], p_n, g)  # [B, P*G, *latent]
    parts: dict[str, torch.Tensor] = {}

    def record(p: int, rows: slice, where: tuple, x) -> None:
        for name, score in score_fn(model.decode(x), [prompts[p]] * x.shape[0]).items():
            shape = (len(prompts), plan.group_size, *plan.score_shape)
            parts.setdefault(name, torch.zeros(shape))[(p, rows, *where)] = score.float().cpu()

    for p in range(p_n):
        embeds = model.encode_prompts([prompts[p]])
        mine = slice(p * g, (p + 1) * g)  # this prompt's rows of the draws
        if plan.trajectory == "tree":
            _tree_prompt(model, plan, embeds, x1[p : p + 1], eps[:, mine], lambda rows, where, x, p=p: record(p, rows, where, x))
        elif plan.trajectory == "final":
            _final_prompt(model, plan, embeds, x1[mine], micro_batch, lambda rows, where, x, p=p: record(p, rows, where, x))
        elif plan.trajectory == "sde":
            _sde_prompt(
                model, plan, embeds, x1[mine], eps[:, mine], micro_batch, lambda rows, where, x, p=p: record(p, rows, where, x)
            )
        else:
            _anchor_prompt(
                model,
                plan,
                embeds,
                x1[p : p + 1],
                eps[:, mine],
                micro_batch,
                lambda rows, where, x, p=p: record(p, rows, where, x),
            )
    return parts


def _sde_prompt(model, plan, embeds, x1, eps, micro_batch: int, record) -> None:
    """One prompt's G full trajectories from x1 [G, *latent] with step noise eps [T, G, *latent],
    micro-batch by micro-batch."""
    t = plan.num_steps
    sigmas = plan.sigma_tensor()
    for rows in chunks(plan.group_size, micro_batch):
        n = rows.stop - rows.start
        e = embeds.repeat_interleave(n)
        x = x1[rows].clone()
        states = [x]  # what the peers keep for their training pass
        for i in range(t):
            v = model.velocity(x, sigmas[i].expand(n).to(x), e)
            out = plan.step_at(i)(x, v, sigmas[i], sigmas[i + 1], noise=eps[i, rows])
            last_x0 = x.float() - sigmas[i] * v.float()
            x = out.prev_sample
            states.append(x)
        dense = bool(plan.intermediate_completions)
        record(rows, (t,) if dense else (), x if plan.score == "final" else last_x0.to(x.dtype))
        for i, schedule in enumerate(plan.intermediate_completions):  # R(x_i) for every i
            record(rows, (i,), _ode_along(model, states[i], schedule, sigmas, e))


def _tree_prompt(model, plan, embeds, x1, eps, record) -> None:
    """One prompt's tree (BranchGRPO's run_tree_sample_step): node by node, one batch-1 forward per
    node, its children drawn from that one velocity (split noise scaled, the log-prob at the step's
    std); a child at depth i+1 heading leaves c*s .. takes the engine's noise row c*s. Leaves scored
    on the last step's x0 prediction (or the last latent)."""
    g = plan.group_size
    sigmas = plan.sigma_tensor()
    widths = plan.tree_widths()
    nodes = [x1]
    for i, jump in enumerate(plan.jumps):
        k = widths[i + 1] // widths[i]
        s = g // widths[i + 1]
        children, x0s = [], []
        for n, x in enumerate(nodes):
            v = model.velocity(x, sigmas[i].expand(1).to(x), embeds)
            for c in range(n * k, n * k + k):
                e = eps[i, c * s : c * s + 1] * (plan.split_noise_scale if k > 1 else 1.0)
                children.append(jump.step(x, v, sigmas[i], sigmas[i + 1], noise=e).prev_sample)
                x0s.append((x.float() - sigmas[i] * v.float()).to(x.dtype))
        nodes = children
    leaves = torch.cat(nodes if plan.score == "final" else x0s)  # [G, *latent]
    record(slice(0, g), (), leaves)


def _final_prompt(model, plan, embeds, x1, micro_batch: int, record) -> None:
    """One prompt's G deterministic generations from x1 [G, *latent] with the plan's sampler,
    micro-batch by micro-batch (DiffusionNFT, AWM)."""
    from flowrl.sampling.dpm_solver import DPMSolver2

    sigmas = plan.sigma_tensor()
    for rows in chunks(plan.group_size, micro_batch):
        n = rows.stop - rows.start
        e = embeds.repeat_interleave(n)
        x = x1[rows].clone()
        solver = DPMSolver2(sigmas) if plan.sampler == "dpm2" else None
        for i in range(plan.num_steps):
            v = model.velocity(x, sigmas[i].expand(n).to(x), e)
            x = solver.step(x, v, i) if solver is not None else ode_step(x, v, sigmas[i], sigmas[i + 1])
        record(rows, (), x)


def _anchor_prompt(model, plan, embeds, x1, eps, micro_batch: int, record) -> None:
    """One prompt's ODE anchor from x1 [1, *latent], then each branch point's G jumps (noise
    eps [B, G, *latent]) and their completions."""
    g = plan.group_size
    sigmas = plan.sigma_tensor()
    last = plan.anchor_nfe()
    starts = {b.jump.start for b in plan.branches}
    x = x1
    anchor = {}
    for i in range(last + 1):
        if i in starts:
            anchor[i] = x
        if i < last:
            x = ode_step(x, model.velocity(x, sigmas[i].expand(1).to(x), embeds), sigmas[i], sigmas[i + 1])
    for b, branch in enumerate(plan.branches):
        k, s = branch.jump.start, branch.jump.stop
        for rows in chunks(g, micro_batch):
            n = rows.stop - rows.start
            e = embeds.repeat_interleave(n)
            xk = anchor[k].expand(n, *x.shape[1:]).clone()
            v = model.velocity(xk, sigmas[k].expand(n).to(xk), e)  # per sample, as the peers
            out = branch.jump.step(xk, v, sigmas[k], sigmas[s], noise=eps[b, rows])
            for c, schedule in enumerate(branch.completions):
                record(rows, (b, c), _ode_along(model, out.prev_sample, schedule, sigmas, e))


def peer_update(model, plan, rollout, advantages, step_fn, loss, update_batch: int, reference_mean=None, views=None):
    """The peers' update on a rollout: a training forward with grad in their train batch size
    (`update_batch` rows), their optimizer-step placement (the plan's), the same GRPO loss.

    This is flowrl's `policy_update` with max_batch = update_batch, so it shares one forward per
    start state among the successors leaving it, as the engine does. For full SDE trajectories
    that is the peers' work exactly (one successor per start state). For anchor plans (E-GRPO,
    G²RPO) the official trainers run one batch-1 forward per (sample, branch point), G per branch
    point where this runs one: their update cost is understated here, not overstated."""
    return policy_update(
        model, plan, rollout, advantages, step_fn, loss, update_batch, reference_mean=reference_mean, views=views
    )


def engine_shared_evals(plan, num_prompts: int) -> int:
    """Model evaluations the papers count but the engine does not spend. An anchor plan's G jumps
    leaving one anchor state share their velocity: the papers count G jump evaluations per branch
    point, the engine evaluates the anchor velocity at each branch point once per prompt, all but
    the last of which are anchor steps the papers already count. Full SDE plans share nothing."""
    if plan.trajectory != "anchor":  # a tree's split children share their parent's forward in both
        return 0
    return num_prompts * (plan.group_size * len(plan.branches) - 1)
