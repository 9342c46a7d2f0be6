"""Multi-GPU through Lightning, on 2 CPU processes (gloo DDP): a group never spans ranks, and the
gradient DDP applies equals the one a single process computes over the union of the two ranks'
prompts with the same noise."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

# run as a script (Lightning re-executes it for rank 1); its overrides are imported from it
DDP_CHECK = Path(__file__).resolve().parents[1] / "ddp_check.py"


def _merge(rollouts):
    """One Rollout over the prompts of several (each rank's), jump sets concatenated in rank order."""
    from flowrl.engine.rollout import JumpSet, Rollout
    from flowrl.models.base import PromptEmbeds

    offsets, n = [], 0
    for ro in rollouts:
        offsets.append(n)
        n += ro.num_prompts
    jump_sets = []
    for j in range(len(rollouts[0].jump_sets)):
        sets = [ro.jump_sets[j] for ro in rollouts]
        jump_sets.append(
            JumpSet(
                sets[0].start,
                sets[0].stop,
                sets[0].step,
                torch.cat([s.x for s in sets]),
                torch.cat([s.embed_index + off for s, off in zip(sets, offsets, strict=True)]),
                torch.cat([s.x_next for s in sets]),
                torch.cat([s.log_prob for s in sets]),
            )
        )
    first = rollouts[0]
    return Rollout(
        [p for ro in rollouts for p in ro.prompts],
        first.group_size,
        PromptEmbeds.cat([ro.embeds for ro in rollouts]),
        first.sigmas,
        jump_sets,
        {k: torch.cat([ro.parts[k] for ro in rollouts]) for k in first.parts},
        first.images,
        sum(ro.nfe for ro in rollouts),
        sum(ro.forwards for ro in rollouts),
    )


@pytest.mark.slow
def test_ddp_gradient_equals_a_single_process_over_both_ranks_prompts(make_cfg, tmp_path):
    from safetensors.torch import load_file

    from flowrl.engine.update import policy_update
    from flowrl.training.build import PromptBatches, build_module
    from tests.ddp_check import OVERRIDES

    proc = subprocess.run([sys.executable, str(DDP_CHECK), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    g0, g1 = load_file(str(tmp_path / "grad_rank0.safetensors")), load_file(str(tmp_path / "grad_rank1.safetensors"))
    assert g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)  # DDP: the same gradient on both ranks
    assert (tmp_path / "run" / "final_model").is_dir()  # rank 0 saved

    # The single-process reference: the two ranks' rollouts (rank r: prompts drawn with rank r's
    # seed, plan and noise from the generator seeded by (seed, iteration 0, rank)), merged
    # into one rollout of both prompts; the first optimizer step's gradient of policy_update (the
    # mean over the union's terms). DDP averaged the two ranks' means: equal term counts, so equal.
    torch.set_num_threads(1)
    single = [o for o in OVERRIDES if not o.startswith("trainer")]
    cfg = make_cfg(*single, output_dir=tmp_path / "single")
    module, data = build_module(cfg)
    rollouts, advantages = [], []
    for rank in (0, 1):
        module.generator = torch.Generator().manual_seed(module.iteration_seed(0, rank))  # rank r's iteration 0
        plan = module.step_scheduler.plan(0, module.generator)
        prompts = PromptBatches(data.train, cfg.train.prompts_per_step, 1, cfg.seed, rank=rank, world=2)[0]
        ro, scores = module.rollout(prompts, plan)
        rollouts.append(ro)
        advantages.append(module.step_scheduler.advantages(scores, plan, prompts))
    assert rollouts[0].prompts != rollouts[1].prompts or not torch.equal(
        rollouts[0].jump_sets[0].x_next, rollouts[1].jump_sets[0].x_next
    )
    merged = _merge(rollouts)
    adv = [torch.cat([a[j] for a in advantages]) for j in range(len(advantages[0]))]
    module.model.train()
    grads = []

    def first_step(cause=None):
        if not grads:
            grads.append({n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None})
        for p in module.model.parameters():
            p.grad = None

    policy_update(module.model, plan, merged, adv, first_step, module.loss_cfg, cfg.train.max_batch)
    ref = grads[0]
    assert ref.keys() == g0.keys()
    # Tolerance: the union's forwards batch the two prompts together (the ranks batched one each)
    # and the sum order differs: rounding of ~1e-6 relative; a wrong normalisation would be 2x.
    for k in ref:
        torch.testing.assert_close(g0[k], ref[k], rtol=1e-4, atol=1e-7 * max(1.0, float(ref[k].abs().max())))
    assert any(float(v.abs().max()) > 0 for v in ref.values())
