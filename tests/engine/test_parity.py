"""Parity of flowrl's one-iteration update with the official scripts' structure, per method.

For each method config in conf/method, ONE iteration on a tiny random model runs two ways, fed
the same noise (tests/reference/common.py's KeyedNoise):
  (a) flowrl: plan -> rollout -> step_scheduler.advantages -> policy_update;
  (b) the method's reference sampler (tests/reference/, transcribed from the official sampler and
      checked element-wise against the engine in tests/reference/test_rollout_parity.py), then a
      reference loop written here the way the official script is laid out: its advantage formula
      on the reference rollout's rewards, its loops (per sample / per timestep / per branch point /
      per minibatch), its loss normalisation and where it calls optimizer.step(). It re-evaluates
      log-probs itself from the reference rollout's stored states, calling the model ONE SAMPLE AT
      A TIME, with the reference samplers' own step math (nothing of flowrl's sampling, rollout or
      update schedule).
Asserted: equal advantages, equal optimizer-step counts, and equal weight updates.

Why SGD and not the scripts' AdamW: Adam's first step is lr * g / (|g| + eps) elementwise, i.e.
invariant to the loss scale, so a wrong normalisation (a missing / grad_accum, a sum instead of a
mean) would give the same weights and pass unnoticed. SGD's step is lr * g: any scale error in
the loss shows up 1:1 in the weights. For the same reason weight decay is 0 (it adds the same
lambda * w to both sides and only dilutes the comparison), and the scripts' grad clipping (max
norm 1.0) is applied on both sides but asserted not to bind: a binding clip rescales the
gradient to norm 1 and would hide a loss-scale error exactly as Adam does.

Random draws that belong to the plan are inputs, as the noise is: DanceGRPO's per-sample
timesteps (`plan.trained_mask(P)`, each sample's draw) and Flow-GRPO's shuffle of the samples (the
permutation the plan froze: `_plan_permutation`). The reference reproduces what the script does
with a draw (which samples land in which optimizer step, in which minibatch), not the draw itself.

Official code read (structure only; nothing copied): XueZeyue/DanceGRPO
fastvideo/train_grpo_flux.py; yifan123/flow_grpo scripts/train_sd3.py + flow_grpo/stat_tracking.py
(mirror @ac4c86e); shengjun-zhang/VisualGRPO fastvideo/trainer/grpo_trainer.py +
fastvideo/workers/rollout_buffer.py; bcmi/Granular-GRPO fastvideo/train_g2rpo_hps.py
(@ef6ec9f) + train_g2rpo_hps_clip.py; Tencent-Hunyuan/MixGRPO fastvideo/train_grpo_flux.py +
fastvideo/utils/grpo_states.py; DenseGRPO (arXiv 2601.20218v2, no code): Flow-GRPO's loop with
the paper's dense advantages (Eqs. 7, 10, 11) and one optimizer step per rollout.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from flowrl.rewards.base import RewardModel
from tests.reference import branch_samplers, dancegrpo_sampler, densegrpo_sampler, flow_grpo_sampler, mixgrpo_sampler
from tests.reference.common import KeyedNoise

SEED = 0
# Every official script clips the gradient norm at 1.0 (DanceGRPO finetune_flux_grpo.sh, flow_grpo
# config/base.py, VisualGRPO config.yaml, G²RPO and MixGRPO scripts).
MAX_GRAD_NORM = 1.0
# SGD learning rate: large enough that the first optimizer step moves the policy off the rollout's
# (ratio leaves the 1e-4 clip band for some terms of the later steps, so step placement matters:
# which terms see which weights), small enough that the grad-norm clip never binds.
LR = 0.5
# Rows per batched forward in flowrl (rollout and update): smaller than the 6-8 rows of a jump
# set, so flowrl's chunking is exercised against the reference's batch-1 forwards.
MAX_BATCH = 4
# Weight-update tolerance, relative to the largest weight change (plus fp32 rounding of the
# weights, see _update_error): a batch-1 forward and a batched one differ by ~2e-7 relative
# (measured on this CPU), which reaches the gradients and the later steps' ratios at that order.
# With each side on its own rollout (the engine's and the reference sampler's, equal to ~5e-7) the
# measured error is 0.06-0.15 of this bound (6-16x margin). Every wrong variant tried lands 90-4500x beyond the
# bound: loss not divided by the accumulation (x2 per step), the transition-variance KL (x4 on
# the KL), no KL at all.
REL_TOL = 1e-4
# Advantage tolerance: flowrl's advantages come from the engine's rewards, the reference's from its
# own rollout's, which agree to ~3e-8 (batch-1 against batched forwards, tests/reference); a group's
# reward spread of ~1e-3 on the tiny random model turns that into up to ~3e-5 (measured) on an
# advantage of order 1. A wrong formula (biased std, the group's mean instead of the prompt's, a
# missing clamp) is off by 1e-2 or more.
ADV_TOL = 1e-4
PROMPTS = ["a red circle on a blue background", "a white square on a green background"]


# ---- shared fixtures ---------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: this file's forwards are tiny (16 tokens), and on the 2 shared cores
    two OpenMP threads make each one ~50-100x slower (measured: 0.8 s vs 0.01 s per forward +
    backward under load). Both sides of every comparison run in the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def method_cfg(make_cfg):
    """conf/method/<method>.yaml with overrides of its own keys ("num_steps=5"; "+key=..." adds one)."""

    def compose_method(method: str, overrides=()):
        extra = [f"+method.{o[1:]}" if o.startswith("+") else f"method.{o}" for o in overrides]
        return make_cfg(f"method={method}", *extra).method

    return compose_method


def _scheduler(mcfg):
    from hydra.utils import instantiate

    return instantiate(mcfg.step_scheduler)


def _tiny_model(seed: int = SEED):
    """A tiny random FLUX transformer (full fine-tune: every transformer weight trains)."""
    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

    torch.manual_seed(seed)
    model = TinyFluxModel(TinyFluxConfig(num_layers=1, num_single_layers=1, image_size=16))
    model.requires_grad_(False)
    model.transformer.requires_grad_(True)
    return model.eval()


def _score(images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Two cheap deterministic rewards with distinct values per image: brightness and redness."""
    return {"bright": images.mean(dim=(1, 2, 3)), "red": (images[:, 0] - images[:, 1]).mean(dim=(1, 2))}


