"""GRPO-Guard (method=grpo_guard, step scheduler `ratio_norm`): RatioNorm worked by hand (the
example of experiments/contenders/README.md, section 1), the plan (objective, 1 / |dt| weights,
budget), and one iteration against a reference loop laid out as the official script
(yifan123/flow_grpo scripts/train_sd3_GRPO_Guard.py @9745241: structure only, nothing copied)
with its own step math."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from flowrl.engine.loss import grpo_loss
from flowrl.engine.objectives import ratio_norm_log_ratio
from flowrl.step_schedulers.ratio_norm import RatioNormStepScheduler

# ---- RatioNorm by hand ------------------------------------------------------------------------
# One step sigma 0.5 -> 0.25 at a 0.7, D = 2, two samples (README's example):
#   g = 0.7 sqrt(0.5 / (1 - 0.5)) = 0.7;  |dt| = 0.25, sqrt|dt| = 0.5;  s = g sqrt|dt| = 0.35
#   delta = mu_theta - mu_old = (0.02, 0.01) for both; eps_1 = (1, -0.5), eps_2 = (-0.2, 0.4)
S, DT = 0.35, 0.25
MU_OLD = torch.tensor([[0.3, -0.1], [-0.4, 0.2]])  # any mu_old: only delta enters
DELTA = torch.tensor([0.02, 0.01])
EPS = torch.tensor([[1.0, -0.5], [-0.2, 0.4]])
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _gaussian_lp(x, mean, std):
    """The dims-averaged Gaussian log-density (Flow-GRPO's log-prob), written out."""
    return (-((x - mean) ** 2) / (2 * std**2) - math.log(std) - LOG_SQRT_2PI).mean(dim=1)


def _example(mu_theta):
    x_next = MU_OLD + S * EPS  # the rollout's sample: x_next = mu_old + s eps
    new_lp, old_lp = _gaussian_lp(x_next, mu_theta, S), _gaussian_lp(x_next, MU_OLD, S)
    return new_lp, old_lp, ratio_norm_log_ratio(new_lp, old_lp, mu_theta, MU_OLD, torch.tensor(S))


def _advantages():
    # rewards (1, 0): mean 0.5, population std 0.5 -> A = +-0.5 / (0.5 + 1e-4) = +-0.99980004
    r = torch.tensor([1.0, 0.0])
    return (r - r.mean()) / (r.std(unbiased=False) + 1e-4)


def test_ratio_norm_hand_worked():
    mu_theta = MU_OLD + DELTA
    new_lp, old_lp, rho = _example(mu_theta)
    # Flow-GRPO's log-ratio l = mean_d(eps delta) / s - mean_d(delta^2) / (2 s^2):
    #   mean_d(delta^2) = (4e-4 + 1e-4) / 2 = 2.5e-4;  / (2 * 0.1225) = 0.00102041 (the bias b)
    #   sample 1: mean_d(eps delta) = (0.02 - 0.005) / 2 = 0.0075; / 0.35 = 0.02142857 -> l = 0.02040816
    #   sample 2: mean_d(eps delta) = (-0.004 + 0.004) / 2 = 0 -> l = -0.00102041 (the left shift: ratio < 1)
    torch.testing.assert_close(new_lp - old_lp, torch.tensor([0.02040816, -0.00102041]), atol=1e-7, rtol=0)
    assert torch.exp(new_lp - old_lp).tolist() == pytest.approx([1.02061783, 0.99898011], abs=1e-7)
    # RatioNorm rho = (l + b) s = mean_d(eps delta): 0.0075 and 0; Guard ratio exp(0.0075) = 1.0075282
    torch.testing.assert_close(rho, torch.tensor([0.0075, 0.0]), atol=1e-7, rtol=0)
    assert torch.exp(rho).tolist() == pytest.approx([1.0075282, 1.0], abs=1e-7)


@pytest.mark.parametrize(
    "clip_eps, loss, grad",
    [
        # eps_c 2e-6 (config/grpo_guard.py): sample 1 clipped (A > 0, ratio > 1 + eps_c): term
        # -A (1 + 2e-6) = -0.99980204, no gradient; sample 2 (ratio 1): term +0.99980004.
        # mean -9.9980e-7, / |dt| = x 4: -3.9992e-6. d loss / d mu_theta of sample 2:
        # -A_2 ratio_2 eps_2 / D * (4 / N) = 0.99980004 * (-0.2, 0.4) / 2 * 2 = (-0.19996001, 0.39992002)
        (2e-6, -3.9992e-6, [[0.0, 0.0], [-0.19996001, 0.39992002]]),
        # eps_c 0.01 (nothing clips): 4 * (-A 1.0075282 + A) / 2 = -2 * 0.99980004 * 0.0075282 = -0.01505338;
        # sample 1's gradient -A ratio eps_1 / D * 2 = -1.00732673 * (1, -0.5)
        (0.01, -0.01505338, [[-1.00732673, 0.50366337], [-0.19996001, 0.39992002]]),
    ],
)
def test_guard_loss_and_gradient_hand_worked(clip_eps, loss, grad):
    mu_theta = (MU_OLD + DELTA).requires_grad_(True)
    _, _, rho = _example(mu_theta)
    # the update's call: rho as the log-ratio against 0, each term x the jump's loss_weight 1 / |dt| = 4
    res = grpo_loss(rho, torch.zeros(2), _advantages(), clip_eps, weight=1 / DT)
    # fp32, as the update: the ratio's ulp at 1 is 1.2e-7 and at eps_c 2e-6 the two terms cancel to
    # 2e-6 x 4 / 2, so the loss is pinned to +-2.5e-7 (measured: -4.053e-6 for -3.9992e-6)
    assert float(res.loss.detach()) == pytest.approx(loss, abs=2.5e-7)
    res.loss.backward()
    torch.testing.assert_close(mu_theta.grad, torch.tensor(grad), atol=2e-6, rtol=0)
    # in general -A ratio eps / (D N |dt|) on the unclipped terms
    ratio = torch.exp(rho.detach())
    unclipped = (ratio - 1).abs() <= clip_eps
    general = -(_advantages() * ratio).unsqueeze(1) * EPS / (2 * 2 * DT) * unclipped.unsqueeze(1)
    torch.testing.assert_close(mu_theta.grad, general, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["sde", "dance"])
def test_ratio_norm_s_is_the_steps_own_std(kind):
    # On either Gaussian step (Flow-GRPO SDE; DanceGRPO, eta 0.7) RatioNorm's s is the step output's
    # std (what the update passes): rho = mean_d(eps (mu_theta - mu_old)) exactly. With the step's
    # std_dev_t instead (eta for the dance step, not eta sqrt|dt|) the quadratic term does not cancel.
    from flowrl.contract import StepSettings

    g = torch.Generator().manual_seed(0)
    x, v, eps = (torch.randn(3, 4, 5, generator=g) for _ in range(3))
    step = StepSettings(kind, 0.7, sigma_max=0.9)
    old = step(x, v, 0.6, 0.45, noise=eps)
    new = step(x, v + 0.05 * torch.randn(3, 4, 5, generator=g), 0.6, 0.45, prev_sample=old.prev_sample)
    if kind == "dance":  # DanceGRPO's std eta sqrt(sigma - sigma_next)
        torch.testing.assert_close(old.std[0, 0, 0], torch.tensor(0.7 * math.sqrt(0.15)))
    rho = ratio_norm_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, new.std)
    expected = (eps * (new.mean - old.mean)).flatten(1).mean(1)
    torch.testing.assert_close(rho, expected, atol=1e-6, rtol=1e-4)
    wrong = ratio_norm_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, new.std_dev_t)
    assert (wrong - expected).abs().max() > 1e-3


