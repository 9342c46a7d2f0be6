"""`make bench`: performance measured side by side in one run (this machine is shared and noisy,
so only figures from one run are compared). Writes experiments/bench/results.md and results.csv.

For each method at its paper defaults (conf/method/<m>.yaml, composed by flowrl.config.compose),
one prompt per iteration, a FLUX-architecture model with random weights:
  (a) where the engine's rollout time goes: model forwards, reward, the rest (engine overhead);
  (b) flowrl's rollout engine vs a peer-style loop (benchmarks/peers.py: one branch point at a
      time, in the official DanceGRPO / Flow-GRPO / E-GRPO / G²RPO / MixGRPO scripts' batch sizes)
      on the same plan: the same scored images (its noise is the engine's noise source with the
      engine's seed, and it samples on the weights the engine sampled on), the same NFE as the
      papers count them;
  (c) the papers' per-prompt budget (NFE, reward queries, backward passes) next to the measured
      wall time of one GRPO iteration: rollout + advantages + training forwards/backwards.
Plus the embedded model's cost by patch size (why the shipped model uses 4x4 patches).

    python -m benchmarks.bench                      # the full run (make bench), < 10 min on 2 cores
    python -m benchmarks.bench --quick --out /tmp/b # tiny sizes, < 60 s (the test)
    python -m benchmarks.bench --suite gpu          # the one-call GPU suite (benchmarks/gpu.py)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.methods import (
    METHODS,
    PROMPT,
    MethodSetup,
    bench_prompts,
    compose_method,
    make_loss,
    make_optimizer,
    optimizer_step_fn,
)
from benchmarks.peers import engine_shared_evals, peer_batches, peer_rollout, peer_update
from benchmarks.report import RESULTS_DIR, load_average, machine_description, render, write_results
from benchmarks.timing import Stopwatch, TimedModel, TimedReward, median_seconds
from flowrl.contract import RewardScores
from flowrl.engine.rollout import jump_log_prob, rollout
from flowrl.engine.update import policy_update


# ---- one method: engine iterations (a, c) and peer iterations (b), interleaved --------------------
@dataclass
class Iteration:
    """What both sides of one method's comparison share: the plan, the model being trained, its
    optimizer and loss, the timing wrappers."""

    setup: MethodSetup
    plan: object
    prompts: list[str]
    model: object
    timed: TimedModel
    score: TimedReward
    step_fn: object
    loss: object
    reference_mean: object
    views: object  # a forward-process objective's no-grad velocities (frozen copies here: one iteration)
    max_batch: int
    rollout_batch: int
    update_batch: int
    device: object


def prepare(setup: MethodSetup, make_model, reward, max_batch: int, micro_batch: int | None, device) -> Iteration:
    cfg = setup.cfg
    plan = setup.step_scheduler.plan(0, torch.Generator().manual_seed(0))
    model = make_model()
    model.requires_grad_(False)
    model.transformer.requires_grad_(True)  # full fine-tune, as E-GRPO (the tiny model has no LoRA here)
    ref_model = copy.deepcopy(model).requires_grad_(False).eval() if cfg.method.kl_beta > 0 else None
    frozen = {c.name: copy.deepcopy(model).requires_grad_(False).eval() for c in plan.policies} | {"reference": ref_model}
    opt = make_optimizer(cfg, model.trainable_parameters())
    batches = peer_batches(setup.method)
    return Iteration(
        setup=setup,
        plan=plan,
        prompts=bench_prompts(plan),
        model=model,
        timed=TimedModel(model),
        score=TimedReward(reward),
        step_fn=optimizer_step_fn(model, opt, cfg.train.grad_clip),
        loss=make_loss(cfg),
        reference_mean=(lambda r, js, rows: jump_log_prob(ref_model, r, js, rows).mean.detach()) if ref_model else None,
        views=lambda name, x, sigma, embeds: frozen[name].velocity(x, sigma, embeds),
        max_batch=max_batch,
        rollout_batch=micro_batch or batches.rollout_batch,  # the official script's, unless --micro-batch says
        update_batch=micro_batch or batches.update_batch,
        device=device,
    )


def engine_iteration(it: Iteration, seed: int) -> tuple[dict, object, list]:
    """flowrl's iteration, its phases timed where they run (they run once each, on the state the
    previous phase left: nothing for torch.utils.benchmark.Timer to re-run)."""
    it.timed.reset(), it.score.reset()
    clock = Stopwatch(it.device)
    ro = rollout(it.timed, it.plan, it.prompts, it.score, torch.Generator().manual_seed(seed), it.max_batch)
    rollout_s = clock.lap()
    rewards = ro.parts[it.score.reward.name]
    adv = it.setup.step_scheduler.advantages(RewardScores.single(it.score.reward.name, rewards), it.plan, it.prompts)
    advantages_s = clock.lap()
    it.model.train()
    stats = policy_update(
        it.model, it.plan, ro, adv, it.step_fn, it.loss, it.max_batch, reference_mean=it.reference_mean, views=it.views
    )
    it.model.eval()
    train_s = clock.lap()
    if it.timed.evals != ro.nfe:
        raise RuntimeError(f"{it.setup.method}: wrapper counted {it.timed.evals} evaluations, the engine {ro.nfe}")
    run = {
        "rollout_s": rollout_s,
        "forward_s": it.timed.forward_s,
        "reward_s": it.score.seconds,
        "reward_queries": it.score.queries,
        "engine_evals": it.timed.evals,
        "engine_forwards": it.timed.calls,
        "advantages_s": advantages_s,
        "train_s": train_s,
        "train_rows": stats.rows,
        "optimizer_steps_applied": stats.optimizer_steps,
        "iteration_s": clock.total(),
        "reward_shape": tuple(rewards.shape),
    }
    return run, ro, adv


def peer_iteration(it: Iteration, seed: int, ro, adv, advantages_s: float) -> dict:
    """The peers' iteration: their rollout loop, the same advantages, their update loop timed on the
    engine rollout's data (the same shapes: the cost does not depend on the values)."""
    it.timed.reset(), it.score.reset()
    clock = Stopwatch(it.device)
    parts = peer_rollout(it.timed, it.plan, it.prompts, it.score, torch.Generator().manual_seed(seed), it.rollout_batch)
    peer_s = clock.lap()
    evals, forwards, queries = it.timed.evals, it.timed.calls, it.score.queries
    it.model.train()
    stats = peer_update(it.model, it.plan, ro, adv, it.step_fn, it.loss, it.update_batch, it.reference_mean, it.views)
    it.model.eval()
    peer_update_s = clock.lap()
    return {
        "peer_s": peer_s,
        "peer_update_s": peer_update_s,
        "peer_iteration_s": peer_s + advantages_s + peer_update_s,
        "peer_evals": evals,
        "peer_forwards": forwards,
        "peer_reward_queries": queries,
        "peer_reward_shape": tuple(parts[it.score.reward.name].shape),
        "peer_optimizer_steps_applied": stats.optimizer_steps,
    }


