"""`make bench`: performance measured side by side in one run (this machine is shared and noisy,
so only figures from one run are compared). Writes experiments/bench/results.md and results.csv.

For each method at its paper defaults (conf/method/<m>.yaml, composed by Hydra as flowrl.plan
does), one prompt per iteration, a FLUX-architecture model with random weights:
  (a) where the engine's rollout time goes: model forwards, reward, the rest (engine overhead);
  (b) flowrl's rollout engine vs a peer-style loop (one branch point at a time, micro-batches of
      1-2 samples, as the official DanceGRPO / Flow-GRPO / E-GRPO / G²RPO scripts are organised)
      on the same plan: same scored images, same NFE as the papers count them;
  (c) the papers' per-prompt budget (NFE, reward queries, backward passes) next to the measured
      wall time of one GRPO iteration: rollout + advantages + training forwards/backwards.
Plus the embedded model's cost by patch size (why the shipped model uses 4x4 patches).

    python -m benchmarks.bench                      # the full run (make bench), < 10 min on 2 cores
    python -m benchmarks.bench --quick --out /tmp/b # tiny sizes, < 60 s (the test)
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flowrl.config.compose import CONF_DIR
from flowrl.engine.rollout import chunks
from flowrl.sampling.steps import ode_step

RESULTS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "bench"
CONF_METHODS = Path(CONF_DIR) / "method"
METHODS = tuple(sorted(p.stem for p in CONF_METHODS.glob("*.yaml")))  # every method config, no list kept here
PROMPT = "a red circle on a blue background"


# ---- measurement helpers ----------------------------------------------------------------------
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, repeats: int) -> float:
    """Median wall seconds of fn() over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class TimedModel:
    """A FlowModel seen through a counter: accumulates the wall time spent inside `velocity`
    (synchronising before and after on CUDA) and counts calls and evaluated rows (NFE).
    Everything else is delegated to the wrapped model."""

    def __init__(self, model):
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.forward_s = 0.0
        self.evals = 0
        self.calls = 0

    def velocity(self, x, sigma, embeds):
        _sync(x.device)
        start = time.perf_counter()
        v = self.model.velocity(x, sigma, embeds)
        _sync(x.device)
        self.forward_s += time.perf_counter() - start
        self.evals += x.shape[0]
        self.calls += 1
        return v

    def __getattr__(self, name):
        return getattr(self.model, name)


class TimedReward:
    """score_fn for the engine: {reward.name: [B]}, with the time and number of queries."""

    def __init__(self, reward):
        self.reward = reward
        self.reset()

    def reset(self) -> None:
        self.seconds = 0.0
        self.queries = 0

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        scores = self.reward(images, prompts)
        self.seconds += time.perf_counter() - start
        self.queries += len(prompts)
        return {self.reward.name: scores}


# ---- the peer-style loop ----------------------------------------------------------------------
def _ode_along(model, x, schedule: list[int], sigmas, embeds):
    for a, b in zip(schedule[:-1], schedule[1:]):
        v = model.velocity(x, sigmas[a].expand(x.shape[0]).to(x), embeds)
        x = ode_step(x, v, sigmas[a], sigmas[b])
    return x