# ---- the plan ---------------------------------------------------------------------------------
def _sched(make_cfg, *overrides):
    return instantiate(make_cfg("method=grpo_guard", *overrides).method.step_scheduler)


def test_plan_at_the_yaml_defaults(make_cfg):
    from flowrl.contract.objectives import ClippedRatio
    from flowrl.sampling.sigmas import noise_schedule

    cfg = make_cfg("method=grpo_guard").method
    # config/grpo_guard.py: G 24, clip 2e-6, beta 0, lr 1e-4 (LoRA), the first 9 of T 10
    assert (cfg.group_size, cfg.clip_eps, cfg.kl_beta, cfg.lr, cfg.num_steps) == (24, 2e-6, 0.0, 1e-4, 10)
    sched = instantiate(cfg.step_scheduler)
    plan = sched.plan(0, torch.Generator().manual_seed(0))
    assert plan.objective == ClippedRatio(ratio="ratio_norm") and plan.objective.keeps_mean
    assert plan.trained_step_indices() == list(range(9))
    assert not plan.same_initial_noise and not sched.global_std and sched.group_by == "prompt"
    assert len(plan.optimizer_steps(48)) == 2  # 48 prompts x G 24 per epoch, two optimizer steps
    # the SD3 pipeline grid (T 10): [1, .9601, .9133, .8577, .7904, .7073, .6022, .4649, .2780, .0089, 0]
    sigmas = noise_schedule(10, 3.0, "flow_match_euler").tolist()
    assert list(plan.sigmas) == sigmas
    weights = [j.loss_weight for j in plan.jumps]
    assert weights == pytest.approx([1 / (sigmas[i] - sigmas[i + 1]) for i in range(10)], rel=1e-12)
    # e.g. the first step 1 -> 0.9601: 1 / 0.0399 = 25.1; the last trained 0.2780 -> 0.0089: 1 / 0.2691 = 3.72
    assert weights[0] == pytest.approx(25.1, abs=0.1) and weights[8] == pytest.approx(3.72, abs=0.01)
    # 1 / |dt| matches the script's policy_loss / sqrt_dt.mean()**2
    assert weights[4] == pytest.approx(1 / math.sqrt(sigmas[4] - sigmas[5]) ** 2, rel=1e-12)
    # the budget (flowrl's units): NFE 24 x 10 = 240 per prompt, 24 reward queries, 24 x 9 = 216
    # backward passes and training forwards (beta 0: no reference forward)
    assert plan.budget() == {
        "nfe_per_generation": 10,
        "nfe_per_prompt": 240,
        "reward_queries_per_prompt": 24,
        "trained_steps_per_prompt": 216,
        "training_forwards_per_prompt": 216,
    }
    assert plan.to_json(48)["branches"][0]["loss_weight"] == pytest.approx(weights[0])


