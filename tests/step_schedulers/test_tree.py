"""BranchGRPO (`tree`): the hand-worked values of experiments/contenders/tree_methods.md §1.10 (fusion,
depth-wise advantages, the all-equal negative control, costs), the shipped tree's budget, a tree
rollout on the tiny model (layout, split noise, ratio 1), and a parity test against a reference loop
written out here (its own DanceGRPO step math, edges shuffled per emulated GPU, a step every GA edges,
loss sum / (GA x E_tree), GPUs averaged)."""

import copy
import math

import pytest
import torch

from flowrl.step_schedulers.tree import TreeStepScheduler, depth_advantages, fuse_rewards, tree_widths

PROMPTS = ["a red circle on a blue background", "a white square on a green background"]
R2 = 1 / math.sqrt(2)


def _tree(**kw):
    base = dict(num_steps=2, group_size=4, tree_splits=(0, 1))
    return TreeStepScheduler(**{**base, **kw})


# ---- §1.10 hand-worked values ------------------------------------------------------------------


def test_tree_a_fusion_and_depth_advantages():
    # T 2, splits {0, 1}: root -> a, b -> a0 a1 b0 b1, leaves (1, 3, 2, 6)
    leaves = torch.tensor([[1.0, 3.0, 2.0, 6.0]])
    widths = tree_widths(2, (0, 1))
    assert widths == [1, 2, 4]
    fused = fuse_rewards(leaves, widths)
    assert [f.tolist() for f in fused] == [[[3.0]], [[2.0, 4.0]], [[1.0, 3.0, 2.0, 6.0]]]
    adv = depth_advantages(fused)
    assert adv[0].tolist() == [[0.0]]
    torch.testing.assert_close(adv[1], torch.tensor([[-R2, R2]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv[2], torch.tensor([[-0.92582, 0.0, -0.46291, 1.38873]]), atol=1e-5, rtol=0)
    # through the scheduler: an edge takes its child's advantage, in the jump sets' [P*n_j, K_j]
    s = _tree()
    plan = s.plan(0)
    a = s.advantages(torch.cat([leaves, leaves * 2]), plan)  # 2 prompts: each its own tree
    assert [tuple(x.shape) for x in a] == [(2, 2), (4, 2)]
    torch.testing.assert_close(a[0][0], torch.tensor([-R2, R2]), atol=1e-5, rtol=0)  # root->a, root->b
    torch.testing.assert_close(a[1][:2], torch.tensor([[-0.92582, 0.0], [-0.46291, 1.38873]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(a[1][2:], a[1][:2], atol=1e-5, rtol=0)  # scale-free per tree
    b = plan.budget()
    assert (b["nfe_per_prompt"], b["reward_queries_per_prompt"], b["trained_steps_per_prompt"]) == (3, 4, 6)


def test_tree_a_probability_weighted_fusion():
    # lp(a0) = 0, lp(a1) = ln 3, lp(b0) = lp(b1): R(a) = 0.25 + 2.25 = 2.5, R(b) = 4
    leaves = torch.tensor([[1.0, 3.0, 2.0, 6.0]])
    lps = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0), 0.7, 0.7]])]
    fused = fuse_rewards(leaves, [1, 2, 4], lps)
    torch.testing.assert_close(fused[1], torch.tensor([[2.5, 4.0]]))
    torch.testing.assert_close(fused[0], torch.tensor([[3.25]]))  # softmax(0, 0) = 0.5 each
    torch.testing.assert_close(depth_advantages(fused)[1], torch.tensor([[-R2, R2]]), atol=1e-5, rtol=0)


def test_tree_b_sequential_step_repeats_its_leaf_advantage():
    s = _tree(num_steps=3)
    plan = s.plan(0)
    b = plan.budget()
    assert (b["nfe_per_prompt"], b["trained_steps_per_prompt"]) == (7, 10)
    a = s.advantages(torch.tensor([[1.0, 3.0, 2.0, 6.0]]), plan)
    assert [tuple(x.shape) for x in a] == [(1, 2), (2, 2), (4, 1)]
    torch.testing.assert_close(a[2].flatten(), a[1].flatten())
    torch.testing.assert_close(a[2].flatten(), torch.tensor([-0.92582, 0.0, -0.46291, 1.38873]), atol=1e-5, rtol=0)