class _BrightRed(RewardModel):
    """_score as a reward model (the interface the reference samplers score through)."""

    name = "bright_red"

    def components(self, images, prompts):
        return _score(images, prompts)


def _reference_rollout(cfg, model, prompts, noise, iteration: int):
    """The method's reference sampler (tests/reference/) at the method config's values."""
    reward, t, g, a = _BrightRed(), cfg.num_steps, cfg.group_size, cfg.noise_level
    if cfg.name == "dancegrpo":
        return dancegrpo_sampler.sample(model, prompts, reward, noise, num_steps=t, group_size=g, eta=a, shift=cfg.shift)
    if cfg.name == "flowgrpo":
        return flow_grpo_sampler.sample(model, prompts, reward, noise, num_steps=t, group_size=g, noise_level=a)
    if cfg.name == "densegrpo":
        psi = cfg.step_scheduler.get("noise_levels")
        return densegrpo_sampler.sample(model, prompts, reward, noise, num_steps=t, group_size=g, noise_level=a, psi=psi)
    if cfg.name == "mixgrpo":
        window = mixgrpo_sampler.progressive_window(iteration, t, cfg.window_size, cfg.iters_per_group, cfg.stride)
        return mixgrpo_sampler.sample(
            model, prompts, reward, noise, num_steps=t, group_size=g, window=window, eta=a, shift=cfg.shift
        )
    branch = dict(num_steps=t, group_size=g, granularities=tuple(cfg.granularities), eta=a, shift=cfg.shift)
    if cfg.name == "egrpo":
        # E-GRPO's merge lengths come from the paper's entropy rule (its code has fixed lists): taken
        # from the plan as the draws are; every other choice is the sampler's own
        merges = [j.stop - j.start for j in _scheduler(cfg).plan(iteration).jumps]
        steps = list(range(cfg.num_branch_steps))
        return branch_samplers.sample(model, prompts, reward, noise, branch_steps=steps, merge_steps=merges, **branch)
    return branch_samplers.sample(model, prompts, reward, noise, branch_steps=list(range(cfg.num_branch_steps)), **branch)


def _plan_permutation(plan, num_samples: int) -> torch.Tensor:
    """Flow-GRPO's shuffle of the samples before they are cut into the optimizer steps' batches
    (train_sd3.py L829: a torch.randperm): the permutation this iteration's plan froze
    (flowrl.contract.plan: randperm over the samples from the plan's update seed + 1)."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(plan.update.seed + 1))


def _flat(model) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.transformer.parameters()).detach().clone()


def _sgd_step(model, norms: list[float]):
    """The caller's optimizer step, identical for flowrl and the references: clip (the scripts'
    max norm), SGD step, zero the gradients; records the pre-clip norm."""
    params = list(model.transformer.parameters())
    opt = torch.optim.SGD(params, lr=LR)

    def step(cause=None):  # policy_update's step_fn protocol: a cause means drop the gradients
        assert cause is None, cause
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)))
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _v1(model, x: torch.Tensor, sigma: torch.Tensor, it, prompt: int) -> torch.Tensor:
    """The velocity of ONE sample (batch 1), as the official training loops call the model."""
    return model.velocity(x.unsqueeze(0), sigma.reshape(1), it.embeds(prompt))


def _ppo(adv: torch.Tensor, ratio: torch.Tensor, clip: float) -> torch.Tensor:
    """max(-A r, -A clip(r, 1-eps, 1+eps)), per entry (every script's loss)."""
    return torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip))


class Iteration:
    """One flowrl iteration (a): plan, rollout, advantages, policy_update on a copy of the model.
    Keeps the rollout, the initial weights and the untouched model for the reference loop (b)."""

    def __init__(self, cfg, prompts, reward="bright", weights=None, iteration=0, ref_model=None):
        from flowrl.contract import RewardScores
        from flowrl.engine.rollout import jump_log_prob, rollout
        from flowrl.engine.update import LossConfig, policy_update

        self.cfg = cfg  # the method config (method_cfg)
        self.sched = _scheduler(self.cfg)
        self.prompts = list(prompts)
        self.model = _tiny_model()
        self.w0 = _flat(self.model)
        self.plan = self.sched.plan(iteration, torch.Generator().manual_seed(SEED))
        noise = KeyedNoise(self.model.latent_shape, SEED)
        self.ro = rollout(self.model, self.plan, self.prompts, _score, max_batch=MAX_BATCH, noise=noise)
        self.ref = _reference_rollout(cfg, self.model, self.prompts, noise, iteration)  # side (b)'s own rollout
        if weights is None:
            self.scores = RewardScores.single(reward, self.ro.parts[reward])
        else:
            total = sum(w * self.ro.parts[k] for k, w in weights.items())
            self.scores = RewardScores(dict(self.ro.parts), total, dict(weights))
        self.adv = self.sched.advantages(self.scores, self.plan, self.prompts)
        self.loss = LossConfig(self.cfg.clip_eps, self.cfg.adv_clip, self.cfg.kl_beta, self.cfg.get("kl_form", "official"))
        self.ref_model = ref_model

        @torch.no_grad()
        def ref_mean(r, js, rows):  # the reference policy's transition mean (flow_grpo: adapter disabled)
            return jump_log_prob(ref_model, r, js, rows).mean

        self.policy = copy.deepcopy(self.model).train()
        self.norms: list[float] = []
        self.stats = policy_update(
            self.policy,
            self.plan,
            self.ro,
            self.adv,
            _sgd_step(self.policy, self.norms),
            self.loss,
            MAX_BATCH,
            reference_mean=ref_mean if self.loss.kl_beta > 0 else None,
        )
        self.sigmas = self.ref.sigmas  # the reference sampler's own grid (the official script's)
        torch.testing.assert_close(self.ro.sigmas, self.sigmas, rtol=0, atol=1e-6)

    @property
    def num_samples(self) -> int:
        return len(self.prompts) * self.plan.group_size

    def reference_policy(self):
        """The model the reference loop trains: the same initial weights, its own copy."""
        return copy.deepcopy(self.model).train()

    def embeds(self, prompt: int):
        """Prompt `prompt`'s conditioning from the model wrapper (what the reference samplers used)."""
        if not hasattr(self, "_embeds"):
            self._embeds = {}
        if prompt not in self._embeds:
            self._embeds[prompt] = self.model.encode_prompts([self.prompts[prompt]])
        return self._embeds[prompt]

    def sde_sample(self, n: int, t: int):
        """Sample n (= p * G + g, the scripts' rank-local row order) of the reference rollout: its
        transition leaving sigma index t: x, x_next, old log-prob."""
        tr = self.ref.transitions[divmod(n, self.plan.group_size) + (t,)]
        assert tr.stop == t + 1
        return tr.x, tr.x_next, tr.log_prob

    def ref_rewards(self, name: str) -> torch.Tensor:
        """The reference rollout's rewards of part `name`, [P, G] (the final images)."""
        g = self.plan.group_size
        return torch.stack([self.ref.rewards[("final", p, k)][name] for p in range(len(self.prompts)) for k in range(g)]).view(
            -1, g
        )

    def branch_steps(self) -> list[int]:
        """The sigma indices where the reference rollout's stochastic jumps start (branch points,
        MixGRPO's window), in order."""
        return sorted({k for (_, _, k) in self.ref.transitions})

    def ref_branch_rewards(self, name: str) -> torch.Tensor:
        """The reference rollout's branch rewards of part `name`, [P, G, B, C] (branch point, granularity)."""
        return torch.tensor(
            [
                [
                    [
                        [float(self.ref.rewards[("branch", p, k, b, c)][name]) for c in self.cfg.granularities]
                        for b in self.branch_steps()
                    ]
                    for k in range(self.plan.group_size)
                ]
                for p in range(len(self.prompts))
            ]
        )

    def check_update(self, ref_policy, ref_steps: int, ref_norms: list[float]) -> float:
        """Same optimizer-step count, the clip never binding, the same weight change."""
        assert self.stats.optimizer_steps == ref_steps
        assert max(self.norms + ref_norms) < MAX_GRAD_NORM  # the clip did not rescale anything
        return _update_error(self.w0, self.policy, ref_policy, ref_steps)