def test_step_weight_none_and_the_dance_drop_in(make_cfg):
    plan = _sched(make_cfg, "method.step_weight=none").plan(0)
    assert all(j.loss_weight == 1.0 for j in plan.jumps) and plan.objective.ratio == "ratio_norm"
    dance = _sched(make_cfg, "method.sde=dance").plan(0)
    assert all(j.step.kind == "dance" for j in dance.jumps) and dance.objective.ratio == "ratio_norm"
    assert dance.jumps[3].loss_weight == pytest.approx(1 / (dance.sigmas[3] - dance.sigmas[4]))
    with pytest.raises(ValueError, match="Gaussian step"):
        RatioNormStepScheduler(sde="cps", num_steps=4, group_size=2)
    with pytest.raises(ValueError, match="step_weight"):
        RatioNormStepScheduler(step_weight="dt", num_steps=4, group_size=2, sde="sde")


def test_plan_cli_prints_the_guard_plan(capsys):
    import json

    from flowrl.plan import main

    main(["--json", "method=grpo_guard"])
    out = json.loads(capsys.readouterr().out)
    assert out["nfe_per_prompt"] == 240 and out["trained_step_indices"] == list(range(9))
    assert out["objective"] == {"objective": "clipped_ratio", "ratio": "ratio_norm"}
    assert [b["loss_weight"] for b in out["branches"]] == pytest.approx(
        [1 / (a - b) for a, b in zip(out["sigmas"], out["sigmas"][1:])], rel=1e-12
    )


# ---- parity with the official script's loop -----------------------------------------------------
LR = 0.05  # SGD (see tests/engine/test_parity.py: Adam would hide a loss-scale error); the clip never binds
MAX_GRAD_NORM = 1.0  # config/base.py train.max_grad_norm
REL_TOL = 1e-4  # weight changes, relative to the largest (batch-1 against batched forwards: ~1e-7)
PROMPTS = [
    "a red circle on a blue background",
    "a white square on a green background",
    "a red circle on a blue background",
    "a blue triangle on a red background",
]


def _bright(images, _prompts):
    return {"bright": images.mean(dim=(1, 2, 3))}