def test_equal_leaves_and_tiny_std_give_zero_advantage():
    s = _tree(num_steps=3)
    plan = s.plan(0)
    for leaves in ([5.0, 5.0, 5.0, 5.0], [5.0, 5.0 + 1e-7, 5.0, 5.0]):  # std 0; std 5e-8 < 1e-6 (not eps division)
        a = s.advantages(torch.tensor([leaves], dtype=torch.float64), plan)
        assert all(bool((x == 0).all()) for x in a), leaves


def test_shipped_tree_budget_and_optimizer_steps():
    s = TreeStepScheduler()  # the yaml's values: T 20, splits 0 3 6 9, edges per step 12, 2 trees per GPU
    plan = s.plan(0)
    assert plan.tree_widths()[:11] == [1, 2, 2, 2, 4, 4, 4, 8, 8, 8, 16]
    b = plan.budget()
    assert b["nfe_per_prompt"] == 203 and b["reward_queries_per_prompt"] == 16 and b["trained_steps_per_prompt"] == 218
    steps = plan.optimizer_steps(2)  # one emulated GPU: 436 shuffled edges, 36 steps of 12 + one of 4
    assert len(steps) == 37
    sizes = [sum(int(blk.successors.sum()) for blk in st) for st in steps]
    assert sizes == [12] * 36 + [4]
    assert plan.loss_denominator(2) == 12 * 218
    assert len(plan.optimizer_steps(4)) == 37 and plan.loss_denominator(4) == 2 * 12 * 218
    # every edge exactly once
    seen = torch.zeros(plan.trained_mask(2).shape[0], 20, 2, dtype=torch.long)
    for st in steps:
        for blk in st:
            seen[blk.rows, blk.jump, : blk.successors.shape[1]] += blk.successors.long()
    assert int(seen.sum()) == 436 and int(seen.max()) == 1
    assert [plan.jump_layout(j, 2) for j in (0, 1, 3, 9, 10, 19)] == [(2, 2), (4, 1), (4, 2), (16, 2), (32, 1), (32, 1)]
    info = plan.to_json(2)
    assert info["tree_splits"] == [0, 3, 6, 9] and info["optimizer_steps_per_iteration"] == 37


def test_tree_plan_is_validated():
    with pytest.raises(ValueError, match="leaves"):
        _tree(group_size=8)
    with pytest.raises(ValueError, match="tree_splits"):
        _tree(tree_splits=(1, 1))
    with pytest.raises(ValueError, match="prob_weighted"):
        _tree(fusion="prob_weighted")


# ---- the rollout on the tiny model ---------------------------------------------------------------


def _score(images, prompts):
    return {"bright": images.mean(dim=(1, 2, 3))}


def _small(**kw):
    # T 4, splits {0, 2}: widths 1 2 2 4 4; 12 edges per tree
    base = dict(
        num_steps=4, group_size=4, tree_splits=(0, 2), update={"step_every": "edges", "edges_per_step": 5, "prompts_per_rank": 1}
    )
    return TreeStepScheduler(**{**base, **kw})


