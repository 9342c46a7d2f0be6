"""The policy update: the one trained-jump loop. The LightningModule, the benchmark and the tests
all call `policy_update`.

    for each optimizer step of plan.optimizer_steps(P):        # where the plan puts them
        for each (jump, rows) block of the step:                 # the trained transitions
            for each chunk of the rows:                          # the rollout's chunks (ratio 1)
                forward with grad -> log-probs -> GRPO loss (+ KL) -> backward(loss * share)
        grad clip, optimizer step                                # step_fn

Numerical guard: a non-finite log-prob or loss in an optimizer step's chunks skips that whole
step (its gradients are dropped: `step_fn("log_prob")`); `step_fn(None)` applies the step and may
itself refuse non-finite gradients. Nothing non-finite reaches the weights.

Every optimizer step's loss is the mean over its terms (one per trained (sample, jump)):
DanceGRPO's loss / (gradient_accumulation_steps x trained steps), E-GRPO's and G²RPO's mean
over the G samples of one timestep, Flow-GRPO's accumulation over minibatches and timesteps
(accelerate divides by the accumulation count) all reduce to it. Later optimizer steps of one
iteration see weights the earlier ones changed: their ratio leaves 1 and the clip binds, as in
the official scripts. Two additions for "tree" plans (BranchGRPO): a block may train only some
successors of its rows (TermBlock.successors, step_every "edges"), and a plan with normalizer
"fixed" divides every step's term sum by plan.loss_denominator() instead of its term count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from flowrl.contract.objectives import AdvantageWeightedMatching, ClippedRatio, NegativeAware
from flowrl.engine.loss import grpo_loss
from flowrl.engine.objectives import advantage_weighted_terms, negative_aware_terms, ratio_norm_log_ratio
from flowrl.engine.rollout import Rollout, cfg_scale, chunks, jump_log_prob

KL_FORMS = ("official", "transition")


@dataclass(frozen=True)
class LossConfig:
    clip_eps: float = 1e-4
    adv_clip: float = 5.0
    kl_beta: float = 0.0
    # "official": mean((mu - mu_ref)^2) / (2 std_dev_t^2), as flow_grpo's train_sd3.py (beta 0.04 /
    # 0.01 were tuned on it); "transition": divided by the transition variance std_dev_t^2 |dt|,
    # the exact KL of the two Gaussian steps (1/|dt| = 4-28x stronger at T 10).
    kl_form: str = "official"

    def __post_init__(self):
        if self.kl_form not in KL_FORMS:
            raise ValueError(f"kl_form must be one of {KL_FORMS}, got {self.kl_form!r}")


@dataclass
class UpdateStats:
    """What one policy update did: its optimizer steps and the loss metrics of every chunk."""

    optimizer_steps: int = 0  # applied
    skipped: list[str] = field(default_factory=list)  # the cause of each skipped optimizer step
    terms: int = 0  # trained (sample, jump) terms
    rows: int = 0  # start states through a training forward / backward
    metrics: list[dict] = field(default_factory=list)  # one per chunk, in order
    first_step_ratio_mean: float | None = None  # the mean ratio of the first optimizer step's terms

    def mean_metrics(self) -> dict[str, float]:
        if not self.metrics:
            return {}
        return {k: sum(d[k] for d in self.metrics) / len(self.metrics) for k in self.metrics[0]}


def policy_update(
    model,
    plan,
    rollout: Rollout,
    advantages: list[torch.Tensor],
    step_fn: Callable[[str | None], str | None],
    loss: LossConfig,
    max_batch: int = 64,
    backward: Callable[[torch.Tensor], None] | None = None,
    reference_mean: Callable | None = None,
    views: Callable | None = None,
) -> UpdateStats:
    """Train the plan's jumps of one rollout. `advantages`: one [M_j, K_j] tensor per jump (the
    step scheduler's output, in the jump sets' layout). `step_fn(None)` clips and applies the
    accumulated gradients and zeroes them (the caller owns the optimizer, grad clipping, EMA), or
    returns the cause why it did not (non-finite gradients); `step_fn(cause)` must drop them;
    `step_fn("empty")`: this step had no term (it returns None if it stepped anyway: other ranks).
    `backward(loss)` defaults to loss.backward() (Lightning passes manual_backward).
    `reference_mean(rollout, jump_set, rows)` gives the reference policy's transition mean for the KL term
    (needed when loss.kl_beta > 0). The objective is the plan's (`plan.objective`): the clipped
    ratio here, a forward-process objective in `_forward_process_update`, which reads the no-grad
    velocities `views(name, x, sigma, embeds)` of the objective's views (the reference, the plan's
    policy copies)."""
    backward = backward or torch.Tensor.backward
    if not isinstance(plan.objective, ClippedRatio):
        return _forward_process_update(model, plan, rollout, advantages, step_fn, max_batch, backward, views)
    _check_inputs(rollout, advantages, loss, reference_mean)
    keep = _kept_rows(plan, advantages)  # [M] bool per start state, or None: every term counts
    stats = UpdateStats()
    # with the zero-advantage filter the kept rows are split into the steps (flow_grpo filters, then
    # batches); where nothing is dropped these are the plan's own steps, the rollout's chunks
    steps = plan.optimizer_steps(rollout.num_prompts, None if keep is None or bool(keep.all()) else keep)
    fixed = plan.loss_denominator(rollout.num_prompts)  # "fixed": sum / this, else the step's mean
    for o, step in enumerate(steps):
        k_of = {b.jump: rollout.jump_sets[b.jump].x_next.shape[1] for b in step}
        n_terms = sum(_block_terms(keep, b, k_of[b.jump]) for b in step)
        first_ratios, bad = [], None
        for block in step:
            js = rollout.jump_sets[block.jump]
            adv = advantages[block.jump].to(js.log_prob.device)  # [M, K]
            for sl in chunks(block.rows.numel(), max_batch):  # the rollout's chunks of these rows
                rows = block.rows[sl]
                kept = _kept(keep, rows).repeat_interleave(k_of[block.jump])  # [rows * K]
                if block.successors is not None:  # an edge block: only these successors of the rows
                    kept = kept & block.successors[sl].flatten()
                if bad is not None or not kept.any():
                    continue
                weight = plan.jumps[block.jump].loss_weight
                res, bad = _chunk_loss(model, plan, rollout, js, rows, kept, adv, loss, reference_mean, weight)
                if bad is not None:
                    continue
                n = int(kept.sum())
                backward(res.loss * (n / n_terms if fixed is None else n / fixed))
                stats.metrics.append(res.metrics())
                stats.rows += rows.numel()
                if o == 0:
                    first_ratios.append(float(res.ratio_mean) * n)
        _step(stats, step_fn, bad, n_terms)
        if o == 0 and n_terms and first_ratios:
            stats.first_step_ratio_mean = sum(first_ratios) / n_terms
    return stats


def _step(stats: UpdateStats, step_fn, bad: str | None, n_terms: int) -> None:
    """The optimizer step after its terms: applied, or dropped for `bad` (a non-finite value), or
    "empty" (no term here: every row filtered; under DDP the other ranks may still step)."""
    cause = step_fn(bad if bad is not None else "empty" if n_terms == 0 else None)
    if cause is None:
        stats.optimizer_steps += 1
    elif cause != "empty":
        stats.skipped.append(cause)
    stats.terms += n_terms


def _check_inputs(rollout: Rollout, advantages: list[torch.Tensor], loss: LossConfig, reference_mean) -> None:
    if len(advantages) != len(rollout.jump_sets):
        raise ValueError(f"{len(advantages)} advantage tensors for {len(rollout.jump_sets)} jumps")
    for j, (a, js) in enumerate(zip(advantages, rollout.jump_sets)):
        if tuple(a.shape) != tuple(js.log_prob.shape):
            raise ValueError(f"jump {j}: advantages {tuple(a.shape)} do not match the jump set {tuple(js.log_prob.shape)}")
    if loss.kl_beta > 0 and reference_mean is None:
        raise ValueError("kl_beta > 0 needs reference_mean")


def _chunk_loss(
    model,
    plan,
    rollout: Rollout,
    js,
    rows: torch.Tensor,
    kept: torch.Tensor,
    adv,
    loss: LossConfig,
    reference_mean,
    weight: float,
):
    """(GRPO loss of one chunk's kept terms, None), or (None, cause) for a non-finite log-prob or
    loss. The whole chunk goes through the forward: the rollout's batch, so the ratio is 1.
    `weight`: the jump's loss_weight on the policy terms."""
    idx = rows.to(js.log_prob.device)
    out = jump_log_prob(model, rollout, js, rows)
    if not torch.isfinite(out.log_prob).all():
        return None, "log_prob"
    new_lp, old_lp = out.log_prob[kept], js.log_prob[idx].flatten()[kept]
    if plan.objective.ratio == "ratio_norm":  # GRPO-Guard: exp(rho) with rho = mean_d(eps * delta)
        new_lp = ratio_norm_log_ratio(new_lp, old_lp, out.mean[kept], js.mean[idx].flatten(0, 1)[kept], _per_term(out.std, kept))
        old_lp = torch.zeros_like(new_lp)
    kl = {}
    if loss.kl_beta > 0:
        ref = reference_mean(rollout, js, rows)
        scale = out.std_dev_t if loss.kl_form == "official" else out.std
        if scale.ndim:  # per-row coefficients follow the kept rows
            scale = scale[kept]
        kl = {"mean": out.mean[kept], "ref_mean": ref[kept], "std": scale}
    res = grpo_loss(
        new_lp,
        old_lp,
        adv[idx].flatten()[kept],
        loss.clip_eps,
        adv_clip=loss.adv_clip,
        kl_beta=loss.kl_beta,
        weight=weight,
        **kl,
    )
    if not torch.isfinite(res.loss):
        return None, "loss"
    return res, None


def _kept_rows(plan, advantages: list[torch.Tensor]) -> torch.Tensor | None:
    """flow_grpo's filter (plan.update.drop_zero_advantage): a sample whose advantage is exactly 0
    at every jump leaves the update. None when the plan does not filter."""
    if not plan.update.drop_zero_advantage:
        return None
    if plan.trajectory != "sde":
        raise ValueError("drop_zero_advantage filters samples of full trajectories ('sde' plans)")
    return torch.stack([a.flatten().cpu() for a in advantages], dim=1).ne(0).any(dim=1)  # [P*G]


def _block_terms(keep: torch.Tensor | None, block, k: int) -> int:
    """The terms of one (jump, rows) block: its kept rows x K, or its kept rows' listed successors."""
    if block.successors is None:
        return int(_kept(keep, block.rows).sum()) * k
    return int((_kept(keep, block.rows).unsqueeze(1) & block.successors).sum())


def _kept(keep: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    return torch.ones(rows.numel(), dtype=torch.bool) if keep is None else keep[rows.cpu()]


def _per_term(t: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """A step output's broadcastable per-row value (std) -> the kept terms' ([N]), or the scalar."""
    if t.numel() == 1:
        return t.reshape(())
    return t.reshape(t.shape[0], -1)[:, 0][kept]


# ---- the forward-process family ("final" plans) --------------------------------------------------


def _terms(objective, v, views_out: dict, x_t, x0, noise, sigma, adv):
    """The objective's [N] terms of one chunk, dispatched on the objective's type."""
    if isinstance(objective, NegativeAware):
        return negative_aware_terms(
            v,
            views_out[objective.old],
            x_t,
            x0,
            sigma,
            adv,
            objective.beta,
            objective.adv_clip,
            objective.kl_beta,
            views_out.get("reference"),
        )
    if isinstance(objective, AdvantageWeightedMatching):
        return advantage_weighted_terms(
            v,
            noise,
            x0,
            sigma,
            adv,
            objective.adv_scale,
            objective.power,
            objective.kl_ref_beta,
            views_out.get("reference"),
            objective.kl_ema_beta,
            views_out.get(objective.ema),
        )
    raise TypeError(f"no forward-process terms for objective {type(objective).__name__}")


def _forward_process_update(model, plan, rollout: Rollout, advantages, step_fn, max_batch, backward, views) -> UpdateStats:
    """The (sample, level) terms of a "final" plan: each sample's x0 re-noised at its levels'
    sigmas with the rollout's noise, x_sigma = (1 - sigma) x0 + sigma eps; one forward with grad
    per term, the objective's views without; every optimizer step the mean of its terms."""
    objective = plan.objective
    if rollout.final is None or rollout.level_noise is None:
        raise ValueError("a forward-process update needs the rollout's final samples and level noise ('final' plans)")
    if objective.views and views is None:
        raise ValueError(f"objective {type(objective).__name__} reads the views {objective.views}: give policy_update views=")
    if len(advantages) != 1 or advantages[0].shape != (rollout.final.shape[0], 1):
        raise ValueError(f"a 'final' plan takes one advantage per sample, [{rollout.final.shape[0]}, 1]")
    device = rollout.final.device
    adv = advantages[0].flatten().to(device)  # [P*G], clamped by the step scheduler
    levels = plan.level_table(rollout.num_prompts)  # [P*G, K] sigma indices
    row_prompt = torch.arange(rollout.num_prompts).repeat_interleave(rollout.group_size)
    stats = UpdateStats()
    with cfg_scale(model, plan.cfg_scale):
        for step in plan.optimizer_steps(rollout.num_prompts):
            n_terms = sum(b.rows.numel() for b in step)
            bad = None
            for block in step:  # block.jump: the level column
                for sl in chunks(block.rows.numel(), max_batch):
                    if bad is not None:
                        break
                    rows = block.rows[sl]
                    idx = rows.to(device)
                    sigma = rollout.sigmas[levels[rows, block.jump]].to(device)  # [N]
                    x0, noise = rollout.final[idx].float(), rollout.level_noise[idx, block.jump].float()
                    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
                    x_t = ((1 - s) * x0 + s * noise).to(rollout.final.dtype)
                    embeds = rollout.embeds[row_prompt[rows]]
                    # the views first: a view may swap other weights into the model (a policy copy),
                    # which must not happen between the forward with grad and its backward
                    with torch.no_grad():
                        seen = {name: views(name, x_t, sigma.to(x_t), embeds) for name in objective.views}
                    v = model.velocity(x_t, sigma.to(x_t), embeds)
                    res = _terms(objective, v, seen, x_t, x0, noise, sigma, adv[idx])
                    if not torch.isfinite(res.loss).all():
                        bad = "loss"
                        break
                    backward(res.loss.sum() / n_terms)
                    stats.metrics.append(res.metrics())
                    stats.rows += rows.numel()
            _step(stats, step_fn, bad, n_terms)
    return stats