@torch.no_grad()
def peer_rollout(model, plan, prompts: list[str], score_fn, generator, micro_batch: int = 2):
    """The same plan executed the way the official DanceGRPO / Flow-GRPO / E-GRPO / G²RPO training
    scripts structure their sampling (this mirrors their loop structure; it is not their code):
    one prompt at a time; the G samples of a group in micro-batches of `micro_batch` rows; each
    micro-batch runs step by step to its scored image(s) before the next starts. Full SDE
    trajectories: T stochastic steps, then (DenseGRPO) the ODE completion of every intermediate
    latent. Anchor plans: the ODE anchor once per prompt, then for each branch point, for each
    micro-batch: the jump, its velocity evaluated for every sample (the peers do not share it
    across the group), then each completion schedule. No forward mixes branch points or lanes.

    Spends exactly the papers' NFE: plan.budget()["nfe_per_prompt"] per prompt.
    Returns the rewards {part: [P, G, *plan.score_shape]} (the engine's layout)."""
    g, t, n_prompts = plan.group_size, plan.num_steps, len(prompts)
    sigmas = plan.sigma_tensor()
    parts: dict[str, torch.Tensor] = {}

    def record(p: int, rows: slice, where: tuple, x) -> None:
        for name, score in score_fn(model.decode(x), [prompts[p]] * x.shape[0]).items():
            parts.setdefault(name, torch.zeros(n_prompts, g, *plan.score_shape))[(p, rows, *where)] = score.float().cpu()

    for p in range(n_prompts):
        embeds = model.encode_prompts([prompts[p]])
        if plan.trajectory == "sde":
            x1 = model.initial_noise(1 if plan.same_initial_noise else g, generator)
            for rows in chunks(g, micro_batch):
                n = rows.stop - rows.start
                e = embeds.repeat_interleave(n)
                x = x1.expand(n, *x1.shape[1:]).clone() if plan.same_initial_noise else x1[rows]
                states, log_probs = [x], []  # what the peers keep for their training pass
                for i in range(t):
                    v = model.velocity(x, sigmas[i].expand(n).to(x), e)
                    noise = torch.randn(x.shape, generator=generator).to(x.device)
                    out = plan.step_at(i)(x, v, sigmas[i], sigmas[i + 1], noise=noise)
                    last_x0 = x.float() - sigmas[i] * v.float()
                    x = out.prev_sample
                    states.append(x)
                    log_probs.append(out.log_prob)
                dense = bool(plan.intermediate_completions)
                record(p, rows, (t,) if dense else (), x if plan.score == "final" else last_x0.to(x.dtype))
                for i, schedule in enumerate(plan.intermediate_completions):  # R(x_i) for every i
                    record(p, rows, (i,), _ode_along(model, states[i], schedule, sigmas, e))
        else:
            last = plan.anchor_nfe()
            starts = {b.jump.start for b in plan.branches}
            x = model.initial_noise(1, generator)
            anchor = {}
            for i in range(last + 1):
                if i in starts:
                    anchor[i] = x
                if i < last:
                    x = ode_step(x, model.velocity(x, sigmas[i].expand(1).to(x), embeds), sigmas[i], sigmas[i + 1])
            for b, branch in enumerate(plan.branches):
                k, s = branch.jump.start, branch.jump.stop
                for rows in chunks(g, micro_batch):
                    n = rows.stop - rows.start
                    e = embeds.repeat_interleave(n)
                    xk = anchor[k].expand(n, *x.shape[1:]).clone()
                    v = model.velocity(xk, sigmas[k].expand(n).to(xk), e)  # per sample, as the peers
                    noise = torch.randn(xk.shape, generator=generator).to(xk.device)
                    out = branch.jump.step(xk, v, sigmas[k], sigmas[s], noise=noise)
                    for c, schedule in enumerate(branch.completions):
                        record(p, rows, (b, c), _ode_along(model, out.prev_sample, schedule, sigmas, e))
    return parts


def engine_shared_evals(plan, num_prompts: int) -> int:
    """Model evaluations the papers count but the engine does not spend. An anchor plan's G jumps
    leaving one anchor state share their velocity: the papers count G jump evaluations per branch
    point, the engine evaluates the anchor velocity at each branch point once per prompt, all but
    the last of which are anchor steps the papers already count. Full SDE plans share nothing."""
    if plan.trajectory == "sde":
        return 0
    return num_prompts * (plan.group_size * len(plan.branches) - 1)


# ---- one method: engine iteration (a, c) and peer rollout (b), interleaved ----------------------
@dataclass
class MethodSetup:
    method: str
    cfg: object  # the composed Hydra config
    step_scheduler: object
    overrides: list[str]


def compose_method(method: str, overrides: list[str]) -> MethodSetup:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from flowrl.config.compose import CONF_DIR

    ov = [f"method={method}", *overrides]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=ov)
    return MethodSetup(method, cfg, instantiate(cfg.method.step_scheduler), overrides)


def optimizer_step_fn(model, opt, grad_clip: float):
    """What GRPOModule does after each of the plan's optimizer steps, without Lightning."""

    def step(cause=None):
        if cause is None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return cause

    return step