def test_tree_rollout_layout_split_noise_and_ratio_one(tiny_model):
    from flowrl.engine.rollout import rollout
    from flowrl.engine.update import LossConfig, policy_update
    from flowrl.sampling.steps import dance_sde_step

    s = _small()
    plan = s.plan(0, torch.Generator().manual_seed(0))
    tiny_model.eval()
    gen = torch.Generator().manual_seed(3)
    ro = rollout(tiny_model, plan, PROMPTS, _score, gen, max_batch=3)
    assert ro.nfe == 2 * (1 + 2 + 2 + 4)  # one forward per node and step, the leaves' x0 scored without one
    assert [tuple(js.log_prob.shape) for js in ro.jump_sets] == [(2, 2), (4, 1), (4, 2), (8, 1)]
    assert ro.parts["bright"].shape == (2, 4)
    for a, b in zip(ro.jump_sets, ro.jump_sets[1:]):  # children adjacent: the frontier is depth-first
        assert torch.equal(b.x, a.x_next.flatten(0, 1))
        assert torch.equal(b.embed_index, a.embed_index.repeat_interleave(a.x_next.shape[1]))
    # the noise: x_1 one draw per prompt, then randn([T, P*G]); a split child takes 4 x the noise of
    # its first leaf, its log-prob the unscaled std
    g2 = torch.Generator().manual_seed(3)
    x1 = tiny_model.initial_noise(2, g2)
    eps = torch.randn((4, 8, *tiny_model.latent_shape), generator=g2)
    js = ro.jump_sets[0]
    assert torch.equal(js.x, x1)
    with torch.no_grad():
        v = tiny_model.velocity(js.x, ro.sigmas[0].expand(2), ro.embeds)
    e = eps[0].view(2, 4, *x1.shape[1:])[:, ::2].reshape(4, *x1.shape[1:])
    ref = dance_sde_step(js.x.repeat_interleave(2, 0), v.repeat_interleave(2, 0), ro.sigmas[0], ro.sigmas[1], 0.3, noise=4 * e)
    torch.testing.assert_close(js.x_next.flatten(0, 1), ref.prev_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(js.log_prob.flatten(), ref.log_prob, rtol=1e-5, atol=1e-4)
    assert float(js.log_prob.mean()) < float(ro.jump_sets[1].log_prob.mean()) - 3  # about -s^2/2 = -8 per dim lower
    # the first optimizer step re-evaluates exactly the rollout's log-probs
    model = copy.deepcopy(tiny_model).train()
    model.requires_grad_(False)
    model.transformer.requires_grad_(True)
    adv = s.advantages(ro.parts["bright"], plan)
    calls = []

    def step_fn(cause=None):
        calls.append(cause)
        for p in model.transformer.parameters():
            p.grad = None

    stats = policy_update(model, plan, ro, adv, step_fn, LossConfig(clip_eps=1e-3), max_batch=3)
    assert stats.first_step_ratio_mean == 1.0
    assert stats.optimizer_steps == len(calls) == 3 and stats.terms == 24  # 2 GPUs x 12 edges, a step every 5


# ---- parity with a reference loop ------------------------------------------------------------------

LR, MAX_NORM = 0.5, 1.0


def _ref_dance_log_prob(x, v, sigma, sigma_next, x_next, eta=0.3):
    """DanceGRPO's step, written out: mean = x + dt v - 0.5 eta^2 score dt with
    score = -(x - (1 - sigma) x0) / sigma^2, x0 = x - sigma v; std = eta sqrt(-dt); the Gaussian
    log-density averaged over dims."""
    x, v, x_next = x.double(), v.double(), x_next.double()
    s, sn = float(sigma), float(sigma_next)
    dt = sn - s
    x0 = x - s * v
    score = -(x - (1 - s) * x0) / s**2
    mean = x + dt * v - 0.5 * eta**2 * score * dt
    std = eta * math.sqrt(-dt)
    lp = -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean()


def _ref_advantages(leaves: torch.Tensor, widths: list[int]) -> list[torch.Tensor]:
    """Per prompt's tree, per depth d: node c's reward = mean of its leaves; (R - mean) / (std + 1e-8),
    unbiased std, 0 if one node or std < 1e-6. Returns [P, n_d] per depth."""
    p, g = leaves.shape
    out = []
    for n in widths:
        a = torch.zeros(p, n, dtype=torch.float64)
        for q in range(p):
            r = torch.tensor(
                [float(leaves[q, c * (g // n) : (c + 1) * (g // n)].double().mean()) for c in range(n)], dtype=torch.float64
            )
            if n > 1 and float(r.std()) >= 1e-6:
                a[q] = (r - r.mean()) / (r.std() + 1e-8)
        out.append(a)
    return out


def _reference_update(model, plan, ro, ga: int, ppr: int, clip: float, denominator: str = "official"):
    """BranchGRPO's training loop on the rollout's edges: every GPU (ppr trees) lists its edges
    (step, node, child), shuffles them (the plan's seeded permutation), loops over them one by one:
    loss = max(-A r, -A clip(r)) / (GA x E_tree), backward; a step every GA edges and one for the rest;
    FSDP averages the GPUs' gradients. Returns (weights, steps, per-step losses)."""
    p, widths, t = ro.num_prompts, plan.tree_widths(), plan.num_steps
    adv = _ref_advantages(ro.parts["bright"], widths)
    e_tree = sum(widths[1:])
    params = [q for q in model.transformer.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    ranks = p // ppr
    per_rank = []
    for r in range(ranks):
        edges = []
        for j in range(t):
            k = widths[j + 1] // widths[j]
            for row in range(r * ppr * widths[j], (r + 1) * ppr * widths[j]):
                edges += [(j, row, c) for c in range(k)]
        perm = torch.randperm(len(edges), generator=torch.Generator().manual_seed(plan.update.seed + 1 + r))
        per_rank.append([edges[i] for i in perm.tolist()])
    n_steps = math.ceil(len(per_rank[0]) / ga)
    losses = []
    for o in range(n_steps):
        grads, loss_sum = [], 0.0
        for r in range(ranks):
            for j, row, c in per_rank[r][o * ga : (o + 1) * ga]:
                js = ro.jump_sets[j]
                k = js.x_next.shape[1]
                prompt = int(js.embed_index[row])
                node = (row - prompt * widths[j]) * k + c  # the child's index in its tree at depth j + 1
                a = max(-5.0, min(5.0, float(adv[j + 1][prompt, node])))
                x = js.x[row].unsqueeze(0)
                v = model.velocity(x, ro.sigmas[j].reshape(1), ro.embeds[torch.tensor([prompt])])
                lp = _ref_dance_log_prob(x, v, ro.sigmas[j], ro.sigmas[j + 1], js.x_next[row, c].unsqueeze(0))
                ratio = torch.exp(lp - float(js.log_prob[row, c]))
                term = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - clip, 1 + clip))
                div = ga * e_tree if denominator == "official" else len(per_rank[r][o * ga : (o + 1) * ga])
                loss = term / div
                loss.backward()
                loss_sum += float(loss.detach()) / ranks
            grads.append([q.grad.clone() for q in params])
            for q in params:
                q.grad = None
        for i, q in enumerate(params):
            q.grad = sum(gr[i] for gr in grads) / ranks
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss_sum)
    return torch.nn.utils.parameters_to_vector(params).detach(), n_steps, losses


def _flowrl_update(model, plan, ro, s, clip):
    from flowrl.engine.update import LossConfig, policy_update

    params = [q for q in model.transformer.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    losses, acc = [], [0.0]

    def backward(loss):
        acc[0] += float(loss.detach())
        loss.backward()

    def step_fn(cause=None):
        assert cause is None, cause
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(acc[0])
        acc[0] = 0.0

    adv = s.advantages(ro.parts["bright"], plan)
    stats = policy_update(model, plan, ro, adv, step_fn, LossConfig(clip_eps=clip), max_batch=64, backward=backward)
    return torch.nn.utils.parameters_to_vector(params).detach(), stats, losses


@pytest.mark.parametrize("ppr", [1, 2])
def test_branchgrpo_parity_with_reference_loop(tiny_model, ppr):
    from flowrl.engine.rollout import rollout

    torch.set_num_threads(1)
    prompts = PROMPTS * 2  # 4 prompts: 4 or 2 emulated GPUs
    s = _small(update={"step_every": "edges", "edges_per_step": 5, "prompts_per_rank": ppr})
    plan = s.plan(0, torch.Generator().manual_seed(11))
    base = copy.deepcopy(tiny_model).eval()
    base.requires_grad_(False)
    base.transformer.requires_grad_(True)
    ro = rollout(base, plan, prompts, _score, torch.Generator().manual_seed(5), max_batch=64)
    w0 = torch.nn.utils.parameters_to_vector(base.transformer.parameters()).detach().clone()
    clip = 1e-3
    w_flow, stats, flow_losses = _flowrl_update(copy.deepcopy(base).train(), plan, ro, s, clip)
    w_ref, ref_steps, ref_losses = _reference_update(copy.deepcopy(base).train(), plan, ro, 5, ppr, clip)
    # 12 edges per tree x ppr trees per GPU, a step every 5: ceil(12 ppr / 5)
    assert stats.optimizer_steps == ref_steps == math.ceil(12 * ppr / 5) == len(plan.optimizer_steps(4))
    assert stats.terms == 48
    ref_losses = torch.tensor(ref_losses)  # sums of +- terms: compared at the scale of the largest
    torch.testing.assert_close(torch.tensor(flow_losses), ref_losses, rtol=0, atol=1e-4 * float(ref_losses.abs().max()))
    dw_ref, dw_flow = w_ref - w0, w_flow - w0
    scale = float(dw_ref.abs().max())
    assert scale > 0
    assert float((dw_flow - dw_ref).abs().max()) <= 1e-3 * scale + 1e-6
    # negative control: the step mean instead of sum / (GA x E_tree) is a different update
    w_bad, _, _ = _reference_update(copy.deepcopy(base).train(), plan, ro, 5, ppr, clip, denominator="mean")
    assert float((w_bad - w0 - dw_ref).abs().max()) > 10 * (1e-3 * scale + 1e-6)
