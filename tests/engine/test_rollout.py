"""flowrl.engine.rollout on the tiny model: the layout and NFE of full-trajectory and anchor
rollouts, shared initial noise, the image a plan scores, batching that leaves results unchanged,
and a ratio of exactly 1 when the first optimizer step re-evaluates the rollout's log-probs."""

import pytest
import torch
from hydra.utils import instantiate

from flowrl.config.compose import config_options
from flowrl.engine.rollout import rollout
from flowrl.step_schedulers.entropy_merge import EntropyMergeStepScheduler
from flowrl.step_schedulers.singular_stochastic import SingularStochasticStepScheduler

PROMPTS = ["a red circle on a blue background", "a white square on a green background"]


def _shapes_score(images, prompts):
    from flowrl.rewards.shapes import ShapesReward

    return {"shapes": ShapesReward()(images, prompts)}


def _small_scheduler(make_cfg, method: str, *extra):
    """A method config at a small size (its scheduler's own small_overrides), as built for training."""
    small = instantiate(make_cfg(f"method={method}").method.step_scheduler).small_overrides
    g3 = () if any(o.startswith("method.tree_splits") for o in small) else ("method.group_size=3",)  # a tree's G is 2^splits
    return instantiate(make_cfg(f"method={method}", *small, *g3, *extra).method.step_scheduler)


# ---- full trajectories (DanceGRPO, Flow-GRPO, ...) ---------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast"])
@pytest.mark.parametrize("method", config_options("method"))
def test_ratio_is_exactly_one_before_first_update(make_cfg, tiny_model, method, precision):
    # Every term of the first optimizer step re-evaluated with the same weights (train mode, grad
    # on) reproduces the rollout's log-prob bit for bit: ratio = exp(0) = 1 exactly. The engine
    # runs the first step's rows of a jump as chunks of their own and the update uses the same
    # chunks (max_batch 4 splits the 6 rows of the sde plans). After that first optimizer step the
    # weights have moved, so the later steps' ratios may leave 1 (they do in the official scripts).
    from flowrl.engine.rollout import chunks, jump_log_prob

    sched = _small_scheduler(make_cfg, method)
    plan = sched.plan(0, torch.Generator().manual_seed(0))
    if plan.trajectory == "final":
        pytest.skip("a forward-process plan keeps no log-probs (its terms: tests/engine/test_forward_process.py)")
    tiny_model.precision = precision  # bf16 autocast: the same forwards in rollout and training, fp32 step math
    tiny_model.eval()
    ro = rollout(tiny_model, plan, PROMPTS, _shapes_score, torch.Generator().manual_seed(0), max_batch=4)
    tiny_model.train()
    try:
        first = plan.optimizer_steps(len(PROMPTS))[0]
        assert first, method
        for block in first:
            js = ro.jump_sets[block.jump]
            for sl in chunks(block.rows.numel(), 4):
                rows = block.rows[sl]
                out = jump_log_prob(tiny_model, ro, js, rows)
                assert out.log_prob.requires_grad
                ratio = torch.exp(out.log_prob - js.log_prob[rows].flatten())
                assert torch.equal(ratio, torch.ones_like(ratio)), (method, block.jump)
    finally:
        tiny_model.eval()
        tiny_model.precision = "fp32"


def test_rollout_same_initial_noise_and_nfe(tiny_model):
    from flowrl.step_schedulers.uniform import UniformStepScheduler

    prompt = ["a red circle on a blue background"]
    sched = UniformStepScheduler(num_steps=3, group_size=4, same_initial_noise=True)
    ro = rollout(tiny_model, sched.plan(0), prompt, _shapes_score, torch.Generator().manual_seed(0), max_batch=3)
    # 4 rows x 3 steps = 12 NFE; with one optimizer step over all samples (the default update)
    # every step's rows are chunked 3 + 1 -> 6 forwards; the last x0 is scored (no extra NFE)
    assert ro.nfe == 4 * 3 and ro.forwards == 6 and ro.images.shape == (4, 3, 32, 32)
    assert ro.parts["shapes"].shape == (1, 4) and len(ro.jump_sets) == 3
    x1 = ro.jump_sets[0].x
    assert torch.equal(x1[0], x1[3])  # same x_1 in the group
    assert not torch.equal(ro.jump_sets[1].x[0], ro.jump_sets[1].x[3])  # different SDE noise after
    sched2 = UniformStepScheduler(num_steps=3, group_size=4, same_initial_noise=False)
    ro2 = rollout(tiny_model, sched2.plan(0), prompt, _shapes_score, torch.Generator().manual_seed(0))
    assert not torch.equal(ro2.jump_sets[0].x[0], ro2.jump_sets[0].x[3])