def _ref_step(kind: str, x, v, sigmas, j: int, a: float, x_next):
    """One step's (log-prob [1], mean, std_dev_t, sqrt_dt), written out: Flow-GRPO's SDE
    (sd3_sde_with_logprob.py: std_dev_t = a sqrt(sigma / (1 - sigma)), sigmas[1] in the
    denominator at sigma = 1) or DanceGRPO's step (std_dev_t = eta); fp32."""
    x, v = x.float(), v.float()
    sigma, sigma_next = sigmas[j], sigmas[j + 1]
    dt = sigma_next - sigma
    if kind == "sde":
        std_dev_t = a * torch.sqrt(sigma / (1 - (sigmas[1] if sigma >= 1 else sigma)))
        mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    else:
        std_dev_t = torch.tensor(a)
        x0 = x - sigma * v
        score = -(x - (1 - sigma) * x0) / sigma**2
        mean = x + dt * v - 0.5 * a**2 * score * dt
    sqrt_dt = torch.sqrt(-dt)
    std = std_dev_t * sqrt_dt
    lp = -((x_next.float() - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return lp.flatten(1).mean(1), mean, std_dev_t, sqrt_dt


def _flat(model):
    return torch.nn.utils.parameters_to_vector(model.transformer.parameters()).detach().clone()


def _sgd(model, norms):
    params = [p for p in model.transformer.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)

    def step(cause=None):
        assert cause is None, cause
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)))
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


class _Guard:
    """One flowrl iteration: plan -> rollout -> advantages -> policy_update (recording the per-term
    rho the update forms), on copies of the tiny model."""

    def __init__(self, make_cfg, tiny_model, sde: str, minibatch: int = 2):
        from flowrl.contract import RewardScores
        from flowrl.engine import update as upd
        from flowrl.engine.rollout import rollout

        self.cfg = make_cfg("method=grpo_guard", "method.num_steps=4", "method.group_size=2", f"method.sde={sde}").method
        self.sde, self.minibatch = sde, minibatch
        self.sched = instantiate(self.cfg.step_scheduler)
        self.plan = self.sched.plan(0, torch.Generator().manual_seed(0))
        self.model = copy.deepcopy(tiny_model).eval()
        self.model.requires_grad_(False)
        self.model.transformer.requires_grad_(True)
        self.w0 = _flat(self.model)
        # max_batch 8 >= a step's rows: one chunk per (step, jump) block
        self.ro = rollout(self.model, self.plan, PROMPTS, _bright, torch.Generator().manual_seed(0), max_batch=8)
        self.adv = self.sched.advantages(RewardScores.single("bright", self.ro.parts["bright"]), self.plan, PROMPTS)
        self.policy = copy.deepcopy(self.model).train()
        self.norms, self.rhos = [], []
        orig = upd.ratio_norm_log_ratio

        def record(*args):
            out = orig(*args)
            self.rhos.append(out.detach().clone())
            return out

        loss = upd.LossConfig(self.cfg.clip_eps, self.cfg.adv_clip, self.cfg.kl_beta)
        upd.ratio_norm_log_ratio = record
        try:
            self.stats = upd.policy_update(self.policy, self.plan, self.ro, self.adv, _sgd(self.policy, self.norms), loss, 8)
        finally:
            upd.ratio_norm_log_ratio = orig

    def flowrl_terms(self) -> dict[tuple[int, int], float]:
        """{(sample, jump): rho} as flowrl's update formed them, in its step / block order."""
        out, k = {}, 0
        for step in self.plan.optimizer_steps(len(PROMPTS)):
            for b in step:
                for row, rho in zip(b.rows.tolist(), self.rhos[k].tolist()):
                    out[(row, b.jump)] = rho
                k += 1
        assert k == len(self.rhos)
        return out

    def flowrl_step_losses(self) -> list[float]:
        """Each optimizer step's loss: the mean of its blocks' chunk losses (equal blocks, one chunk each)."""
        losses, k = [], 0
        for step in self.plan.optimizer_steps(len(PROMPTS)):
            losses.append(sum(m["train/loss"] for m in self.stats.metrics[k : k + len(step)]) / len(step))
            k += len(step)
        return losses