def bench_method(setup: MethodSetup, make_model, reward, repeats: int, max_batch: int, micro_batch: int | None, device) -> dict:
    from flowrl.contract import RewardScores
    from flowrl.engine.rollout import jump_log_prob, rollout
    from flowrl.engine.update import LossConfig, policy_update

    cfg, sched = setup.cfg, setup.step_scheduler
    plan = sched.plan(0, torch.Generator().manual_seed(0))
    budget = plan.budget()
    prompts = [PROMPT]
    loss = LossConfig(cfg.method.clip_eps, cfg.method.adv_clip, cfg.method.kl_beta, cfg.method.get("kl_form", "official"))
    model = make_model()
    model.requires_grad_(False)
    model.transformer.requires_grad_(True)  # full fine-tune, as E-GRPO (the tiny model has no LoRA here)
    ref_model = copy.deepcopy(model).requires_grad_(False).eval() if cfg.method.kl_beta > 0 else None
    opt = torch.optim.AdamW(model.transformer.parameters(), lr=cfg.method.lr)
    # the official script's batch sizes (conf/method/<m>.yaml `peer:`), unless --micro-batch says
    rollout_batch = micro_batch or cfg.method.peer.rollout_batch
    update_batch = micro_batch or cfg.method.peer.update_batch
    ref_mean = (lambda r, js, rows: jump_log_prob(ref_model, r, js, rows).mean.detach()) if ref_model else None
    timed, score = TimedModel(model), TimedReward(reward)
    engine_runs, peer_runs = [], []
    for r in range(repeats):  # interleaved, so engine and peer see the same machine load
        generator = torch.Generator().manual_seed(r)
        timed.reset(), score.reset()
        _sync(device)
        start = time.perf_counter()
        ro = rollout(timed, plan, prompts, score, generator, max_batch)
        _sync(device)
        rollout_s = time.perf_counter() - start
        rewards = ro.parts[reward.name]
        adv = sched.advantages(RewardScores.single(reward.name, rewards), plan, prompts)
        adv_s = time.perf_counter() - start - rollout_s
        model.train()
        stats = policy_update(
            model,
            plan,
            ro,
            adv,
            optimizer_step_fn(model, opt, cfg.train.grad_clip),
            loss,
            max_batch,
            reference_mean=ref_mean,
        )
        model.eval()
        train_rows = stats.rows
        _sync(device)
        iteration_s = time.perf_counter() - start
        if timed.evals != ro.nfe:
            raise RuntimeError(f"{setup.method}: wrapper counted {timed.evals} evaluations, the engine {ro.nfe}")
        engine_runs.append(
            {
                "rollout_s": rollout_s,
                "forward_s": timed.forward_s,
                "reward_s": score.seconds,
                "reward_queries": score.queries,
                "engine_evals": timed.evals,
                "engine_forwards": timed.calls,
                "advantages_s": adv_s,
                "train_s": iteration_s - rollout_s - adv_s,
                "train_rows": train_rows,
                "iteration_s": iteration_s,
                "reward_shape": tuple(rewards.shape),
            }
        )
        timed.reset(), score.reset()
        generator = torch.Generator().manual_seed(r)
        _sync(device)
        start = time.perf_counter()
        peer_parts = peer_rollout(timed, plan, prompts, score, generator, rollout_batch)
        _sync(device)
        peer_s = time.perf_counter() - start
        peer_evals, peer_forwards, peer_queries = timed.evals, timed.calls, score.queries
        # the peers' update: a forward (with grad) per trained (sample, step) in their batch sizes,
        # their optimizer-step placement (the plan's), timed on the engine rollout's data (the same
        # shapes: the cost does not depend on the values)
        model.train()
        start = time.perf_counter()
        policy_update(
            model, plan, ro, adv, optimizer_step_fn(model, opt, cfg.train.grad_clip), loss, update_batch, reference_mean=ref_mean
        )
        _sync(device)
        peer_update_s = time.perf_counter() - start
        model.eval()
        peer_runs.append(
            {
                "peer_s": peer_s,
                "peer_update_s": peer_update_s,
                "peer_iteration_s": peer_s + adv_s + peer_update_s,
                "peer_evals": peer_evals,
                "peer_forwards": peer_forwards,
                "peer_reward_queries": peer_queries,
                "peer_reward_shape": tuple(peer_parts[reward.name].shape),
            }
        )
    engine = min(engine_runs, key=lambda d: d["rollout_s"])  # best of the repeats
    peer = min(peer_runs, key=lambda d: d["peer_s"])
    row = {
        "method": setup.method,
        "trajectory": plan.trajectory,
        "T": plan.num_steps,
        "G": plan.group_size,
        "prompts": len(prompts),
        "overrides": " ".join(setup.overrides),
        "nfe_per_prompt": budget["nfe_per_prompt"],
        "reward_queries_per_prompt": budget["reward_queries_per_prompt"],
        "backward_passes_per_prompt": budget["trained_steps_per_prompt"],
        "optimizer_steps": len(plan.optimizer_steps(len(prompts))),
        **engine,
        **peer,
        "iteration_s": min(d["iteration_s"] for d in engine_runs),
        "train_s": min(d["train_s"] for d in engine_runs),
        "advantages_s": min(d["advantages_s"] for d in engine_runs),
    }
    row["nfe_papers"] = budget["nfe_per_prompt"] * len(prompts)
    row["engine_nfe_charged"] = row["engine_evals"] + engine_shared_evals(plan, len(prompts))
    row["forward_share"] = row["forward_s"] / row["rollout_s"]
    row["reward_share"] = row["reward_s"] / row["rollout_s"]
    row["other_s"] = row["rollout_s"] - row["forward_s"] - row["reward_s"]
    row["images"] = row["reward_queries"]
    row["engine_images_per_s"] = row["images"] / row["rollout_s"]
    row["peer_images_per_s"] = row["peer_reward_queries"] / row["peer_s"]
    row["engine_nfe_per_s"] = row["nfe_papers"] / row["rollout_s"]
    row["peer_nfe_per_s"] = row["nfe_papers"] / row["peer_s"]
    row["engine_vs_peer"] = row["peer_s"] / row["rollout_s"]
    row["peer_iteration_s"] = min(d["peer_iteration_s"] for d in peer_runs)
    row["peer_update_s"] = min(d["peer_update_s"] for d in peer_runs)
    row["update_vs_peer"] = row["peer_update_s"] / row["train_s"]
    row["iteration_vs_peer"] = row["peer_iteration_s"] / row["iteration_s"]
    row["peer_rollout_batch"], row["peer_update_batch"] = rollout_batch, update_batch
    row["precision"] = getattr(model, "precision", "fp32")
    return row