def test_dancegrpo_scores_the_last_steps_x0_prediction(tiny_model):
    # train_grpo_flux.py decodes the last step's pred_original_sample, x_{T-1} - sigma_{T-1} v,
    # not the final SDE sample (which carries the last step's noise).
    from flowrl.sampling.steps import predict_x0
    from flowrl.step_schedulers.uniform import UniformStepScheduler

    images = []

    def keep(im, prompts):
        images.append(im)
        return _shapes_score(im, prompts)

    plan = UniformStepScheduler(num_steps=3, group_size=2, score="last_x0").plan(0)
    ro = rollout(tiny_model, plan, PROMPTS[:1], keep, torch.Generator().manual_seed(0))
    js = ro.jump_sets[2]
    with torch.no_grad():
        v = tiny_model.velocity(js.x, ro.sigmas[2].expand(2), ro.embeds[js.embed_index])
    expected = tiny_model.decode(predict_x0(js.x, v, ro.sigmas[2]))
    torch.testing.assert_close(images[0], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(images[0], tiny_model.decode(js.x_next[:, 0]), atol=1e-3)


# ---- anchor plans (E-GRPO, G²RPO) ------------------------------------------------------------


def test_anchor_rollout_layout_nfe_and_shared_start(tiny_model):
    from flowrl.rewards.shapes import ShapesReward

    reward = ShapesReward()
    sched = SingularStochasticStepScheduler(num_steps=6, group_size=3, num_branch_steps=2, granularities=[1, 2])
    prompts = ["a red circle on a blue background", "a white square on a green background"]
    ro = rollout(tiny_model, sched.plan(0), prompts, lambda im, p: {"shapes": reward(im, p)}, torch.Generator().manual_seed(0), 4)
    assert ro.parts["shapes"].shape == (2, 3, 2, 2)  # [P, G, branches, granularities]
    js = ro.jump_sets[1]
    assert js.x.shape[0] == 2 and js.x_next.shape[:2] == (2, 3) and js.log_prob.shape == (2, 3)
    # completions: e=0: g1 1..6 (5 NFE), g2 [1, 2, 4, 6] (3); e=1: g1 2..6 (4), g2 [2, 3, 5 -> 6] (2)
    # rows P*G = 6 -> 6 * (5+3+4+2) = 84, plus the anchor's velocities at steps 0 and 1 (2 x 2 prompts);
    # the jumps themselves reuse the anchor velocity.
    assert ro.nfe == 84 + 4
    # the papers' count charges each sample its jump: anchor 1 + G * (2 jumps + 14) per prompt
    assert sched.plan(0).budget()["nfe_per_prompt"] == 1 + 3 * (2 + 5 + 3 + 4 + 2)


def test_wavefront_batching_does_not_change_results(tiny_model):
    from flowrl.rewards.shapes import ShapesReward

    reward = ShapesReward()
    plan = EntropyMergeStepScheduler(num_steps=8, group_size=3, num_branch_steps=3, tau=1.2).plan(0)
    prompts = ["a red circle on a blue background", "a blue square on a white background"]
    runs = [
        rollout(tiny_model, plan, prompts, lambda im, p: {"shapes": reward(im, p)}, torch.Generator().manual_seed(1), mb)
        for mb in (64, 5)
    ]
    for a, b in zip(runs[0].jump_sets, runs[1].jump_sets, strict=True):
        torch.testing.assert_close(a.x_next, b.x_next, atol=1e-5, rtol=0)
    assert runs[0].forwards < runs[1].forwards and runs[0].nfe == runs[1].nfe
    torch.testing.assert_close(runs[0].images, runs[1].images, atol=1e-4, rtol=0)