def bench_method(setup: MethodSetup, make_model, reward, repeats: int, max_batch: int, micro_batch: int | None, device) -> dict:
    it = prepare(setup, make_model, reward, max_batch, micro_batch, device)
    engine_runs, peer_runs = [], []
    for r in range(repeats):  # interleaved, so engine and peer see the same machine load
        before = {k: v.detach().clone() for k, v in it.model.state_dict().items()}
        run, ro, adv = engine_iteration(it, r)
        engine_runs.append(run)
        # the peer samples on the weights the engine sampled on, from the same noise (seed r through
        # the engine's noise source): it scores the engine's images (tests/benchmarks/test_bench.py)
        it.model.load_state_dict(before)
        peer_runs.append(peer_iteration(it, r, ro, adv, run["advantages_s"]))
    return summary_row(it, engine_runs, peer_runs)


def summary_row(it: Iteration, engine_runs: list[dict], peer_runs: list[dict]) -> dict:
    """One row of the tables: the best of the repeats for each time, the plan's budget, ratios."""
    plan, p = it.plan, len(it.prompts)
    budget = plan.budget()
    best = {k: min(d[k] for d in engine_runs) for k in ("iteration_s", "train_s", "advantages_s")}
    best |= {k: min(d[k] for d in peer_runs) for k in ("peer_iteration_s", "peer_update_s")}
    row = {
        "method": it.setup.method,
        "trajectory": plan.trajectory,
        "T": plan.num_steps,
        "G": plan.group_size,
        "prompts": p,
        "overrides": " ".join(it.setup.overrides),
        "nfe_per_prompt": budget["nfe_per_prompt"],
        "reward_queries_per_prompt": budget["reward_queries_per_prompt"],
        "backward_passes_per_prompt": budget["trained_steps_per_prompt"],
        "optimizer_steps": len(plan.optimizer_steps(p)),
        **min(engine_runs, key=lambda d: d["rollout_s"]),  # best of the repeats
        **min(peer_runs, key=lambda d: d["peer_s"]),
        **best,
    }
    row["prompts"] = p  # 1, or what the update needs (benchmarks.methods.bench_prompts)
    row["nfe_papers"] = budget["nfe_per_prompt"] * p
    row["engine_nfe_charged"] = row["engine_evals"] + engine_shared_evals(plan, p)
    row["forward_share"] = row["forward_s"] / row["rollout_s"]
    row["reward_share"] = row["reward_s"] / row["rollout_s"]
    row["other_s"] = row["rollout_s"] - row["forward_s"] - row["reward_s"]
    row["images"] = row["reward_queries"]
    row["engine_images_per_s"] = row["images"] / row["rollout_s"]
    row["peer_images_per_s"] = row["peer_reward_queries"] / row["peer_s"]
    row["engine_nfe_per_s"] = row["nfe_papers"] / row["rollout_s"]
    row["peer_nfe_per_s"] = row["nfe_papers"] / row["peer_s"]
    row["engine_vs_peer"] = row["peer_s"] / row["rollout_s"]
    row["update_vs_peer"] = row["peer_update_s"] / row["train_s"]
    row["iteration_vs_peer"] = row["peer_iteration_s"] / row["iteration_s"]
    row["peer_rollout_batch"], row["peer_update_batch"] = it.rollout_batch, it.update_batch
    row["peer_batches_source"] = peer_batches(it.setup.method).source
    row["precision"] = getattr(it.model, "precision", "fp32")
    return row


