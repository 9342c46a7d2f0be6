"""flowrl's forward-process update (DiffusionNFT, AWM) against the independent reference loops of
tests/reference/forward_process.py, one iteration on the shipped tiny model.

  (a) flowrl: the method's step scheduler (conf/method/<m>.yaml at a small size) -> plan ->
      rollout (final samples, level noise) -> step_scheduler.advantages -> policy_update with
      `views` (the reference and the policy copy as plain models);
  (b) the reference loop, from the SAME x0 (rollout.final), level noise (rollout.level_noise),
      level table (plan.level_table) and sample shuffle (the plan's frozen randperm), from the
      same initial weights, with an identical AdamW: its own rewards (decoding x0 itself), its own
      advantage formula, micro-batching, loss math, accumulation and step placement.
Asserted: the rewards and advantages, the per-step loss (the mean over the step's terms), the
optimizer-step count, the gradient of every optimizer step before the clip (Adam's first step is
invariant to the loss scale, the gradient is not: a wrong normalisation shows up there), and the
weights after the update.

The reference view and the policy copy ("old" / "ema_kl") are deep copies of the model with
perturbed weights (as after earlier iterations), so v_old != v_theta, v_ema != v_theta and
v_ref != v_theta from the first term on: beta, r, both KL terms all reach the gradient.

Negative controls: each planted mistake of the reference (the advantage clamp left out, the
paper's velocity-space loss, the adaptive weight kept in the graph, v+ / v- exchanged; AWM's sigma
weight dropped, power 1, the advantage not divided by 5, no EMA KL) moves the first step's gradient
far beyond the tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.reference import forward_process as ref_fp

SEED = 0
PROMPTS = ["a red circle on a blue background", "a white square on a green background"]
MAX_BATCH = 4  # smaller than the 6 samples: flowrl's chunking against the reference's micro-batches
LR = 1e-3  # AdamW (the scripts' optimizer; betas 0.9 / 0.999, weight decay 1e-4, eps 1e-8)
MAX_GRAD_NORM = 1.0  # both scripts' train.max_grad_norm
# Gradient tolerance, relative to the largest gradient entry: flowrl's chunks of <= 4 rows per level
# column against the reference's micro-batches give forwards that differ by ~1e-7 relative; measured
# 4e-7..6e-6 on the first optimizer step, 2e-6..1.4e-5 on the second (which starts from weights that
# differ where Adam's first step divided a near-zero gradient by itself): >= 7x margin. The planted
# mistakes land at 0.07..46 (>= 650x beyond it).
GRAD_TOL = 1e-4
# Weights: Adam's step is lr g / (|g| + eps) per weight, so where a gradient entry is near zero the
# two sides' ~1e-7 gradient noise decides its sign (up to lr apart: measured 3e-4 at lr 1e-3). They
# are compared where every step's gradient entry exceeds 1e-3 of that step's largest (46-70% of the
# weights): measured <= 5.8e-7, bound 1e-2 lr (17x). Everywhere else the bound is Adam's own, 2 lr a step.
WEIGHT_TOL = 1e-2 * LR

NFT_BASE = ("method=diffusionnft", "method.group_size=3", "method.num_steps=4", "method.levels.fraction=0.75")
AWM_BASE = (
    "method=awm",
    "method.group_size=3",
    "method.num_steps=6",
    "method.levels.count=2",
    "method.levels.fraction=0.9",  # strata int(linspace(1, int(6 * 0.9) = 5, 3)) = [1, 3, 5]: {1, 2}, {3, 4}
    "method.levels.share_rows=2",  # blocks straddle the two prompts' groups
)
CASES = {
    "nft_default": NFT_BASE,
    # OCR-like: beta 0.1, two optimizer steps (the second sees moved weights), a KL that matters,
    # and adv_clip 0.5 so the advantage clamp binds (r saturates at 0 / 1 for some samples)
    "nft_beta0.1_two_steps": (
        *NFT_BASE,
        "method.beta=0.1",
        "method.optimizer_steps_per_rollout=2",
        "method.kl_beta=0.05",
        "method.adv_clip=0.5",
    ),
    "awm_default": AWM_BASE,
    "awm_two_steps": (*AWM_BASE, "method.optimizer_steps_per_rollout=2", "method.power=0.5", "method.kl_beta=0.05"),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (tests/engine/test_parity.py: tiny forwards are slower with two on the
    shared cores); both sides run in the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _score(images: torch.Tensor, prompts) -> dict[str, torch.Tensor]:
    """A continuous reward with distinct values per image: the mean of the red channel minus half the blue."""
    return {"redness": images[:, 0].mean(dim=(1, 2)) - 0.5 * images[:, 2].mean(dim=(1, 2))}


def _perturbed(model, seed: int, scale: float = 0.05):
    out = copy.deepcopy(model).requires_grad_(False).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.transformer.parameters():
            p.add_(scale * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
    return out


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _adamw(model):
    return torch.optim.AdamW(_trainable(model), lr=LR, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)


def _flat(model) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.transformer.parameters()).detach().clone()


class FlowrlIteration:
    """Side (a): one flowrl iteration on a copy of the tiny model; keeps what side (b) replays."""

    def __init__(self, make_cfg, tiny_model, overrides):
        from hydra.utils import instantiate

        from flowrl.contract import RewardScores
        from flowrl.engine.rollout import rollout
        from flowrl.engine.update import LossConfig, policy_update

        self.cfg = make_cfg(*overrides).method
        self.sched = instantiate(self.cfg.step_scheduler)
        self.plan = self.sched.plan(0, torch.Generator().manual_seed(SEED))
        model = copy.deepcopy(tiny_model).eval()
        model.requires_grad_(False)
        model.transformer.requires_grad_(True)
        self.initial = copy.deepcopy(model)  # the reference loop's starting weights
        self.w0 = _flat(model)
        self.ref_view = _perturbed(model, 1)  # "reference"
        self.copy_view = _perturbed(model, 2)  # the plan's policy copy ("old" / "ema_kl")
        names = {c.name for c in self.plan.policies}
        assert names == {"old"} or names == {"ema_kl"}, names
        self.views_called: dict[str, int] = {}

        @torch.no_grad()
        def views(name, x, sigma, embeds):
            self.views_called[name] = self.views_called.get(name, 0) + x.shape[0]
            view = self.ref_view if name == "reference" else self.copy_view
            assert name == "reference" or name in names
            return view.velocity(x, sigma, embeds)

        # DiffusionNFT samples with its old policy (the module swaps it in): here its copy
        sampler = self.copy_view if any(c.samples for c in self.plan.policies) else model
        self.ro = rollout(sampler, self.plan, PROMPTS, _score, torch.Generator().manual_seed(SEED), max_batch=MAX_BATCH)
        self.scores = RewardScores.single("redness", self.ro.parts["redness"])
        self.adv = self.sched.advantages(self.scores, self.plan, PROMPTS)
        self.policy = model.train()
        self.grads: list[torch.Tensor] = []
        self.losses: list[float] = []
        opt = _adamw(self.policy)
        params = _trainable(self.policy)
        acc = [0.0]

        def step_fn(cause=None):
            assert cause is None, cause
            self.grads.append(ref_fp._flat_grad(params))
            self.losses.append(acc[0])
            acc[0] = 0.0
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            opt.step()
            opt.zero_grad(set_to_none=True)

        def backward(loss):
            acc[0] += float(loss.detach())
            loss.backward()

        self.stats = policy_update(
            self.policy, self.plan, self.ro, self.adv, step_fn, LossConfig(), MAX_BATCH, backward=backward, views=views
        )

    @property
    def num_samples(self) -> int:
        return len(PROMPTS) * self.plan.group_size

    def replay(self, micro_batch: int = 3) -> ref_fp.Replay:
        """Side (b)'s inputs: the rollout's x0 and level noise, the plan's level table and shuffle,
        rewards the reference computes itself from x0."""
        g, n = self.plan.group_size, self.num_samples
        model = self.initial
        with torch.no_grad():
            rewards = _score(model.decode(self.ro.final), None)["redness"].view(len(PROMPTS), g)

        def embeds(rows):
            return model.encode_prompts([PROMPTS[int(i) // g] for i in rows])

        # the script's torch.randperm of the samples before batching: the draw the plan froze
        # (flowrl.contract.plan: randperm over the samples from the update seed + 1)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.plan.update.seed + 1))
        return ref_fp.Replay(
            x0=self.ro.final.detach().clone(),
            sigmas=self.ro.sigmas.clone(),
            level_index=self.plan.level_table(len(PROMPTS)),
            level_noise=self.ro.level_noise.detach().clone(),
            embeds=embeds,
            rewards=rewards,
            order=order,
            steps=self.plan.update.steps_per_rollout,
            micro_batch=micro_batch,
        )

    def reference(self, mistake: str | None = None) -> tuple[ref_fp.Result, torch.nn.Module]:
        policy = copy.deepcopy(self.initial).train()
        opt = _adamw(policy)
        from flowrl.contract.objectives import NegativeAware

        obj, m = self.plan.objective, self.cfg
        if isinstance(obj, NegativeAware):
            res = ref_fp.nft_update(
                policy, self.copy_view, self.ref_view, self.replay(), opt, beta=m.beta, adv_clip_max=m.adv_clip,
                kl_beta=m.kl_beta, max_grad_norm=MAX_GRAD_NORM, mistake=mistake,
            )  # fmt: skip
        else:
            res = ref_fp.awm_update(
                policy, self.ref_view, self.copy_view, self.replay(), opt, adv_clip_max=m.adv_clip,
                advantage_max=1.0, ghuber_power=m.power, beta=m.kl_beta, ema_beta=m.kl_ema_beta,
                max_grad_norm=MAX_GRAD_NORM, mistake=mistake,
            )  # fmt: skip
        assert obj.views  # the objective read its views
        return res, policy


def _grad_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def iterations():
    """One flowrl iteration per case, shared by the parity test and the negative controls."""
    return {}


def _iteration(iterations, name, make_cfg, tiny_model) -> FlowrlIteration:
    if name not in iterations:
        iterations[name] = FlowrlIteration(make_cfg, tiny_model, CASES[name])
    return iterations[name]


@pytest.mark.parametrize("case", list(CASES))
def test_update_matches_the_reference_loop(case, make_cfg, tiny_model, iterations):
    it = _iteration(iterations, case, make_cfg, tiny_model)
    res, ref_policy = it.reference()
    n = it.num_samples
    # the engine scored x0 itself, and the advantages are the stat tracker's (clamped)
    torch.testing.assert_close(it.ro.parts["redness"], it.replay().rewards, rtol=0, atol=1e-6)
    assert float(it.ro.parts["redness"].std()) > 0
    torch.testing.assert_close(it.adv[0].flatten(), res.advantages, rtol=0, atol=1e-5)
    # the objective's per-sample weight: r for NFT, A / 5 for AWM (the maps of the contract records)
    obj = it.plan.objective
    if hasattr(obj, "beta"):
        torch.testing.assert_close(res.weights, (it.adv[0].flatten() / obj.adv_clip / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(res.weights, it.adv[0].flatten() * obj.adv_scale, rtol=0, atol=1e-6)
    # every (sample, level) term trained once, the views read at every term
    k = it.plan.levels.count
    assert it.stats.terms == n * k and it.stats.rows == n * k
    assert it.views_called == {v: n * k for v in obj.views}
    # the optimizer steps, the per-step loss, the gradients, the weights
    assert it.stats.optimizer_steps == res.optimizer_steps == len(it.plan.optimizer_steps(len(PROMPTS)))
    assert res.optimizer_steps == it.plan.update.steps_per_rollout
    assert it.losses == pytest.approx(res.losses, rel=1e-5, abs=1e-7)
    for o, (ga, gb) in enumerate(zip(it.grads, res.grads, strict=True)):
        err = _grad_error(ga, gb)
        assert err < GRAD_TOL, f"optimizer step {o}: gradient error {err:.2e} of the largest entry"
    dw = (_flat(it.policy) - _flat(ref_policy)).abs()
    stable = torch.stack([g.abs() > 1e-3 * g.abs().max() for g in res.grads]).all(dim=0)
    assert float(stable.float().mean()) > 0.4
    assert float(dw[stable].max()) < WEIGHT_TOL, float(dw[stable].max())
    assert float(dw.max()) <= 2 * LR * res.optimizer_steps
    assert float((_flat(ref_policy) - it.w0).abs().max()) > 0.5 * LR  # the update moved the weights


NEGATIVE = [
    ("nft_beta0.1_two_steps", "no_adv_clamp"),
    ("nft_default", "velocity_space"),
    ("nft_default", "weight_with_grad"),
    ("nft_default", "swap_policies"),
    ("awm_default", "no_sigma_weight"),
    ("awm_default", "plain_mse"),
    ("awm_default", "adv_unscaled"),
    ("awm_two_steps", "no_ema_kl"),
]


@pytest.mark.parametrize("case,mistake", NEGATIVE, ids=[f"{c}-{m}" for c, m in NEGATIVE])
def test_each_planted_mistake_is_caught(case, mistake, make_cfg, tiny_model, iterations):
    it = _iteration(iterations, case, make_cfg, tiny_model)
    if mistake == "no_adv_clamp":  # the clamp must bind in this case for the control to mean anything
        raw = ref_fp.stat_tracker_advantages(it.replay().rewards)
        assert float(raw.abs().max()) > it.cfg.adv_clip
    res, _ = it.reference(mistake)
    # some mistakes show in one optimizer step only (the clamp binds for samples of the second)
    errors = [_grad_error(ga, gb) for ga, gb in zip(it.grads, res.grads)]
    assert max(errors) > 100 * GRAD_TOL, errors


@pytest.mark.slow
def test_module_rolls_out_under_the_old_copy_and_soft_updates_it(make_cfg, monkeypatch):
    # End to end through GRPOModule (flowrl.training.loop.train, two iterations of DiffusionNFT on the
    # tiny model, large lr): the old copy starts at theta_0, the rollout of iteration 2 runs under it
    # (module.copies.sampling), and after iteration k it is d_k old + (1 - d_k) theta_k with
    # d_k = min(rate * k, cap) (here rate 0.3, cap 0.5: d_1 = 0.3, d_2 = 0.5, so the copy trails theta).
    import flowrl.training.module as module_mod
    from flowrl.training.loop import train
    from flowrl.training.module import GRPOModule
    from tests.runs import SMALL

    seen: dict = {"rollout": [], "before": [], "after": [], "old": [], "steps": []}
    rollout_fn = module_mod.rollout

    def spy_rollout(model, plan, *args, **kwargs):
        seen["rollout"].append(_flat(model))  # the weights the rollout samples with
        return rollout_fn(model, plan, *args, **kwargs)

    step = GRPOModule.training_step

    def spy_step(self, batch, batch_idx):
        seen["before"].append(_flat(self.model))
        out = step(self, batch, batch_idx)
        seen["after"].append(_flat(self.model))
        seen["old"].append(torch.cat([s.flatten() for s in self.copies.shadow["old"]]).clone())
        seen["steps"].append(self.optimizer_steps_done)
        return out

    monkeypatch.setattr(module_mod, "rollout", spy_rollout)
    monkeypatch.setattr(GRPOModule, "training_step", spy_step)
    cfg = make_cfg(
        *SMALL,
        "method=diffusionnft",
        "reward=geneval_clip",  # continuous: every group has a spread, every iteration a gradient
        "method.old_decay_rate=0.3",
        "method.lr=0.01",
        "train.check_lr_finetune=false",
        "val.max_prompts=2",
        "logger.experiment_name=nft_copies",
    )
    train(cfg)
    assert seen["steps"] == [1, 2]
    theta0, theta1, theta2 = seen["before"][0], seen["after"][0], seen["after"][1]
    assert torch.equal(seen["before"][1], theta1)
    assert float((theta1 - theta0).abs().max()) > 1e-3  # the first update moved theta
    # iteration 1 sampled with theta_0 (the copy starts equal), iteration 2 with the old copy
    torch.testing.assert_close(seen["rollout"][0], theta0, rtol=0, atol=0)
    old1 = 0.3 * theta0 + 0.7 * theta1
    torch.testing.assert_close(seen["old"][0], old1, rtol=0, atol=1e-6)
    torch.testing.assert_close(seen["rollout"][1], seen["old"][0], rtol=0, atol=1e-6)
    assert float((seen["rollout"][1] - theta1).abs().max()) > 1e-4  # not theta_1
    torch.testing.assert_close(seen["old"][1], 0.5 * old1 + 0.5 * theta2, rtol=0, atol=1e-6)
