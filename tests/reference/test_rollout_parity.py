"""flowrl's rollout engine against an independent reference sampler per method, fed the same noise.

Each method's yaml (conf/method/<m>.yaml, at a small size) runs through the engine
(`flowrl.engine.rollout.rollout`: the plan, batched forwards of up to 4 rows, the wavefront of
completions) and through the reference transcribed from its official sampler (tests/reference/:
own sigma grid, own step and log-prob, own loops over prompts, samples, branches and granularities,
own choice of the scored image). Both get the same KeyedNoise (tests/reference/common.py), so every
scored image, every reward, every old log-prob and every jump's start and end state must agree
element-wise, to the float rounding of batch-1 against batched forwards.

Negative controls: the comparison must catch each of the mistakes it exists for (a reference with
the mistake against the correct engine): the FLUX grid where the SD3 pipeline's belongs, a last step
with other noise (Flow-GRPO's last step on its grid has a std of ~0.01: still caught), a group's
shared instead of independent initial noise and the reverse, the final latent scored instead of
DanceGRPO's last x0 prediction.
"""

from __future__ import annotations

import pytest
import torch

from tests.reference import branch_samplers, dancegrpo_sampler, densegrpo_sampler, flow_grpo_sampler, mixgrpo_sampler
from tests.reference.common import KeyedNoise, ProbeReward, score_fn