# ---- the embedded model's patch size (kept from the first bench) --------------------------------
def forward_and_train_step_s(model, batch: int, min_run_time: float) -> tuple[float, float]:
    """(forward s, forward+backward s) of model.velocity on a batch at sigma 0.5 (medians)."""
    device = model.device
    x = torch.randn(batch, *model.latent_shape, device=device)
    sigma = torch.full((batch,), 0.5, device=device)
    with torch.no_grad():
        embeds = model.encode_prompts([PROMPT] * batch)

    def forward():
        with torch.no_grad():
            model.velocity(x, sigma, embeds)

    def train_step():
        model.velocity(x, sigma, embeds).square().mean().backward()

    return median_seconds(forward, min_run_time), median_seconds(train_step, min_run_time)


def compare_variants(models: dict[str, object], batch: int, min_run_time: float) -> list[dict]:
    """Forward and train-step time of each model on the same batch, and each one's ratio to the first."""
    rows = []
    for name, model in models.items():
        forward_s, train_step_s = forward_and_train_step_s(model, batch, min_run_time)
        rows.append({"method": name, "batch": batch, "forward_s": forward_s, "train_step_s": train_step_s})
    for r in rows:
        r["forward_vs_first"] = r["forward_s"] / rows[0]["forward_s"]
        r["train_step_vs_first"] = r["train_step_s"] / rows[0]["train_step_s"]
    return rows


def bench_patch_sizes(batch: int, min_run_time: float, device) -> list[dict]:
    """Forward and train-step time of the tiny FLUX model at patch 2 (256 tokens) vs 4 (64 tokens),
    same width and depth."""
    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

    models = {}
    for patch in (4, 2):
        torch.manual_seed(0)
        model = TinyFluxModel(TinyFluxConfig(patch_size=patch)).to(device)
        models[f"tiny_flux patch {patch} ({model.latent_shape[0]} tokens)"] = model
    return compare_variants(models, batch, min_run_time)


def bench_attention(model_cfg, batch: int, min_run_time: float, device) -> list[dict]:
    """The tiny model's `model.attention` under bf16 autocast: diffusers' FluxAttnProcessor (SDPA in
    bf16) vs flowrl's Fp32AttentionProcessor (SDPA in fp32), same weights."""
    from flowrl.models.tiny_flux import TinyFluxModel

    models = {}
    for name in ("autocast", "fp32"):
        torch.manual_seed(0)
        model = TinyFluxModel(model_cfg).to(device)
        model.precision = "bf16-autocast"
        model.use_attention(name)
        models[f"bf16-autocast, attention {name}"] = model
    return compare_variants(models, batch, min_run_time)


def choose_threads(threads: str, quick: bool) -> str:
    """Set torch's thread count; returns how it was chosen, for the report. On a shared 2-core
    machine the OpenMP threads of two busy processes wait on each other: measured here, forwards
    ran 5-10x slower with 2 threads than with 1 while another 2-thread training was running, and
    the engine/peer ratio swung from 0.5x to 12x between methods of one run. One thread then gives
    stable figures; tiny (--quick) tensors gain nothing from a second thread anyway."""
    if threads != "auto":
        torch.set_num_threads(int(threads))
        return f"{threads} (--threads)"
    if quick:
        torch.set_num_threads(1)
        return "1 (auto: --quick)"
    load = load_average()  # nan where the platform has none: then the default stays
    if load >= 0.5 and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        return f"1 (auto: 1-min load average {load:.2f} before the run, other processes busy)"
    return f"{torch.get_num_threads()} (auto: torch's default, machine idle)"


