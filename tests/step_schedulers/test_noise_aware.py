"""TempFlow-GRPO (`noise_aware`, method=tempflow_grpo): hand-worked advantages, the loss weight's
effect on the gradient, the noise-aware weights on the SD3 T 10 grid, the plan's structure and NFE,
the knobs, and a parity test: a reference update loop with its own Flow-GRPO step math (written
out here, nothing of flowrl's sampling / update imported into it) replays flowrl's rollout on the
tiny model and must give the same advantages, losses, optimizer-step count and weights.

No official code exists (Shredded-Pork/TempFlow-GRPO@afe6d33: README + paper.pdf); the reference
loop is the method as conf/method/tempflow_grpo.yaml states it: per (prompt, branch point) group
advantages, the clipped ratio of each branch's single SDE step times its noise-aware weight, the
KL unweighted, Flow-GRPO's optimizer steps (2 per rollout over shuffled shares of the prompts)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from flowrl.step_schedulers.noise_aware import NoiseAwareKnobs, NoiseAwareStepScheduler

# The SD3 pipeline's grid at T 10, shift 3 (diffusers FlowMatchEulerDiscreteScheduler, as flow_grpo)
SD3_T10 = [1.0, 0.960129, 0.913349, 0.857692, 0.790368, 0.707278, 0.602151, 0.464876, 0.278049, 0.008929, 0.0]


# ---- hand-worked -------------------------------------------------------------------------------
def test_group_advantages_hand_worked():
    # G 4 branches at one branch point, rewards (1, 3, 2, 6): mean 3, unbiased std
    # sqrt((4 + 0 + 1 + 9) / 3) = 2.160247 -> (-2, 0, -1, 3) / 2.160247
    sched = NoiseAwareStepScheduler(num_steps=10, group_size=4, branch_points=[2])
    plan = sched.plan(0)
    adv = sched.advantages(torch.tensor([1.0, 3.0, 2.0, 6.0]).view(1, 4, 1, 1), plan)
    assert len(adv) == 1 and adv[0].shape == (1, 4)  # the anchor jump set: [P, G]
    torch.testing.assert_close(adv[0][0], torch.tensor([-0.92582, 0.0, -0.46291, 1.38873]), rtol=0, atol=1e-5)


def test_loss_weight_multiplies_the_policy_gradient_hand_worked():
    # At ratio 1 (log_prob == old) the clip is inactive: loss = -w mean(A) = 0 whatever w (the
    # advantages of one group sum to 0), but d loss / d log_prob_i = -w A_i / N.
    from flowrl.engine.loss import grpo_loss

    adv = torch.tensor([-0.92582, 0.0, -0.46291, 1.38873])
    grads, losses = {}, {}
    for w in (1.0, 1.5766):
        lp = torch.zeros(4, requires_grad=True)
        out = grpo_loss(lp, torch.zeros(4), adv, clip_eps=1e-4, weight=w)
        out.loss.backward()
        grads[w], losses[w] = lp.grad.clone(), float(out.loss.detach())
    assert losses[1.0] == pytest.approx(0.0, abs=1e-7) and losses[1.5766] == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(grads[1.0], torch.tensor([0.231455, 0.0, 0.1157275, -0.3471825]), rtol=1e-5, atol=0)
    torch.testing.assert_close(grads[1.5766], 1.5766 * grads[1.0], rtol=1e-6, atol=0)


def test_noise_aware_weights_on_the_sd3_t10_grid_hand_worked():
    # s_k = std_dev_t(k) sqrt(sigma_k - sigma_{k+1}), std_dev_t = a sqrt(sigma / (1 - sigma)),
    # a 0.7, at sigma = 1 the denominator 1 - sigmas[1] (flow_grpo):
    #   k = 0: 0.7 sqrt(1 / 0.039871) sqrt(0.039871) = 0.7 exactly
    #   k = 1: 0.7 sqrt(0.960129 / 0.039871) sqrt(0.046780) = 0.7 * 4.90723 * 0.216287 = 0.74296
    #   ... k = 8: 0.7 sqrt(0.278049 / 0.721951) sqrt(0.269120) = 0.7 * 0.620595 * 0.518768 = 0.22536
    #   k = 9 (not a branch point by default): 0.7 sqrt(0.008929 / 0.991071) * 0.094494 = 0.00628
    # "all" = steps 0..8; normalised: w_k = s_k / mean(s_0..s_8), mean = 3.99604 / 9 = 0.444004
    sched = NoiseAwareStepScheduler()  # the yaml's defaults: T 10, SD3 grid, a 0.7, all, normalised
    assert list(sched.sigmas) == pytest.approx(SD3_T10, abs=1e-6)
    by_hand = []
    for k in range(10):
        s, s_next = SD3_T10[k], SD3_T10[k + 1]
        denom = 1 - (SD3_T10[1] if s >= 1 else s)
        by_hand.append(0.7 * math.sqrt(s / denom) * math.sqrt(s - s_next))
    s = [0.7, 0.74296, 0.53615, 0.44590, 0.39179, 0.35280, 0.31907, 0.28201, 0.22536]
    assert by_hand[:9] == pytest.approx(s, abs=1e-5) and by_hand[9] == pytest.approx(0.00628, abs=1e-5)
    assert sum(s) / 9 == pytest.approx(0.444004, abs=1e-6)
    w = [1.57656, 1.67332, 1.20753, 1.00427, 0.88240, 0.79459, 0.71862, 0.63515, 0.50756]
    assert [x / 0.444004 for x in s] == pytest.approx(w, abs=1e-5)

    plan = sched.plan(0)
    assert [(j.start, j.stop) for j in plan.jumps] == [(k, k + 1) for k in range(9)]
    assert [j.loss_weight for j in plan.jumps] == pytest.approx(w, abs=1e-4)
    assert sum(j.loss_weight for j in plan.jumps) / 9 == pytest.approx(1.0, abs=1e-12)
    raw = NoiseAwareStepScheduler(weighting="noise_std").plan(0)
    assert [j.loss_weight for j in raw.jumps] == pytest.approx(s, abs=2e-5)
    assert all(j.loss_weight == 1.0 for j in NoiseAwareStepScheduler(weighting="none").plan(0).jumps)
    # an explicit subset: normalised over ITS branch points (0, 4, 8): mean (0.7 + 0.39179 + 0.22536) / 3
    # = 0.439050 -> (1.59435, 0.89236, 0.51329)
    sub = NoiseAwareStepScheduler(branch_points=[8, 0, 4]).plan(0)
    assert [j.start for j in sub.jumps] == [0, 4, 8]
    assert [j.loss_weight for j in sub.jumps] == pytest.approx([1.59435, 0.89236, 0.51329], abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "nfe"),
    [
        # anchor ODE steps to the last branch point + G * sum_k (1 + T - k - 1)
        (dict(num_steps=10, group_size=24), 8 + 24 * sum(1 + 10 - k - 1 for k in range(9))),  # 8 + 24 * 54 = 1,304
        (dict(num_steps=16, group_size=12), 14 + 12 * sum(1 + 16 - k - 1 for k in range(15))),  # 14 + 12 * 135 = 1,634
        (dict(num_steps=10, group_size=4, branch_points=[0, 3, 5]), 5 + 4 * (10 + 7 + 5)),  # 93
    ],
)
def test_plan_structure_and_nfe(kwargs, nfe):
    sched = NoiseAwareStepScheduler(**kwargs)
    plan = sched.plan(0)
    t = plan.num_steps
    assert plan.trajectory == "anchor" and plan.same_initial_noise  # the seed group: one anchor noise per prompt
    for b in plan.branches:  # one SDE step, then the full-resolution ODE completion from where it lands
        assert b.jump.stop == b.jump.start + 1 and b.jump.step.kind == "sde" and b.jump.step.noise_level == 0.7
        assert b.completions == (tuple(range(b.jump.stop, t + 1)),)
    budget = plan.budget()
    assert budget["nfe_per_prompt"] == nfe
    assert budget["reward_queries_per_prompt"] == budget["trained_steps_per_prompt"] == kwargs["group_size"] * len(plan.jumps)
    steps = plan.optimizer_steps(2)  # Flow-GRPO's 2 per rollout: each one prompt's anchor x every branch point
    assert len(steps) == 2 and all(len(s) == len(plan.jumps) and all(b.rows.numel() == 1 for b in s) for s in steps)


def test_knobs_and_constructor_refuse_what_cannot_run():
    from flowrl.step_schedulers.base import KnobError

    method, train = {"num_steps": 10}, {"prompts_per_step": 2}
    ok = dict(weighting="noise_std_normalized", sde="sde", step_every="rollout", optimizer_steps_per_rollout=2)
    NoiseAwareKnobs(branch_points="all", **ok).check(method, train)
    NoiseAwareKnobs(branch_points=[0, 9], **ok).check(method, train)
    for bad in ([0, 10], [1, 1]):
        with pytest.raises(KnobError, match="method.branch_points"):
            NoiseAwareKnobs(branch_points=bad, **ok).check(method, train)
    with pytest.raises(KnobError, match="method.optimizer_steps_per_rollout"):
        NoiseAwareKnobs(branch_points="all", **ok).check(method, {"prompts_per_step": 1})
    with pytest.raises(ValueError):
        NoiseAwareKnobs(branch_points="some", **ok)
    with pytest.raises(ValueError, match="branch_points"):
        NoiseAwareStepScheduler(branch_points=[10])
    with pytest.raises(ValueError, match="noise_level"):
        NoiseAwareStepScheduler(noise_level=0.0)


# ---- parity: a reference update loop replaying flowrl's rollout ---------------------------------
PROMPTS = ["a red circle on a blue background", "a white square on a green background"]
# SGD: a loss-scale or weight error shows 1:1 in the weights (Adam's first step would normalise it
# away); large enough that some of the second optimizer step's ratios leave the 1e-4 clip band
# (measured: clip fractions 0.25 / 0.75 / 0.25 of its three branch points), so the clip selects
# per term which weighted terms keep their gradient. Measured error 0.09 of the bound; the
# unweighted control ~950x beyond it.
LR = 0.2
# Weight-update tolerance, relative to the largest weight change, plus the fp32 rounding of each SGD
# step (half an ulp of |w| per step and run), as tests/engine/test_parity.py bounds it
REL_TOL = 1e-4
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@pytest.fixture
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _score(images, prompts):
    return {"bright": images.mean(dim=(1, 2, 3))}


def _flow_grpo_step(x, v, sigmas, k, a, x_next):
    """flow_grpo sd3_sde_with_logprob.py, written out: (log-prob [B] averaged over dims, mean, std_dev_t)."""
    s, s_next = float(sigmas[k]), float(sigmas[k + 1])
    std_dev_t = a * math.sqrt(s / (1 - (float(sigmas[1]) if s >= 1 else s)))
    dt = s_next - s
    mean = x * (1 + std_dev_t**2 * dt / (2 * s)) + v * (1 + std_dev_t**2 * (1 - s) / (2 * s)) * dt
    std = std_dev_t * math.sqrt(-dt)
    lp = -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - _LOG_SQRT_2PI
    return lp.flatten(1).mean(1), mean, std_dev_t


def _reference(model, ref_model, ro, plan, cfg, unweighted=False):
    """The method's update written out: advantages per (prompt, branch point) group; Flow-GRPO's
    2 optimizer steps over the shuffled prompts (the plan's frozen permutation); each step's loss =
    mean over its terms of w_k max(-A r, -A clip(r)) + beta mean of the KL (unweighted)."""
    a, g = cfg.noise_level, plan.group_size
    sig = ro.sigmas
    p = ro.num_prompts
    ks = [js.start for js in ro.jump_sets]
    # weights by hand: s_k / mean(s) over the branch points
    s = [
        a * math.sqrt(float(sig[k]) / (1 - (float(sig[1]) if k == 0 else float(sig[k])))) * math.sqrt(float(sig[k] - sig[k + 1]))
        for k in ks
    ]
    w = [1.0] * len(s) if unweighted else [x / (sum(s) / len(s)) for x in s]
    # advantages: rewards [P, G, B, 1] -> per (p, b): (r - mean) / (unbiased std + 1e-8), clamped
    r = ro.parts["bright"][..., 0]
    adv = torch.zeros(p, g, len(ks))
    for pi in range(p):
        for b in range(len(ks)):
            grp = r[pi, :, b]
            adv[pi, :, b] = ((grp - grp.mean()) / (grp.std() + 1e-8)).clamp(-cfg.adv_clip, cfg.adv_clip)
    opt = torch.optim.SGD(list(model.transformer.parameters()), lr=LR)
    perm = torch.randperm(p, generator=torch.Generator().manual_seed(plan.update.seed + 1))
    losses = []
    for share in perm.tensor_split(cfg.optimizer_steps_per_rollout):
        n_terms = share.numel() * len(ks) * g
        total = 0.0
        for pi in sorted(share.tolist()):
            emb = ro.embeds[torch.tensor([pi])]
            for b, k in enumerate(ks):
                js = ro.jump_sets[b]
                x = js.x[pi : pi + 1]  # the anchor state, shared by the G branches
                v = model.velocity(x, sig[k].reshape(1), emb)
                lp, mean, std_dev_t = _flow_grpo_step(x.repeat(g, 1, 1), v.repeat(g, 1, 1), sig, k, a, js.x_next[pi])
                ratio = torch.exp(lp - js.log_prob[pi])
                ppo = torch.maximum(-adv[pi, :, b] * ratio, -adv[pi, :, b] * ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps))
                with torch.no_grad():
                    v_ref = ref_model.velocity(x, sig[k].reshape(1), emb)
                    _, mean_ref, _ = _flow_grpo_step(x.repeat(g, 1, 1), v_ref.repeat(g, 1, 1), sig, k, a, js.x_next[pi])
                kl = ((mean - mean_ref) ** 2).flatten(1).mean(1) / (2 * std_dev_t**2)
                term = (w[b] * ppo).sum() + cfg.kl_beta * kl.sum()
                (term / n_terms).backward()
                total += float(term) / n_terms
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return adv, losses


def _flat(model):
    return torch.nn.utils.parameters_to_vector(model.transformer.parameters()).detach().clone()


def test_tempflow_grpo_parity(make_cfg, tiny_model, _one_thread):
    from hydra.utils import instantiate

    from flowrl.engine.rollout import jump_log_prob, rollout
    from flowrl.engine.update import LossConfig, policy_update

    # T 4, G 4, branch points "all" = 0, 1, 2, 2 prompts: Flow-GRPO's 2 optimizer steps, each one
    # prompt's anchor x 3 branch points x 4 branches = 12 terms. KL beta 0.04 (the yaml) against a
    # drifted reference (with reference == policy the KL gradient of the first step is exactly 0).
    cfg = make_cfg("method=tempflow_grpo", "method.num_steps=4", "method.group_size=4").method
    sched = instantiate(cfg.step_scheduler)
    plan = sched.plan(0, torch.Generator().manual_seed(0))
    assert [j.start for j in plan.jumps] == [0, 1, 2] and cfg.kl_beta > 0
    assert len({j.loss_weight for j in plan.jumps}) == 3  # the weights differ: they matter below

    model = copy.deepcopy(tiny_model).eval()
    model.precision = "fp32"
    model.requires_grad_(False)
    model.transformer.requires_grad_(True)
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for prm in ref_model.transformer.parameters():
            prm.add_(0.02 * torch.randn(prm.shape, generator=g))
    w0 = _flat(model)
    ro = rollout(model, plan, PROMPTS, _score, torch.Generator().manual_seed(0), max_batch=64)
    assert ro.parts["bright"].shape == (2, 4, 3, 1)
    assert ro.jump_sets[0].x.shape[0] == 2 and ro.jump_sets[0].x_next.shape[:2] == (2, 4)  # one anchor state per prompt
    adv = sched.advantages(ro.parts["bright"], plan, PROMPTS)

    # (a) flowrl
    policy = copy.deepcopy(model).train()
    opt = torch.optim.SGD(list(policy.transformer.parameters()), lr=LR)

    def step_fn(cause=None):
        assert cause is None, cause
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def ref_mean(r, js, rows):
        return jump_log_prob(ref_model, r, js, rows).mean

    loss_cfg = LossConfig(cfg.clip_eps, cfg.adv_clip, cfg.kl_beta, cfg.kl_form)
    stats = policy_update(policy, plan, ro, adv, step_fn, loss_cfg, 64, reference_mean=ref_mean)

    # (b) the reference loop on the same rollout
    ref_policy = copy.deepcopy(model).train()
    ref_adv, ref_losses = _reference(ref_policy, ref_model, ro, plan, cfg)
    torch.testing.assert_close(torch.stack(adv, dim=-1), ref_adv, rtol=0, atol=1e-5)
    assert stats.optimizer_steps == 2 == len(ref_losses) and stats.terms == 2 * 3 * 4
    # flowrl's chunk losses: one chunk per (step, branch point), 12 / 3 = 4 terms each -> step loss = their mean
    chunk = [m["train/loss"] for m in stats.metrics]
    assert len(chunk) == 6
    flow_losses = [sum(chunk[:3]) / 3, sum(chunk[3:]) / 3]
    assert flow_losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-7)
    assert all(m["train/clip_frac"] == 0 for m in stats.metrics[:3])  # step 1: ratio 1
    assert any(0 < m["train/clip_frac"] < 1 for m in stats.metrics[3:])  # step 2: some terms clipped, not all

    da, db = _flat(policy) - w0, _flat(ref_policy) - w0
    scale = float(db.abs().max())
    assert scale > 0
    bound = REL_TOL * scale + 2 * torch.finfo(torch.float32).eps * w0.abs()
    err = float(((da - db).abs() / bound).max())
    assert err <= 1

    # negative control: the same reference without the noise-aware weights lands far off
    wrong = copy.deepcopy(model).train()
    _reference(wrong, ref_model, ro, plan, cfg, unweighted=True)
    off = float(((da - (_flat(wrong) - w0)).abs() / bound).max())
    assert off > 100