def _update_error(w0: torch.Tensor, a, b, steps: int) -> float:
    """How far two weight updates dw_a, dw_b are apart, in units of what they may differ by:
    max over weights of |dw_a - dw_b| / (REL_TOL * max |dw_b| + steps * eps32 * |w0|); <= 1 is a match.
    The second term is fp32 rounding: each SGD step rounds w - lr * g to float32 (half an ulp,
    2^-24 |w|, in each run), which at LR 0.5 is ~1e-5..6e-5 of the largest change (measured), the
    same order as the gradient noise; it is not a property of the update, so it is allowed per
    weight rather than inflating REL_TOL."""
    da, db = _flat(a) - w0, _flat(b) - w0
    scale = float(db.abs().max())
    assert scale > 0, "the reference loop did not change the weights"
    bound = REL_TOL * scale + steps * torch.finfo(torch.float32).eps * w0.abs()
    return float(((da - db).abs() / bound).max())


def _adv_sde(it: Iteration) -> torch.Tensor:
    """flowrl's advantages of an sde plan as [N, J] (sample, jump)."""
    return torch.cat([a for a in it.adv], dim=1)


def _logprob_and_mean(step_out):
    """(log_prob [1], mean) of a flow_grpo_sampler.sde_step_with_logprob result, by name."""
    from types import SimpleNamespace

    _, log_prob, mean, _ = step_out
    return SimpleNamespace(log_prob=log_prob, mean=mean)


def _reference_kl(mean, ref_mean, std_dev_t) -> torch.Tensor:
    """flow_grpo train_sd3.py L894-897: mean over C,H,W of (mu - mu_ref)^2, / (2 std_dev_t^2) (no dt)."""
    return ((mean - ref_mean) ** 2).mean() / (2 * std_dev_t**2)


def _flow_grpo_std_dev_t(sigmas: torch.Tensor, i: int, a: float) -> torch.Tensor:
    """sd3_sde_with_logprob.py L47: a * sqrt(sigma / (1 - sigma)), sigma_max = sigmas[1] at sigma = 1."""
    s = sigmas[i]
    return a * torch.sqrt(s / (1 - (sigmas[1] if s >= 1 else s)))