PROMPTS = ["a red circle on a blue background", "a white square on a green background"]
MAX_BATCH = 4  # smaller than a rollout's 6 rows: the engine's chunking is exercised
# Measured residuals (batch-1 against batched forwards of the tiny random FLUX, fp32): <= 8e-7 on the
# states and images, <= 2e-7 on the log-probs, <= 3e-8 on the rewards; the bounds leave >= 10x
# margin. The negative controls land >= 3e3x beyond them (the smallest: Flow-GRPO's last step with
# other noise, 4e-2 on the final states, where that step's std is 0.006).
TOL = {"x": 1e-5, "x_next": 1e-5, "log_prob": 1e-5, "image": 1e-5, "reward": 1e-6}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the forwards are tiny, and two OpenMP threads on the 2 shared cores are
    slower (tests/engine/test_parity.py measured it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    """A tiny random FLUX transformer on 16 px images (decode: the pixels themselves)."""
    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

    torch.manual_seed(0)
    return TinyFluxModel(TinyFluxConfig(num_layers=1, num_single_layers=1, image_size=16)).eval()


def method_config(method: str, *overrides: str):
    """conf/method/<method>.yaml with method.* overrides ("num_steps=4"; "+key=..." adds a key)."""
    from flowrl.config.compose import compose

    extra = [f"+method.{o[1:]}" if o.startswith("+") else f"method.{o}" for o in overrides]
    return compose([f"method={method}", *extra]).method


def plan_of(cfg, iteration: int = 0):
    """The method's plan of `iteration`, its frozen draws from seed 0."""
    from hydra.utils import instantiate

    return instantiate(cfg.step_scheduler).plan(iteration, torch.Generator().manual_seed(0))


def engine_rollout(model, plan, prompts, reward, noise):
    from flowrl.engine.rollout import rollout

    images = len(prompts) * plan.group_size * int(torch.tensor(plan.score_shape).prod())  # every scored image
    return rollout(model, plan, prompts, score_fn(reward), max_batch=MAX_BATCH, keep_images=images, noise=noise)


# ---- the comparison: the engine's layout (flowrl.contract) read against the reference's keys -------
def differences(plan, ro, ref, granularities=()) -> dict[str, float]:
    """Max |engine - reference| of every compared quantity. A key one side has and the other lacks
    (another jump, another scored image) is an infinite difference."""
    p_n, g_n = len(ro.prompts), plan.group_size
    diff = dict.fromkeys(TOL, 0.0)

    def note(field, a, b):
        diff[field] = max(diff[field], float((a.float() - b.float()).abs().max()))

    # the jumps: start state, successor, old log-prob of every sample
    expected = set()
    for jump, js in zip(plan.jumps, ro.jump_sets):
        for p in range(p_n):
            for g in range(g_n):
                key = (p, g, jump.start)
                expected.add(key)
                tr = ref.transitions.get(key)
                if tr is None or tr.stop != jump.stop:
                    diff["x_next"] = float("inf")
                    continue
                m, k = (p * g_n + g, 0) if plan.trajectory == "sde" else (p, g)
                note("x", js.x[m], tr.x)
                note("x_next", js.x_next[m, k], tr.x_next)
                note("log_prob", js.log_prob[m, k], tr.log_prob)
    if set(ref.transitions) != expected:
        diff["x_next"] = float("inf")

    # the scored images and their rewards: the engine's lanes in order (rollout.py), rows p*G + g
    keys = []
    if plan.trajectory == "sde":
        lanes = [("final",)] + [("intermediate", i) for i in range(len(plan.intermediate_completions))]
        for lane in lanes:
            keys += [(lane[0], p, g, *lane[1:]) for p in range(p_n) for g in range(g_n)]
    else:
        for branch in plan.branches:
            for gran in granularities:
                keys += [("branch", p, g, branch.jump.start, gran) for p in range(p_n) for g in range(g_n)]
    if set(keys) != set(ref.images) or len(keys) != ro.images.shape[0]:
        diff["image"] = diff["reward"] = float("inf")
        return diff
    for idx, key in enumerate(keys):
        note("image", ro.images[idx], ref.images[key])
        kind, p, g, *rest = key
        for name, parts in ro.parts.items():
            if plan.trajectory == "anchor":
                b = [br.jump.start for br in plan.branches].index(rest[0])
                value = parts[p, g, b, list(granularities).index(rest[1])]
            elif plan.intermediate_completions:
                value = parts[p, g, plan.num_steps if kind == "final" else rest[0]]
            else:
                value = parts[p, g]
            note("reward", value, ref.rewards[key][name])
    return diff


def assert_matches(diff: dict[str, float]) -> None:
    bad = {k: v for k, v in diff.items() if not v <= TOL[k]}
    assert not bad, f"engine and reference differ: {bad} (tolerances {TOL})"


def assert_caught(diff: dict[str, float]) -> None:
    """A negative control must land far beyond the tolerance, not at its edge."""
    worst = max(v / TOL[k] for k, v in diff.items())
    assert worst > 1e3, f"the comparison did not catch the mistake: {diff}"


# ---- the methods ------------------------------------------------------------------------------------
def test_dancegrpo_matches_its_reference(model):
    cfg = method_config("dancegrpo", "num_steps=4", "group_size=3")
    plan, reward = plan_of(cfg), ProbeReward()
    noise = KeyedNoise(model.latent_shape)
    ro = engine_rollout(model, plan, PROMPTS, reward, noise)
    kw = dict(num_steps=4, group_size=3, eta=cfg.noise_level, shift=cfg.shift)
    assert_matches(differences(plan, ro, dancegrpo_sampler.sample(model, PROMPTS, reward, noise, **kw)))
    # negative controls: the final noisy sample scored instead of the last x0 prediction; every
    # sample its own initial noise instead of the group's shared one
    assert_caught(differences(plan, ro, dancegrpo_sampler.sample(model, PROMPTS, reward, noise, score="final", **kw)))
    assert_caught(differences(plan, ro, dancegrpo_sampler.sample(model, PROMPTS, reward, noise, init_same_noise=False, **kw)))


def test_flowgrpo_matches_its_reference(model):
    cfg = method_config("flowgrpo", "num_steps=4", "group_size=3")
    plan, reward = plan_of(cfg), ProbeReward()
    noise = KeyedNoise(model.latent_shape)
    ro = engine_rollout(model, plan, PROMPTS, reward, noise)
    kw = dict(num_steps=4, group_size=3, noise_level=cfg.noise_level)
    ref = flow_grpo_sampler.sample(model, PROMPTS, reward, noise, **kw)
    assert_matches(differences(plan, ro, ref))
    s = float(ref.sigmas[-2])  # the last step, s -> 0: std = a sqrt(s / (1 - s)) sqrt(s)
    assert ref.sigmas[-1] == 0 and cfg.noise_level * (s / (1 - s)) ** 0.5 * s**0.5 < 0.01  # nearly noiseless
    # negative controls: the FLUX scripts' grid; the last step's noise replaced (small as that step
    # is on this grid); a group's samples sharing one initial noise
    flux_grid = dancegrpo_sampler.sigma_grid(4, cfg.shift)
    assert_caught(differences(plan, ro, flow_grpo_sampler.sample(model, PROMPTS, reward, noise, sigmas=flux_grid, **kw)))
    other = lambda p, g: noise.eps("other", p, g)  # noqa: E731
    assert_caught(differences(plan, ro, flow_grpo_sampler.sample(model, PROMPTS, reward, noise, last_step_noise=other, **kw)))
    assert_caught(differences(plan, ro, flow_grpo_sampler.sample(model, PROMPTS, reward, noise, independent_noise=False, **kw)))


@pytest.mark.parametrize("psi", [None, [1.2, 0.9, 0.6, 0.3]], ids=["initial_psi", "calibrated_psi"])
def test_densegrpo_matches_its_reference(model, psi):
    # every intermediate latent's ODE completion is scored (the dense rewards); psi(t) is the step's
    # std_dev_t: Flow-GRPO's own where no table is given, else the table (as after calibration)
    extra = [] if psi is None else ["+step_scheduler.noise_levels=[" + ",".join(map(str, psi)) + "]"]
    cfg = method_config("densegrpo", "num_steps=4", "group_size=3", *extra)
    plan, reward = plan_of(cfg), ProbeReward()
    assert len(plan.intermediate_completions) == 4
    noise = KeyedNoise(model.latent_shape)
    ro = engine_rollout(model, plan, PROMPTS, reward, noise)
    kw = dict(num_steps=4, group_size=3, noise_level=cfg.noise_level, psi=psi)
    assert_matches(differences(plan, ro, densegrpo_sampler.sample(model, PROMPTS, reward, noise, **kw)))
    if psi is None:  # negative control: the FLUX grid (its psi_0 and completions inherit it)
        flux_grid = dancegrpo_sampler.sigma_grid(4, cfg.shift)
        assert_caught(differences(plan, ro, densegrpo_sampler.sample(model, PROMPTS, reward, noise, sigmas=flux_grid, **kw)))


def test_mixgrpo_matches_its_reference(model):
    # T 6 (max_timesteps 4), window 2 moving every iteration: iteration 1 samples steps 1, 2 by SDE
    cfg = method_config("mixgrpo", "num_steps=6", "group_size=3", "window_size=2", "iters_per_group=1")
    plan, reward = plan_of(cfg, iteration=1), ProbeReward()
    window = mixgrpo_sampler.progressive_window(1, 6, 2, 1)
    assert window == [1, 2] == [j.start for j in plan.jumps]
    noise = KeyedNoise(model.latent_shape)
    ro = engine_rollout(model, plan, PROMPTS, reward, noise)
    ref = mixgrpo_sampler.sample(model, PROMPTS, reward, noise, num_steps=6, group_size=3, window=window, eta=cfg.noise_level)
    assert_matches(differences(plan, ro, ref))


@pytest.mark.parametrize("completion_start", ["landing", "next"])
def test_egrpo_matches_its_reference(model, completion_start):
    # T 5, branch steps 0..2, tau 2.6 -> merge lengths [1, 1, 2]: the last branch is one merged jump
    # sigma_2 -> sigma_4; granularities [1, 2]. "next" is the released sampler's restart at k + 1.
    cfg = method_config(
        "egrpo", "num_steps=5", "group_size=3", "num_branch_steps=3", "tau=2.6", f"completion_start={completion_start}"
    )
    plan, reward = plan_of(cfg), ProbeReward()
    merges = [j.stop - j.start for j in plan.jumps]
    assert merges == [1, 1, 2]
    noise = KeyedNoise(model.latent_shape)
    ro = engine_rollout(model, plan, PROMPTS, reward, noise)
    ref = branch_samplers.sample(
        model,
        PROMPTS,
        reward,
        noise,
        num_steps=5,
        group_size=3,
        branch_steps=[0, 1, 2],
        merge_steps=merges,
        granularities=tuple(cfg.granularities),
        eta=cfg.noise_level,
        completion_start=completion_start,
    )
    assert_matches(differences(plan, ro, ref, cfg.granularities))


@pytest.mark.parametrize("granularities", [[1, 2], [1, 2, 3]])
def test_g2rpo_matches_its_reference(model, granularities):
    # T 5, SDE steps e = 0, 1. The stride-2 completion of e = 0 and the stride-3 one of e = 1 miss
    # sigma 0: the official loop decodes the x0 prediction of its last point, flowrl steps to 0 from it
    cfg = method_config("g2rpo", "num_steps=5", "group_size=3", "num_branch_steps=2", f"granularities={granularities}")
    plan, reward = plan_of(cfg), ProbeReward()
    noise = KeyedNoise(model.latent_shape)
    ro = engine_rollout(model, plan, PROMPTS, reward, noise)
    ref = branch_samplers.sample(
        model,
        PROMPTS,
        reward,
        noise,
        num_steps=5,
        group_size=3,
        branch_steps=[0, 1],
        granularities=granularities,
        eta=cfg.noise_level,
    )
    assert_matches(differences(plan, ro, ref, granularities))


def test_flowgrpo_on_a_tiny_sd3_with_cfg(tmp_path):
    # The real SD3 wrapper (tiny random pipeline saved by the test: tests/models/test_real_models.py)
    # with CFG 4.5 as Flow-GRPO trains SD3.5: the engine uses the wrapper's guidance; the reference
    # does the pipeline's guidance itself from the same weights with the wrapper's guidance off, on
    # the grid of the saved pipeline's own scheduler.
    from diffusers import FlowMatchEulerDiscreteScheduler

    from tests.models.test_real_models import _load, build_sd3

    path = build_sd3(tmp_path / "sd3")
    sd3 = _load("sd3", path, guidance_scale=4.5).eval()
    cfg = method_config("flowgrpo", "num_steps=4", "group_size=2")
    plan, reward = plan_of(cfg), ProbeReward()
    noise = KeyedNoise(sd3.latent_shape)
    ro = engine_rollout(sd3, plan, PROMPTS, reward, noise)
    sd3.guidance_scale = 1.0  # the raw conditional / unconditional predictions for the reference
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
    kw = dict(num_steps=4, group_size=2, noise_level=cfg.noise_level, guidance_scale=4.5, scheduler=scheduler)
    assert_matches(differences(plan, ro, flow_grpo_sampler.sample(sd3, PROMPTS, reward, noise, **kw)))
    # control: without guidance the images differ (CFG is visible in the comparison)
    assert_caught(differences(plan, ro, flow_grpo_sampler.sample(sd3, PROMPTS, reward, noise, **(kw | {"guidance_scale": 1.0}))))