# ---- the run ----------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model and plans (< 60 s); what the tests run")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "-o", "--override", action="append", default=[], help="Hydra override for every method, e.g. method.group_size=6"
    )
    p.add_argument("--repeats", type=int, default=None, help="interleaved runs per method, the best kept (default 2; quick 1)")
    p.add_argument("--max-batch", type=int, default=64, help="engine rows per forward (train.max_batch)")
    p.add_argument(
        "--micro-batch", type=int, default=None, help="peer loop rows per forward (default: each official script's, PEER_BATCHES)"
    )
    p.add_argument(
        "--patch-batch", type=int, default=None, help="batch of the patch-size and attention comparisons (default 64; quick 2)"
    )
    p.add_argument(
        "--threads",
        default="auto",
        help="torch threads: a number, or auto (default): torch's default when the machine is idle, 1 when the "
        "1-min load average shows other busy processes, 1 with --quick",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    args.argv = argv
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.min_run_time = 0.05 if args.quick else 1.0  # seconds per torch.utils.benchmark measurement
    return args


def forward_costs(make_model, args) -> dict[int, float]:
    """Median seconds of one no-grad forward at the batch sizes the comparison uses."""
    probe = make_model()
    costs = {}
    for b in sorted({1, args.micro_batch or 2, args.max_batch}):
        x = torch.randn(b, *probe.latent_shape, device=args.device)
        embeds = probe.encode_prompts([PROMPT] * b)
        sigma = torch.full((b,), 0.5, device=args.device)

        def forward(x=x, sigma=sigma, embeds=embeds):
            with torch.no_grad():
                probe.velocity(x, sigma, embeds)

        costs[b] = median_seconds(forward, args.min_run_time)
    return costs


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--suite" in argv:  # --suite gpu: the one-call GPU suite (benchmarks.gpu)
        i = argv.index("--suite")
        suite = argv[i + 1] if i + 1 < len(argv) else ""
        if suite != "gpu":
            raise SystemExit(f"benchmarks.bench: --suite takes 'gpu', got {suite!r}")
        from benchmarks import gpu

        gpu.main(argv[:i] + argv[i + 2 :])
        return []
    args = parse_args(argv)
    args.threads_note = choose_threads(args.threads, args.quick)
    wall_start = time.perf_counter()
    machine = machine_description(args.device)

    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel
    from flowrl.rewards.jpeg import JpegCompressibilityReward

    # Default: the shipped architecture (2 double + 4 single FLUX blocks, 64 tokens of 48 channels,
    # width 128), random weights; --quick: one block of each on 16 tokens.
    model_cfg = TinyFluxConfig(num_layers=1, num_single_layers=1, image_size=16) if args.quick else TinyFluxConfig()

    def make_model():
        torch.manual_seed(0)
        return TinyFluxModel(TinyFluxConfig(**vars(model_cfg))).to(args.device).eval()

    args.image_size = model_cfg.image_size
    fwd_cost = forward_costs(make_model, args)
    model_desc = (
        f"FluxTransformer2DModel via TinyFluxModel, {model_cfg.num_layers} double + {model_cfg.num_single_layers} single "
        f"blocks, {model_cfg.num_attention_heads}x{model_cfg.attention_head_dim} heads, "
        f"{model_cfg.tokens_per_side**2} image tokens of {model_cfg.channels} channels, "
        f"{make_model().forward_flops(1) / 1e6:.1f} MFLOP per row and forward"
    )
    reward = JpegCompressibilityReward().to(args.device)
    rows = []
    for method in args.methods:
        setup = compose_method(method, args.override, small=args.quick)
        rows.append(bench_method(setup, make_model, reward, args.repeats, args.max_batch, args.micro_batch, args.device))
        r = rows[-1]
        print(
            f"{method}: rollout {r['rollout_s']:.2f} s (forwards {100 * r['forward_share']:.1f}%), peer {r['peer_s']:.2f} s "
            f"-> {r['engine_vs_peer']:.2f}x, iteration {r['iteration_s']:.2f} s",
            flush=True,
        )
    variant_batch = args.patch_batch or (2 if args.quick else 64)
    variants = {
        "patch_size": bench_patch_sizes(variant_batch, args.min_run_time, args.device),
        "attention": bench_attention(TinyFluxConfig(**vars(model_cfg)), variant_batch, args.min_run_time, args.device),
    }
    machine["load_avg_end"] = load_average()
    text = render(machine, args, model_desc, fwd_cost, rows, variants, time.perf_counter() - wall_start)
    print(text)
    csv_rows = [{"section": "methods", **r, **{f"machine_{k}": v for k, v in machine.items()}} for r in rows]
    write_results(args.out, "results", text, csv_rows + [{"section": k, **r} for k, rs in variants.items() for r in rs])
    return rows


if __name__ == "__main__":
    main()