# ---- the embedded model's patch size (kept from the first bench) --------------------------------
def _time_model(model, batch: int, repeats: int) -> tuple[float, float]:
    """(forward s, forward+backward s) of model.velocity on a batch at sigma 0.5."""
    device = model.device
    x = torch.randn(batch, *model.latent_shape, device=device)
    sigma = torch.full((batch,), 0.5, device=device)
    with torch.no_grad():
        embeds = model.encode_prompts([PROMPT] * batch)

    def forward():
        with torch.no_grad():
            model.velocity(x, sigma, embeds)
        _sync(device)

    def train_step():
        model.velocity(x, sigma, embeds).square().mean().backward()
        _sync(device)

    return _time(forward, repeats), _time(train_step, max(1, repeats // 2))


def bench_patch_sizes(batch: int, repeats: int, device) -> list[dict]:
    """Forward and train-step time of the tiny FLUX model at patch 2 (256 tokens) vs 4 (64 tokens),
    same width and depth."""
    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

    rows = []
    for patch in (4, 2):
        torch.manual_seed(0)
        model = TinyFluxModel(TinyFluxConfig(patch_size=patch)).to(device)
        forward_s, train_step_s = _time_model(model, batch, repeats)
        rows.append(
            {
                "method": f"tiny_flux patch {patch} ({model.latent_shape[0]} tokens)",
                "batch": batch,
                "forward_s": forward_s,
                "train_step_s": train_step_s,
            }
        )
    for r in rows:
        r["forward_vs_patch4"] = r["forward_s"] / rows[0]["forward_s"]
        r["train_step_vs_patch4"] = r["train_step_s"] / rows[0]["train_step_s"]
    return rows


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
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load >= 0.5 and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        return f"1 (auto: 1-min load average {load:.2f} before the run, other processes busy)"
    return f"{torch.get_num_threads()} (auto: torch's default, machine idle)"


# ---- report ------------------------------------------------------------------------------------
def machine_description(device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.device(device)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "platform": platform.platform(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }


def _table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table (pandas' DataFrame.to_markdown) as lines."""
    import pandas as pd

    return pd.DataFrame(rows, columns=header).to_markdown(index=False, disable_numparse=True).splitlines()


def render(machine: dict, args, model_desc: str, fwd_cost: dict, rows: list[dict], patch_rows: list[dict], wall_s: float) -> str:
    cmd = " ".join(["python -m benchmarks.bench", *args.argv])
    lines = [
        "# flowrl bench",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch threads {args.threads_note}, "
        f"torch {machine['torch']}, device {machine['device']}, {machine['platform']}; "
        f"1-min load average {machine['load_avg_1min']:.2f} at the start, {machine['load_avg_end']:.2f} at the end "
        "(the machine is shared: compare figures within one run only).",
        "",
        f"Command: `{cmd}` (`make bench` runs `python -m benchmarks.bench`); whole run {wall_s:.0f} s.",
        "",
        f"Model: {model_desc}, random weights. One no-grad forward costs "
        + ", ".join(f"{1000 * s:.1f} ms at batch {b}" for b, s in fwd_cost.items())
        + f". Reward: JPEG compressibility (flowrl.rewards.jpeg, {args.image_size}x{args.image_size} images). 1 prompt per iteration; "
        f"engine max_batch {args.max_batch}; the peer loop's batches: "
        + (
            "the official scripts' (`peer:` in conf/method/<m>.yaml, in the tables)"
            if args.micro_batch is None
            else f"{args.micro_batch} (--micro-batch)"
        )
        + f"; every time is the best of {args.repeats} interleaved runs (flowrl iteration, peer iteration, ...). "
        f"Precision: {rows[0]['precision'] if rows else 'fp32'}.",
        "",
        "Sizes: each method's paper defaults from conf/method/<m>.yaml"
        + (" with the overrides in the tables" if any(r["overrides"] for r in rows) else ", no overrides")
        + ".",
        "",
        f"Goals: a full iteration >= 2x a peer-structured one: {min(r['iteration_vs_peer'] for r in rows):.2f}x to "
        f"{max(r['iteration_vs_peer'] for r in rows):.2f}x in this run ({sum(r['iteration_vs_peer'] >= 2 for r in rows)} of "
        f"{len(rows)} methods at 2x or more). Forward share >= 90% of rollout wall time on CPU: met by "
        f"{sum(r['forward_share'] >= 0.9 for r in rows)} of {len(rows)} (lowest {100 * min(r['forward_share'] for r in rows):.1f}%).",
        "",
        "## End to end: a flowrl iteration vs a peer-structured one, identical NFE",
        "",
        "flowrl: the engine's rollout + advantages + `policy_update` (rows batched up to max_batch, the "
        "anchor velocity shared by the G jumps leaving it). Peer: the official scripts' loops (`peer_rollout`: "
        "per prompt, per branch point, in their batch sizes, the jump velocity evaluated per sample) + the "
        "same advantages + an update that re-runs a forward with grad per (sample, trained step) in their "
        "train batch size (`policy_update` at that batch size), with the method's optimizer-step placement. "
        "Both spend the papers' NFE on the same plan and score the same images.",
        "",
    ]
    lines += _table(
        ["method", "peer batches (rollout / update)", "flowrl s", "peer s", "end to end", "rollout", "update", "forward share"],
        [
            [
                r["method"],
                f"{r['peer_rollout_batch']} / {r['peer_update_batch']}",
                f"{r['iteration_s']:.2f}",
                f"{r['peer_iteration_s']:.2f}",
                f"{r['iteration_vs_peer']:.2f}x",
                f"{r['engine_vs_peer']:.2f}x",
                f"{r['update_vs_peer']:.2f}x",
                f"{100 * r['forward_share']:.1f}%",
            ]
            for r in rows
        ],
    )
    lines += [
        "",
        "## (a) Where the engine's rollout time goes",
        "",
        "Model forwards timed inside `velocity` (synchronised on CUDA); reward = the reward model's calls; "
        "other = engine bookkeeping, SDE/ODE step math, decode.",
        "",
    ]
    lines += _table(
        ["method", "rollout s", "forwards s", "forward share", "reward s (queries)", "other s", "forwards (rows)"],
        [
            [
                r["method"],
                f"{r['rollout_s']:.2f}",
                f"{r['forward_s']:.2f}",
                f"{100 * r['forward_share']:.1f}%",
                f"{r['reward_s']:.3f} ({r['reward_queries']})",
                f"{r['other_s']:.3f}",
                f"{r['engine_forwards']} ({r['engine_evals']})",
            ]
            for r in rows
        ],
    )
    lines += [
        "",
        "## (b) flowrl's engine vs a peer-style loop, same plan, same NFE",
        "",
        "The peer loop (`peer_rollout` in bench.py) mirrors the official scripts' structure: one prompt, "
        "one branch point at a time, the group in the official batch size, each run step by step "
        "to its scored images, the jump velocity evaluated for every sample. Both produce the same scored "
        "images and the same NFE as the papers count them (the peer spends exactly that; the engine shares "
        "the jump velocity of the G samples leaving one anchor state and is charged the papers' count "
        "anyway: `NFE (papers)` is the charged count and `evals` what each actually ran). Throughput is "
        "scored images/s and papers-NFE/s, so engine/peer is the same for both. `calls` = sequential model "
        "calls: where a forward costs the same at any batch (a small model on a GPU) their ratio bounds the speed-up.",
        "",
    ]
    lines += _table(
        [
            "method",
            "NFE (papers)",
            "engine evals",
            "peer evals",
            "scored images",
            "engine s",
            "peer s",
            "engine img/s",
            "peer img/s",
            "engine NFE/s",
            "peer NFE/s",
            "engine/peer",
            "engine calls",
            "peer calls",
        ],
        [
            [
                r["method"],
                r["nfe_papers"],
                r["engine_evals"],
                r["peer_evals"],
                r["images"],
                f"{r['rollout_s']:.2f}",
                f"{r['peer_s']:.2f}",
                f"{r['engine_images_per_s']:.1f}",
                f"{r['peer_images_per_s']:.1f}",
                f"{r['engine_nfe_per_s']:.0f}",
                f"{r['peer_nfe_per_s']:.0f}",
                f"{r['engine_vs_peer']:.2f}x",
                r["engine_forwards"],
                r["peer_forwards"],
            ]
            for r in rows
        ],
    )
    lines += [
        "",
        "## (c) Budget per prompt (from the plan) and measured wall per iteration",
        "",
        "Iteration = engine rollout + advantages + `flowrl.engine.update.policy_update` over the trained jumps "
        "(GRPO loss, KL to a frozen reference where kl_beta > 0, AdamW steps where the method's plan puts "
        "them, full fine-tune). "
        "`train rows` = rows through a training forward/backward: one per start state, shared by the "
        "successors leaving it (the papers count one backward pass per (sample, trained step)).",
        "",
    ]
    lines += _table(
        [
            "method",
            "T",
            "G",
            "overrides",
            "NFE",
            "reward queries",
            "backward passes",
            "train rows",
            "optimizer steps",
            "rollout s",
            "advantages s",
            "train s",
            "iteration s",
        ],
        [
            [
                r["method"],
                r["T"],
                r["G"],
                f"`{r['overrides']}`" if r["overrides"] else "-",
                r["nfe_per_prompt"],
                r["reward_queries_per_prompt"],
                r["backward_passes_per_prompt"],
                r["train_rows"],
                r["optimizer_steps"],
                f"{r['rollout_s']:.2f}",
                f"{r['advantages_s']:.4f}",
                f"{r['train_s']:.2f}",
                f"{r['iteration_s']:.2f}",
            ]
            for r in rows
        ],
    )
    if patch_rows:
        lines += ["", "## The embedded model's patch size", ""]
        lines += _table(
            ["model", "batch", "forward s", "train step s", "forward vs patch 4", "train step vs patch 4"],
            [
                [
                    r["method"],
                    r["batch"],
                    f"{r['forward_s']:.3f}",
                    f"{r['train_step_s']:.3f}",
                    f"{r['forward_vs_patch4']:.2f}x",
                    f"{r['train_step_vs_patch4']:.2f}x",
                ]
                for r in patch_rows
            ],
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--suite" in argv:  # --suite gpu: the one-call GPU suite (benchmarks.gpu)
        i = argv.index("--suite")
        suite = argv[i + 1] if i + 1 < len(argv) else ""
        if suite != "gpu":
            raise SystemExit(f"benchmarks.bench: --suite takes 'gpu', got {suite!r}")
        from benchmarks import gpu as bench_gpu

        bench_gpu.main(argv[:i] + argv[i + 2 :])
        return []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model and plans (< 60 s); what the tests run")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "-o", "--override", action="append", default=[], help="Hydra override for every method, e.g. method.group_size=6"
    )
    p.add_argument("--repeats", type=int, default=None, help="interleaved runs per method, the best kept (default 2; quick 1)")
    p.add_argument("--max-batch", type=int, default=64, help="engine rows per forward (train.max_batch)")
    p.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="peer loop rows per forward (default: each official script's, conf/method peer:)",
    )
    p.add_argument("--patch-batch", type=int, default=None, help="batch of the patch-size comparison (default 64; quick 2)")
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
    patch_batch = args.patch_batch or (2 if args.quick else 64)
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
    model_desc = (
        f"FluxTransformer2DModel via TinyFluxModel, {model_cfg.num_layers} double + {model_cfg.num_single_layers} single "
        f"blocks, {model_cfg.num_attention_heads}x{model_cfg.attention_head_dim} heads, "
        f"{model_cfg.tokens_per_side**2} image tokens of {model_cfg.channels} channels"
    )
    probe = make_model()
    fwd_cost = {}
    for b in sorted({1, args.micro_batch or 2, args.max_batch}):
        x = torch.randn(b, *probe.latent_shape, device=args.device)
        embeds = probe.encode_prompts([PROMPT] * b)

        def fwd(x=x, embeds=embeds, b=b, model=probe):
            with torch.no_grad():
                model.velocity(x, torch.full((b,), 0.5, device=args.device), embeds)
            _sync(args.device)

        fwd_cost[b] = _time(fwd, 1 if args.quick else 3)
    del probe

    reward = JpegCompressibilityReward().to(args.device)
    rows = []
    for method in args.methods:
        quick = list(compose_method(method, []).step_scheduler.small_overrides) if args.quick else []
        setup = compose_method(method, quick + list(args.override))
        rows.append(bench_method(setup, make_model, reward, args.repeats, args.max_batch, args.micro_batch, args.device))
        r = rows[-1]
        print(
            f"{method}: rollout {r['rollout_s']:.2f} s (forwards {100 * r['forward_share']:.1f}%), peer {r['peer_s']:.2f} s "
            f"-> {r['engine_vs_peer']:.2f}x, iteration {r['iteration_s']:.2f} s",
            flush=True,
        )
    patch_rows = bench_patch_sizes(patch_batch, 1 if args.quick else 3, args.device)
    machine["load_avg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    wall_s = time.perf_counter() - wall_start
    text = render(machine, args, model_desc, fwd_cost, rows, patch_rows, wall_s)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    csv_rows = [{"section": "methods", **r, **{f"machine_{k}": v for k, v in machine.items()}} for r in rows]
    csv_rows += [{"section": "patch_size", **r} for r in patch_rows]
    fields = list(dict.fromkeys(k for r in csv_rows for k in r))
    with open(args.out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(csv_rows)
    return rows


if __name__ == "__main__":
    main()