# ---- DanceGRPO -----------------------------------------------------------------------------------
def _dance_reference(it: Iteration, accum_divisor: int | None = None):
    """XueZeyue/DanceGRPO fastvideo/train_grpo_flux.py (train_one_step).

    Advantages, L533-548 (use_group): per group of G contiguous rows, (r - mean) / (r.std() +
    1e-8) with torch's default UNBIASED std; clamped to +-adv_clip_max in the loss (L589-593).
    Trained steps, L505-570: the last transition is dropped, each sample draws its own
    randperm(T-1) and trains its first int((T-1) * timestep_fraction) entries (the draw: the plan's).
    Update, L571-613: for each sample i (batch 1) of the rank, for each of its trained steps:
    recompute the log-prob, loss = max(-A r, -A clip(r)) / (gradient_accumulation_steps *
    train_timesteps), backward; when (i+1) % gradient_accumulation_steps == 0: clip_grad_norm_,
    optimizer.step, zero_grad, the gradients averaged over the ranks by FSDP.
    `accum_divisor` replaces gradient_accumulation_steps in the loss divisor only (the negative
    control)."""
    cfg, g, n_samples = it.cfg, it.plan.group_size, it.num_samples
    rewards = it.ref_rewards("bright").flatten()  # [P*G], prompt-major like the script's rank-local rows
    adv = torch.zeros_like(rewards)
    for i in range(n_samples // g):
        group = rewards[i * g : (i + 1) * g]
        adv[i * g : (i + 1) * g] = (group - group.mean()) / (group.std() + 1e-8)
    adv = adv.clamp(-cfg.adv_clip, cfg.adv_clip)

    mask = it.plan.trained_mask(len(it.prompts))  # [N, T] this iteration's per-sample draws
    t = cfg.num_steps
    train_timesteps = int((t - 1) * cfg.timestep_fraction)
    assert (mask.sum(1) == train_timesteps).all() and not mask[:, t - 1].any()  # never the last step
    gas = cfg.gradient_accumulation_steps
    divisor = (accum_divisor or gas) * train_timesteps
    # One prompt per GPU (finetune_flux_grpo.sh): each prompt's G samples are one rank's samples.
    # Every rank loops over its own samples; at each accumulation boundary FSDP has averaged the
    # ranks' gradients (their mean) and every rank steps: global step o = the o-th
    # gradient_accumulation_steps samples of every rank.
    model, norms, steps = it.reference_policy(), [], 0
    step = _sgd_step(model, norms)
    params = [p for p in model.parameters() if p.requires_grad]
    ranks = n_samples // (cfg.prompts_per_rank * g)
    per_rank = cfg.prompts_per_rank * g
    for o in range(per_rank // gas):
        rank_grads = []
        for r in range(ranks):
            for i in range(r * per_rank + o * gas, r * per_rank + (o + 1) * gas):  # this rank's samples, in order
                for j in torch.nonzero(mask[i]).flatten().tolist():
                    x, x_next, old = it.sde_sample(i, j)
                    v = _v1(model, x, it.sigmas[j], it, i // g)
                    _, _, lp = dancegrpo_sampler.flux_step(
                        v, x.unsqueeze(0), cfg.noise_level, it.sigmas, j, prev_sample=x_next.unsqueeze(0)
                    )
                    loss = _ppo(adv[i], torch.exp(lp - old), cfg.clip_eps).mean() / divisor
                    loss.backward()
            rank_grads.append([p.grad.clone() for p in params])
            for p in params:
                p.grad = None
        for k, p in enumerate(params):  # the all-reduce: the mean over ranks
            p.grad = sum(rg[k] for rg in rank_grads) / ranks
        step()
        steps += 1
    return adv, model, steps, norms


def test_dancegrpo_parity(method_cfg):
    # T 5: per sample a random int(4 * 0.6) = 2 of the first 4 steps; 2 prompts (= 2 emulated GPUs,
    # one prompt each as finetune_flux_grpo.sh) x G 4, a step every 2 samples of each GPU -> 2
    # optimizer steps (the script's 12 / 4 = 3 at its scale), each over 2 x 2 samples.
    it = Iteration(
        method_cfg("dancegrpo", ["num_steps=5", "group_size=4", "gradient_accumulation_steps=2"]), PROMPTS, reward="bright"
    )
    adv, ref, steps, norms = _dance_reference(it)
    flow_adv = _adv_sde(it)
    torch.testing.assert_close(flow_adv, adv.unsqueeze(1).expand_as(flow_adv), rtol=0, atol=ADV_TOL)
    assert steps == 2 == it.stats.optimizer_steps
    assert it.check_update(ref, steps, norms) <= 1


def test_dancegrpo_wrong_normalisation_is_caught(method_cfg):
    # Negative control: the same reference with the loss divided by train_timesteps only (no
    # / gradient_accumulation_steps) scales every SGD step by 2; the comparison must fail.
    it = Iteration(
        method_cfg("dancegrpo", ["num_steps=5", "group_size=4", "gradient_accumulation_steps=2"]), PROMPTS, reward="bright"
    )
    _, ref, steps, norms = _dance_reference(it, accum_divisor=1)
    assert _update_error(it.w0, it.policy, ref, steps) > 100


# ---- Flow-GRPO and DenseGRPO (flow_grpo's training loop) ----------------------------------------
def _flow_grpo_update(it: Iteration, adv: torch.Tensor, trained: list[int], minibatch: int, step_settings, kl_std):
    """yifan123/flow_grpo scripts/train_sd3.py L819-956 (HEAD ac4c86e), one inner epoch.

    The (shuffled, L829) samples are cut into minibatches of `minibatch` (L833-836); for each
    minibatch, for each trained timestep j (range(num_train_timesteps), L864) one
    accelerator.accumulate micro-step: the log-probs of the minibatch, policy_loss = batch mean of
    max(-A r, -A clip(r)) (L881-893), + beta * batch mean of the KL (L894-897), and
    accelerator.backward(loss), which divides it by the Accelerator's accumulation count
    gradient_accumulation_steps * num_train_timesteps (L357-360); on the sync micro-step:
    clip_grad_norm_(max_grad_norm) and optimizer.step() (L932-938): with gradient_accumulation_steps
    = num_batches_per_epoch // k (config/grpo.py: k = 2), the shuffled samples' consecutive k equal
    shares are the k optimizer steps. The shuffle is the plan's frozen draw (_plan_permutation).
    Samples whose advantages are all 0 would leave before the shuffle (L797-817): the tests' rewards
    are distinct, so none does (asserted). The model is called one sample at a time and the
    minibatch's log-probs stacked."""
    g = it.plan.group_size
    beta = it.cfg.kl_beta
    assert (adv != 0).any(1).all()  # flow_grpo's zero-advantage filter keeps every sample here
    model, norms, n_steps = it.reference_policy(), [], 0
    step = _sgd_step(model, norms)
    for share in _plan_permutation(it.plan, it.num_samples).tensor_split(it.cfg.optimizer_steps_per_rollout):
        batches = share.split(minibatch)
        ga = len(batches)  # gradient_accumulation_steps: the minibatches of one optimizer step
        for batch in batches:
            for j in trained:
                lps, olds, kls = [], [], []
                for n in batch.tolist():
                    x, x_next, old = it.sde_sample(n, j)
                    v = _v1(model, x, it.sigmas[j], it, n // g)
                    out = step_settings(j, x.unsqueeze(0), v, x_next.unsqueeze(0))
                    lps.append(out.log_prob)
                    olds.append(old)
                    if beta > 0:
                        with torch.no_grad():  # the reference policy (flow_grpo: adapter disabled)
                            v_ref = _v1(it.ref_model, x, it.sigmas[j], it, n // g)
                            ref = step_settings(j, x.unsqueeze(0), v_ref, x_next.unsqueeze(0))
                        kls.append(_reference_kl(out.mean, ref.mean, kl_std(j)))
                ratio = torch.exp(torch.cat(lps) - torch.stack(olds))  # lps: [1] each
                loss = _ppo(adv[batch, j], ratio, it.cfg.clip_eps).mean()
                if beta > 0:
                    loss = loss + beta * torch.stack(kls).mean()
                (loss / (ga * len(trained))).backward()
        step()
        n_steps += 1
    return model, n_steps, norms


def test_flowgrpo_parity(method_cfg):
    # T 4: the first int(4 * 0.99) = 3 steps, in order. Prompts [A, B, A, C] x G 2 = 8 samples:
    # per-prompt stat tracking pools A's two groups. 2 optimizer steps over shuffled halves of 4,
    # each 2 minibatches of 2 (gradient_accumulation_steps = num_batches_per_epoch // 2 = 2).
    # KL beta 0.04 (config) against a reference policy that differs from the policy (a drifted
    # policy: with reference == policy the KL gradient at the first step is exactly 0, untested).
    # The rewards are distinct, so flow_grpo's filter of all-zero-advantage samples (L797-817)
    # does not act, nor does flowrl's (update.drop_zero_advantage; hand-worked below).
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], "a blue triangle on a red background"]
    it = Iteration(
        method_cfg("flowgrpo", ["num_steps=4", "group_size=2"]), prompts, reward="bright", ref_model=_tiny_model(SEED + 1)
    )
    cfg, a = it.cfg, it.cfg.noise_level
    trained = list(range(int(cfg.num_steps * cfg.timestep_fraction)))
    assert it.plan.trained_step_indices() == trained and cfg.kl_beta > 0

    # flow_grpo/stat_tracking.py L11-31 with global_std=True (every SD3 config): mean over the
    # prompt's samples (all its groups), np.std (ddof 0) of ALL the rollout's rewards + 1e-4, in
    # float64; clamped at +-adv_clip_max in the loss (L881-885).
    rewards = it.ref_rewards("bright").flatten().double().numpy()
    row_prompts = np.array([p for p in prompts for _ in range(it.plan.group_size)])
    adv = np.empty_like(rewards)
    for p in np.unique(row_prompts):
        sel = row_prompts == p
        adv[sel] = (rewards[sel] - rewards[sel].mean()) / (np.std(rewards) + 1e-4)
    adv = torch.as_tensor(adv, dtype=torch.float32).clamp(-cfg.adv_clip, cfg.adv_clip)
    flow_adv = _adv_sde(it)
    torch.testing.assert_close(flow_adv, adv.unsqueeze(1).expand_as(flow_adv), rtol=0, atol=ADV_TOL)

    def step_settings(j, x, v, x_next):  # sd3_sde_with_logprob.py, sde_type "sde"
        return _logprob_and_mean(flow_grpo_sampler.sde_step_with_logprob(v, x, it.sigmas, j, a, prev_sample=x_next))

    adv_nj = adv.unsqueeze(1).expand(-1, cfg.num_steps)
    ref, steps, norms = _flow_grpo_update(it, adv_nj, trained, 2, step_settings, lambda j: _flow_grpo_std_dev_t(it.sigmas, j, a))
    assert steps == 2
    assert it.check_update(ref, steps, norms) <= 1
    # Control: the KL divided by the transition variance std_dev_t^2 |dt| (4-16x stronger here)
    # instead of flow_grpo's 2 std_dev_t^2 must NOT match: the KL is visible in the comparison.
    transition = lambda j: _flow_grpo_std_dev_t(it.sigmas, j, a) * torch.sqrt(it.sigmas[j] - it.sigmas[j + 1])  # noqa: E731
    wrong, steps, _ = _flow_grpo_update(it, adv_nj, trained, 2, step_settings, transition)
    assert _update_error(it.w0, it.policy, wrong, steps) > 100


def test_densegrpo_parity(method_cfg):
    # T 4, G 3, 2 prompts; dense rewards from the ODE completion of every intermediate latent; a
    # psi(t) table given (as after calibration) so that psi, not a * sqrt(sigma / (1 - sigma)),
    # must be the step's std_dev_t in the log-prob and in the KL; one optimizer step per rollout
    # (the paper's gradient accumulation over all 8 batches), here 3 minibatches of 2.
    psi = [1.2, 0.9, 0.6, 0.3]
    it = Iteration(
        method_cfg(
            "densegrpo", ["num_steps=4", "group_size=3", "+step_scheduler.noise_levels=[" + ",".join(map(str, psi)) + "]"]
        ),
        PROMPTS,
        reward="bright",
        ref_model=_tiny_model(SEED + 1),
    )
    cfg, t, g = it.cfg, it.cfg.num_steps, it.plan.group_size
    trained = list(range(int(t * cfg.timestep_fraction)))
    assert it.plan.trained_step_indices() == trained and cfg.kl_beta > 0

    # Paper indexing: t = T..0, x_T the noise, step t is x_t -> x_{t-1}; R_t = R(ODE_n(x_t)) with
    # n = t (all remaining steps), R_0 = R(x_0) the SDE sample's own reward (App. B.2): the
    # reference rollout's ("intermediate", p, g, i) and ("final", p, g) rewards, sigma index
    # i = T - t. Eq. 7: dR_t = R_{t-1} - R_t; Eq. 10: per timestep over the G samples of the
    # prompt, (dR - mean) / (std + 1e-4) with numpy's population std (flow_grpo's tracker; the
    # paper names neither), group std as Eq. 10 prints it (config global_std false).
    def reward_at(i):  # [P, G] rewards of sigma index i (i = T: the final sample)
        key = (lambda p, k: ("final", p, k)) if i == t else (lambda p, k: ("intermediate", p, k, i))
        return np.array([[float(it.ref.rewards[key(p, k)]["bright"]) for k in range(g)] for p in range(len(PROMPTS))])

    r_paper = {tt: reward_at(t - tt) for tt in range(t + 1)}
    adv = np.empty((len(PROMPTS), g, t))
    for tt in range(1, t + 1):
        d_r = r_paper[tt - 1] - r_paper[tt]  # [P, G]
        a_t = (d_r - d_r.mean(1, keepdims=True)) / (np.std(d_r, axis=1, keepdims=True) + 1e-4)
        adv[:, :, t - tt] = a_t  # step t of the paper is the jump at sigma index T - t
    adv = torch.as_tensor(adv, dtype=torch.float32).reshape(-1, t).clamp(-cfg.adv_clip, cfg.adv_clip)
    torch.testing.assert_close(_adv_sde(it), adv, rtol=0, atol=ADV_TOL)

    def step_settings(j, x, v, x_next):  # Eq. 11: sigma_t = psi(t) in the mean and the std
        out = flow_grpo_sampler.sde_step_with_logprob(v, x, it.sigmas, j, cfg.noise_level, prev_sample=x_next, std_dev_t=psi[j])
        return _logprob_and_mean(out)

    ref, steps, norms = _flow_grpo_update(it, adv, trained, 2, step_settings, lambda j: torch.tensor(psi[j]))
    assert steps == 1
    assert it.check_update(ref, steps, norms) <= 1


# ---- E-GRPO and G²RPO (one optimizer step per branch point) -------------------------------------
def _branch_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rollout_buffer.py L87-130 (E-GRPO) = train_g2rpo_hps.py's MGAI: rewards [P, G, B, C];
    for each granularity c, per (prompt, branch): (r - mean) / (r.std() + 1e-8), unbiased; the
    granularities' advantages summed -> [P, G, B] (clamped after the sum, by the caller)."""
    p, g, b, c = rewards.shape
    out = torch.zeros(p, g, b)
    for ci in range(c):
        for pi in range(p):
            group = rewards[pi, :, :, ci]  # [G, B]: the script's rows of one prompt, one column per branch
            out[pi] += (group - group.mean(0)) / (group.std(0) + 1e-8)
    return out


def _branch_reference(it: Iteration, adv: torch.Tensor):
    """VisualGRPO fastvideo/trainer/grpo_trainer.py train_step L297-337 and Granular-GRPO
    train_g2rpo_hps.py train_one_step (the `for t_idx in range(train_timesteps)` loop, ~L638-689):
    for each branch point: ONE forward at batch 1 on the anchor latent (shared by the G
    branches), the prediction repeated G times, the G stored successors' log-probs, loss = mean
    over the G of max(-A r, -A clip(r)), backward, clip_grad_norm_, optimizer.step, zero_grad.
    The scripts hold one prompt per GPU and FSDP averages the gradients of the ranks: with P
    prompts here that is (1 / P) * sum over the prompts' losses. The states and old log-probs are
    the reference rollout's: transitions[(p, g, k)] leave the anchor state x_k of prompt p."""
    cfg, g, p = it.cfg, it.plan.group_size, len(it.prompts)
    model, norms, steps = it.reference_policy(), [], 0
    step = _sgd_step(model, norms)
    for b, k in enumerate(it.branch_steps()):
        merge = it.ref.transitions[(0, 0, k)].stop - k  # E-GRPO's merge_step (1 for G²RPO)
        for pi in range(p):  # one "rank" per prompt
            branches = [it.ref.transitions[(pi, gi, k)] for gi in range(g)]
            x = branches[0].x  # the anchor state, the same for the G branches
            v = _v1(model, x, it.sigmas[k], it, pi).repeat(g, 1, 1)
            x_next = torch.stack([tr.x_next for tr in branches])
            _, _, lp = branch_samplers.flow_grpo_step(
                v, x.unsqueeze(0).repeat(g, 1, 1), cfg.noise_level, it.sigmas, k, merge_step=merge, prev_sample=x_next
            )
            ratio = torch.exp(lp - torch.stack([tr.log_prob for tr in branches]))
            (_ppo(adv[pi, :, b], ratio, cfg.clip_eps).mean() / p).backward()
        step()
        steps += 1
    return model, steps, norms


def test_egrpo_parity(method_cfg):
    # T 5, the first 3 steps branch, tau 2.6 -> merge lengths [1, 1, 2]: the last branch is one
    # merged SDE jump sigma_2 -> sigma_4 (std at sigma_2, dt over both steps). Granularities [1, 2]
    # summed (config.yaml). Multi-reward as the official code: the raw sum 0.7 HPS + 0.3 CLIP
    # (reward_manager.py L174-196) normalised once (multi_reward combined).
    weights = {"bright": 0.7, "red": 0.3}
    it = Iteration(
        method_cfg("egrpo", ["num_steps=5", "group_size=3", "num_branch_steps=3", "tau=2.6"]), PROMPTS, weights=weights
    )
    assert [(j.start, j.stop) for j in it.plan.jumps] == [(0, 1), (1, 2), (2, 4)]
    assert list(it.cfg.granularities) == [1, 2]
    raw = 0.7 * it.ref_branch_rewards("bright") + 0.3 * it.ref_branch_rewards("red")  # [P, G, B, C]
    adv = _branch_advantages(raw).clamp(-it.cfg.adv_clip, it.cfg.adv_clip)  # grpo_trainer.py L241-243
    torch.testing.assert_close(torch.stack(it.adv, dim=-1), adv, rtol=0, atol=ADV_TOL)
    ref, steps, norms = _branch_reference(it, adv)
    assert steps == 3
    assert it.check_update(ref, steps, norms) <= 1


def test_g2rpo_parity(method_cfg):
    # T 4, SDE steps e = 0, 1, granularities [1, 2] (finetune_g2rpo_hps.sh). Two rewards as
    # train_g2rpo_hps_clip.py: each z-scored per granularity and summed (MGAI), then HPS advantages
    # + CLIP advantages UNWEIGHTED (multi_reward sum_advantages), clamped after the sum.
    it = Iteration(
        method_cfg("g2rpo", ["num_steps=4", "group_size=3", "num_branch_steps=2"]),
        PROMPTS,
        weights={"bright": 0.5, "red": 0.5},  # the weights must not matter here
    )
    assert [(j.start, j.stop) for j in it.plan.jumps] == [(0, 1), (1, 2)]
    adv = _branch_advantages(it.ref_branch_rewards("bright")) + _branch_advantages(it.ref_branch_rewards("red"))
    adv = adv.clamp(-it.cfg.adv_clip, it.cfg.adv_clip)
    torch.testing.assert_close(torch.stack(it.adv, dim=-1), adv, rtol=0, atol=ADV_TOL)
    ref, steps, norms = _branch_reference(it, adv)
    assert steps == 2
    assert it.check_update(ref, steps, norms) <= 1


# ---- MixGRPO -------------------------------------------------------------------------------------
def test_mixgrpo_parity(method_cfg):
    # T 6 -> max_timesteps T - 2 = 4, window 2, the window moves every iteration (iters_per_group
    # 1): iteration 1 uses steps [1, 2] (grpo_states.py progressive, stride 1). One prompt per GPU
    # as the script (train_batch_size 1), G 6, gradient_accumulation_steps 2 -> 3 optimizer steps.
    # Two rewards, each normalised, summed with weights that sum to 1 (advantage_aggr; the script
    # normalises its weights to sum 1, L765-767, as flowrl does: tested below).
    weights = {"bright": 2 / 3, "red": 1 / 3}
    it = Iteration(
        method_cfg(
            "mixgrpo", ["num_steps=6", "group_size=6", "window_size=2", "iters_per_group=1", "gradient_accumulation_steps=2"]
        ),
        PROMPTS[:1],
        weights=weights,
        iteration=1,
    )
    cfg, g, n_samples = it.cfg, it.plan.group_size, it.num_samples

    # grpo_states.py (progressive, GS 87-99, 148): the window moved once, range(start, min(start + w,
    # max_timesteps)), max_timesteps = T - 2 (TG 915-928): the reference sampler's SDE steps
    window = it.branch_steps()
    assert [j.start for j in it.plan.jumps] == window == [1, 2]

    # train_grpo_flux.py L427-455 (use_group, advantage_aggr): per reward model, per group,
    # (r - mean) / (r.std() + 1e-8) (unbiased); sum weighted by the reward weights; clamp in the loss.
    adv = torch.zeros(n_samples)
    for name, w in weights.items():
        r = it.ref_rewards(name).flatten()
        for i in range(n_samples // g):
            group = r[i * g : (i + 1) * g]
            adv[i * g : (i + 1) * g] += w * (group - group.mean()) / (group.std() + 1e-8)
    adv = adv.clamp(-cfg.adv_clip, cfg.adv_clip)
    flow_adv = _adv_sde(it)
    torch.testing.assert_close(flow_adv, adv.unsqueeze(1).expand_as(flow_adv), rtol=0, atol=ADV_TOL)

    # train_grpo_flux.py L543-610 (training_strategy part): for each sample i (batch 1), for each
    # window step in ascending order: the Flow-GRPO log-prob (sampling_utils.py L157-210),
    # policy_loss = max(-A r, -A clip(r)) / (gradient_accumulation_steps * len(window)), backward
    # (kl_coeff 0 in the script); when (i+1) % gradient_accumulation_steps == 0: clip, step, zero_grad.
    gas = cfg.gradient_accumulation_steps
    model, norms, steps = it.reference_policy(), [], 0
    step = _sgd_step(model, norms)
    for i in range(n_samples):
        for t in window:
            x, x_next, old = it.sde_sample(i, t)
            v = _v1(model, x, it.sigmas[t], it, i // g)
            _, lp = mixgrpo_sampler.flow_grpo_step(
                v, x.unsqueeze(0), cfg.noise_level, it.sigmas, t, prev_sample=x_next.unsqueeze(0)
            )
            loss = _ppo(adv[i], torch.exp(lp - old), cfg.clip_eps).mean() / (gas * len(window))
            loss.backward()
        if (i + 1) % gas == 0:
            step()
            steps += 1
    assert steps == 3
    assert it.check_update(model, steps, norms) <= 1


# ---- hand-worked: the KL form and the per-step normalisation of policy_update -------------------
class _ScalarVelocity(torch.nn.Module):
    """A toy "model": v(x, sigma) = theta everywhere; d log-prob / d theta is worked by hand."""

    def __init__(self, theta: float):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(float(theta)))

    def velocity(self, x, sigma, embeds):
        return self.theta.expand_as(x)


def _toy_rollout(x, sigmas, steps, theta, adv, group_size, noise=1.0):
    """A hand-built sde rollout: rows x [M, *latent] at every jump (one StepSettings each), the
    successor drawn with eps = `noise` everywhere, old log-probs under theta."""
    from flowrl.engine.rollout import JumpSet, Rollout
    from flowrl.models.base import PromptEmbeds

    m = x.shape[0]
    p = m // group_size
    sig = torch.tensor(sigmas)
    v = torch.full_like(x, theta)
    jump_sets = []
    for i, st in enumerate(steps):
        out = st(x, v, sig[i], sig[i + 1], noise=torch.full_like(x, noise))
        jump_sets.append(
            JumpSet(
                i,
                i + 1,
                st,
                x,
                torch.arange(p).repeat_interleave(group_size),
                out.prev_sample.unsqueeze(1),
                out.log_prob.unsqueeze(1),
            )
        )
    embeds = PromptEmbeds(torch.zeros(p, 1, 1), torch.zeros(p, 1))
    ro = Rollout(["p"] * p, group_size, embeds, sig, jump_sets, {}, torch.empty(0), 0, 0)
    return ro, [a.reshape(m, 1) for a in adv]


@pytest.mark.parametrize(("kl_form", "kl", "grad"), [("official", 0.0253125, 0.1265625), ("transition", 0.10125, 0.50625)])
def test_kl_form_hand_worked(kl_form, kl, grad):
    from flowrl.contract import Jump, StepPlan, StepSettings, UpdateSchedule
    from flowrl.engine.update import LossConfig, policy_update

    # One jump sigma 0.5 -> 0.25 (dt = -0.25) of the Flow-GRPO SDE with a = 0.5:
    #   std_dev_t = a sqrt(sigma / (1 - sigma)) = 0.5 * 1 = 0.5, std_dev_t^2 = 0.25
    #   mean = x (1 + std_dev_t^2 dt / (2 sigma)) + v (1 + std_dev_t^2 (1 - sigma) / (2 sigma)) dt
    #        = 0.9375 x - 0.28125 v                                  (c_v = 1.125 * -0.25)
    # x = 1, policy v = theta = 1.0 -> mu = 0.65625; reference v_ref = 0.6 -> mu_ref = 0.76875:
    #   (mu - mu_ref)^2 = 0.1125^2 = 0.01265625 in every element.
    # official   (flow_grpo): 0.01265625 / (2 std_dev_t^2)        = 0.01265625 / 0.5    = 0.0253125
    # transition (exact KL):  0.01265625 / (2 std_dev_t^2 |dt|)   = 0.01265625 / 0.125  = 0.10125  (1/|dt| = 4x)
    # d/dtheta, kl_beta 1, advantage 0 (no policy gradient): 2 c_v^2 (theta - v_ref) / (2 scale^2)
    #   official: 0.0791015625 * 0.4 / 0.25 = 0.1265625;  transition: / 0.0625 = 0.50625.
    step = StepSettings("sde", 0.5)
    x = torch.ones(1, 2, 3)
    ro, adv = _toy_rollout(x, (0.5, 0.25), [step], 1.0, [torch.zeros(1)], group_size=1)
    plan = StepPlan("toy", (0.5, 0.25), 1, "sde", (Jump(0, 1, step),), UpdateSchedule(trained=(0,)), False)
    model, grads = _ScalarVelocity(1.0), []

    def step_fn(cause=None):
        grads.append(float(model.theta.grad))
        model.theta.grad = None

    stats = policy_update(
        model,
        plan,
        ro,
        adv,
        step_fn,
        LossConfig(clip_eps=1e-4, kl_beta=1.0, kl_form=kl_form),
        reference_mean=lambda r, js, rows: torch.full((1, 2, 3), 0.76875),
    )
    assert stats.optimizer_steps == 1
    assert stats.metrics[0]["train/kl_loss"] == pytest.approx(kl, rel=1e-6)
    assert grads == [pytest.approx(grad, rel=1e-6)]


def test_policy_update_per_step_normalisation_hand_worked():
    from flowrl.contract import Jump, StepPlan, StepSettings, UpdateSchedule
    from flowrl.engine.update import LossConfig, policy_update

    # Two jumps with a given diffusion coefficient s (DenseGRPO-style std_dev_t = 0.5), v = theta:
    #   jump 0, sigma 0.5 -> 0.25:  c_v = dt (1 + s^2 (1 - sigma) / (2 sigma)) = -0.25 * 1.125 = -0.28125
    #   jump 1, sigma 0.25 -> 0:    c_v = -0.25 * (1 + 0.25 * 0.75 / 0.5) = -0.25 * 1.375   = -0.34375
    #   std = s sqrt(-dt) = 0.25 for both. Successor x' = mu + std * 1, so the log-prob (mean over
    #   dims of -(x' - mu)^2 / (2 std^2) + const) has d lp / d theta = (x' - mu) / std^2 * c_v = c_v / std:
    #   jump 0: -1.125, jump 1: -1.375.
    # At ratio 1 (the step_fn does not move theta, so every step sees ratio 1), a term's gradient is
    # -A * d lp / d theta. 4 samples, both jumps trained, an optimizer step every 2 samples
    # (DanceGRPO's / MixGRPO's accumulation), A = [1.0, 0.6, -0.2, 2.0]:
    #   step 1 (samples 0, 1; 4 terms): mean = (1.0 + 0.6) * (1.125 + 1.375) / 4 = 1.0
    #   step 2 (samples 2, 3; 4 terms): mean = (-0.2 + 2.0) * 2.5 / 4           = 1.125
    # (divided by all 8 terms instead: 0.5 and 0.5625; summed: 4.0 and 4.5.)
    steps = [StepSettings("sde", 0.0, std_dev_t=0.5), StepSettings("sde", 0.0, std_dev_t=0.5)]
    sigmas = (0.5, 0.25, 0.0)
    a = torch.tensor([1.0, 0.6, -0.2, 2.0])
    ro, adv = _toy_rollout(torch.ones(4, 2, 3), sigmas, steps, 0.0, [a, a], group_size=2)
    upd = UpdateSchedule(trained=(0, 1), step_every="samples", samples_per_step=2, prompts_per_rank=2)  # one rank, 4 samples
    plan = StepPlan("toy", sigmas, 2, "sde", tuple(Jump(i, i + 1, s) for i, s in enumerate(steps)), upd, False)
    model, grads = _ScalarVelocity(0.0), []

    def step_fn(cause=None):
        grads.append(float(model.theta.grad))
        model.theta.grad = None

    # max_batch 1: each term its own chunk, so the chunk share (numel / n_terms) is exercised too
    stats = policy_update(model, plan, ro, adv, step_fn, LossConfig(clip_eps=1e-4), max_batch=1)
    assert stats.optimizer_steps == 2 and stats.terms == 8
    assert grads == [pytest.approx(1.0, rel=1e-6), pytest.approx(1.125, rel=1e-6)]
    assert math.isclose(sum(grads), 2.125, rel_tol=1e-6)


def test_flowgrpo_drops_samples_with_zero_advantage_hand_worked():
    from flowrl.contract import Jump, StepPlan, StepSettings, UpdateSchedule
    from flowrl.engine.update import LossConfig, policy_update

    # flow_grpo train_sd3.py (L797-817 at ac4c86e) drops samples whose advantages are all 0 before
    # training: they neither count in the mean nor add a KL term. Same toy as above, one jump
    # (d lp / d theta = -1.125), one optimizer step over 4 samples, A = [1.0, -0.5, 0, 0]:
    #   kept (2 terms): -(1.0 - 0.5) * -1.125 / 2 = 0.28125;   not filtered (4 terms): 0.140625.
    step = StepSettings("sde", 0.0, std_dev_t=0.5)
    a = torch.tensor([1.0, -0.5, 0.0, 0.0])
    grads = {}
    for drop in (True, False):
        ro, adv = _toy_rollout(torch.ones(4, 2, 3), (0.5, 0.25), [step], 0.0, [a], group_size=2)
        upd = UpdateSchedule(trained=(0,), drop_zero_advantage=drop)
        plan = StepPlan("toy", (0.5, 0.25), 2, "sde", (Jump(0, 1, step),), upd, False)
        model, got = _ScalarVelocity(0.0), []

        def step_fn(cause=None, model=model, got=got):
            got.append(float(model.theta.grad))
            model.theta.grad = None

        stats = policy_update(model, plan, ro, adv, step_fn, LossConfig(clip_eps=1e-4), max_batch=4)
        grads[drop] = (got, stats.terms)
    assert grads[True] == ([pytest.approx(0.28125, rel=1e-6)], 2)
    assert grads[False] == ([pytest.approx(0.140625, rel=1e-6)], 4)


def test_mixgrpo_reward_weights_are_normalised_to_sum_one():
    # MixGRPO train_grpo_flux.py (L765-767) divides its reward weights by their sum: weights
    # 1, 1 give the same advantages as 0.5, 0.5.
    from flowrl.contract import RewardScores
    from flowrl.step_schedulers.sliding_window import SlidingWindowStepScheduler

    sched = SlidingWindowStepScheduler(num_steps=6, group_size=3, window_size=2)
    plan = sched.plan(0)
    parts = {"hps": torch.tensor([[1.0, 2.0, 4.0]]), "clip": torch.tensor([[3.0, 1.0, 2.0]])}
    total = parts["hps"] + parts["clip"]
    a1 = sched.advantages(RewardScores(parts, total, {"hps": 1.0, "clip": 1.0}), plan)
    a2 = sched.advantages(RewardScores(parts, total, {"hps": 0.5, "clip": 0.5}), plan)
    torch.testing.assert_close(a1[0], a2[0])