def _official_advantages(it: _Guard) -> torch.Tensor:
    """flow_grpo/stat_tracking.py with per_prompt_stat_tracking and global_std False (the Guard
    configs): per prompt string, (r - mean) / (np.std of that prompt's rewards + 1e-4), float64;
    clamped at +-adv_clip_max in the loss."""
    rewards = it.ro.parts["bright"].flatten().double().numpy()
    row_prompts = np.array([p for p in PROMPTS for _ in range(it.plan.group_size)])
    adv = np.empty_like(rewards)
    for p in np.unique(row_prompts):
        sel = row_prompts == p
        adv[sel] = (rewards[sel] - rewards[sel].mean()) / (np.std(rewards[sel]) + 1e-4)
    return torch.as_tensor(adv, dtype=torch.float32).clamp(-it.cfg.adv_clip, it.cfg.adv_clip)


def _official_update(it: _Guard, adv: torch.Tensor, ratio_form: str = "ratio_norm", inv_dt: bool = True):
    """train_sd3_GRPO_Guard.py's training loop, one inner epoch, on flowrl's rollout (its stored x_j,
    x_{j+1}, log-prob and prev_sample_mean per sample and step).

    Samples whose advantages are all 0 leave first (none here: distinct rewards), then the shuffle
    (the plan's frozen draw: torch.randperm seeded plan.update.seed + 1), cut into
    num_batches_per_epoch batches of `minibatch`; gradient_accumulation_steps = num_batches // 2.
    For each batch, for each trained j in order, one accumulate micro-step: the policy's log-prob,
    prev_sample_mean, std_dev_t, sqrt_dt of the batch (the model called one sample at a time);
    rationorm: sigma_t = std_dev_t.mean(), b = mean_d((mu - mu_old)^2) / (2 (sqrt_dt.mean() sigma_t)^2),
    ratio = exp((lp - lp_old + b) sqrt_dt.mean() sigma_t); policy_loss = mean max(-A r, -A clip(r)),
    / sqrt_dt.mean()**2; beta 0: loss = policy_loss; accelerator.backward divides by the
    accumulation count ga * num_train_timesteps; clip_grad_norm_ and optimizer.step on the sync step.
    Returns (model, optimizer steps, grad norms, {(sample, j): rho}, step losses)."""
    cfg, plan, ro = it.cfg, it.plan, it.ro
    g, a, sigmas = plan.group_size, cfg.noise_level, ro.sigmas
    trained = list(range(int(cfg.num_steps * cfg.timestep_fraction)))
    embeds = {p: it.model.encode_prompts([p]) for p in set(PROMPTS)}
    assert (adv != 0).all()
    model = copy.deepcopy(it.model).train()
    norms, rhos, losses, steps = [], {}, [], 0
    step = _sgd(model, norms)
    n = len(PROMPTS) * g
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(plan.update.seed + 1))
    batches = perm.split(it.minibatch)
    ga = len(batches) // cfg.optimizer_steps_per_rollout
    step_loss = 0.0
    for i, batch in enumerate(batches):
        for j in trained:
            js = ro.jump_sets[j]
            lps, means, stds, sqrt_dts, olds, old_means = [], [], [], [], [], []
            for s in batch.tolist():
                v = model.velocity(js.x[s : s + 1], sigmas[j].reshape(1), embeds[PROMPTS[s // g]])
                lp, mean, std_dev_t, sqrt_dt = _ref_step(it.sde, js.x[s : s + 1], v, sigmas, j, a, js.x_next[s])
                lps.append(lp)
                means.append(mean)
                stds.append(std_dev_t)
                sqrt_dts.append(sqrt_dt)
                olds.append(js.log_prob[s])
                old_means.append(js.mean[s])
            lp, mean, old_lp, old_mean = torch.cat(lps), torch.cat(means), torch.cat(olds), torch.cat(old_means)
            sigma_t, sqrt_dt = torch.stack(stds).mean(), torch.stack(sqrt_dts).mean()
            if ratio_form == "ratio_norm":
                bias = (mean - old_mean).pow(2).flatten(1).mean(1) / (2 * (sqrt_dt * sigma_t) ** 2)
                rho = (lp - old_lp + bias) * (sqrt_dt * sigma_t)
            else:
                rho = lp - old_lp
            ratio = torch.exp(rho)
            for s, r in zip(batch.tolist(), rho.tolist()):
                rhos[(s, j)] = r
            a_b = adv[batch]
            loss = torch.maximum(-a_b * ratio, -a_b * ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)).mean()
            if inv_dt:
                loss = loss / sqrt_dt**2
            (loss / (ga * len(trained))).backward()
            step_loss += float(loss) / (ga * len(trained))
        if (i + 1) % ga == 0:  # accelerator.sync_gradients
            step()
            steps += 1
            losses.append(step_loss)
            step_loss = 0.0
    return model, steps, norms, rhos, losses


def _update_error(w0, a, b, steps: int) -> float:
    """max |dw_a - dw_b| / (REL_TOL max |dw_b| + steps eps32 |w0|): <= 1 is a match (test_parity's)."""
    da, db = _flat(a) - w0, _flat(b) - w0
    assert float(db.abs().max()) > 0
    bound = REL_TOL * float(db.abs().max()) + steps * torch.finfo(torch.float32).eps * w0.abs()
    return float(((da - db).abs() / bound).max())


@pytest.fixture
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("_one_thread")
@pytest.mark.parametrize("sde", ["sde", "dance"])
def test_grpo_guard_parity_with_the_official_loop(make_cfg, tiny_model, sde):
    # T 4: the first int(4 * 0.99) = 3 steps, in order. Prompts [A, B, A, C] x G 2 = 8 samples:
    # per-prompt stat tracking pools A's two groups, each prompt its own std (global_std False).
    # 2 optimizer steps over shuffled halves of 4, each 2 minibatches of 2 (ga = 4 // 2 = 2).
    # clip 2e-6, beta 0 (config/grpo_guard.py). sde: the Flow-GRPO SDE (the script's) and flowrl's
    # drop-in on the DanceGRPO step (eta 0.7), with the step's own std as RatioNorm's s.
    it = _Guard(make_cfg, tiny_model, sde)
    assert it.plan.trained_step_indices() == [0, 1, 2] and it.cfg.clip_eps == 2e-6 and it.cfg.kl_beta == 0

    adv = _official_advantages(it)
    flow_adv = torch.cat(it.adv, dim=1)  # [8, J]
    torch.testing.assert_close(flow_adv, adv.unsqueeze(1).expand_as(flow_adv), rtol=0, atol=1e-5)

    # the rollout kept the right prev_sample_mean (and log-prob): the reference step math on the
    # rollout's weights, one sample at a time
    with torch.no_grad():
        for j in (0, 2):
            js = it.ro.jump_sets[j]
            for s in (0, 5):
                v = it.model.velocity(js.x[s : s + 1], it.ro.sigmas[j].reshape(1), it.model.encode_prompts([PROMPTS[s // 2]]))
                lp, mean, _, _ = _ref_step(sde, js.x[s : s + 1], v, it.ro.sigmas, j, it.cfg.noise_level, js.x_next[s])
                torch.testing.assert_close(js.mean[s], mean, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(js.log_prob[s], lp, rtol=1e-5, atol=1e-5)

    ref, steps, norms, rhos, losses = _official_update(it, adv)
    assert steps == it.stats.optimizer_steps == 2
    assert max(it.norms + norms) < MAX_GRAD_NORM  # the grad-norm clip did not rescale anything
    # per-term rho (and so the ratio): the first step's are 0 (the rollout's weights), the second's
    # see the weights the first step moved
    ours = it.flowrl_terms()
    assert set(ours) == set(rhos) and len(ours) == 8 * 3
    got = torch.tensor([ours[k] for k in sorted(ours)])
    want = torch.tensor([rhos[k] for k in sorted(rhos)])
    scale = float(want.abs().max())
    assert scale > 1e-4  # the second step's terms moved well off ratio 1 (and past the 2e-6 clip)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * scale)
    torch.testing.assert_close(torch.exp(got), torch.exp(want), rtol=0, atol=1e-3 * scale)
    # each optimizer step's loss (the mean of its terms' weighted clipped surrogate)
    assert it.flowrl_step_losses() == pytest.approx(losses, rel=1e-4, abs=1e-9)
    # and the weights
    err = _update_error(it.w0, it.policy, ref, steps)
    assert err <= 1, err

    if sde == "sde":
        # Controls: the plain Flow-GRPO ratio, or RatioNorm without the 1 / |dt| re-weighting, in
        # the reference loop must NOT match: both are visible in the weights
        plain, steps, *_ = _official_update(it, adv, ratio_form="plain")
        assert _update_error(it.w0, it.policy, plain, steps) > 100
        no_dt, steps, *_ = _official_update(it, adv, inv_dt=False)
        assert _update_error(it.w0, it.policy, no_dt, steps) > 100
