"""The benchmarks' results files: the machine description, the markdown of `make bench`
(results.md) and of the GPU suite (gpu.md), and the csv next to each."""

from __future__ import annotations

import csv
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "bench"


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


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
        "load_avg_1min": load_average(),
    }


def write_results(out: Path, stem: str, text: str, rows: list[dict]) -> None:
    """<out>/<stem>.md and <stem>.csv (the union of the rows' keys, in first-seen order)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table (pandas' DataFrame.to_markdown) as lines."""
    import pandas as pd

    return pd.DataFrame(rows, columns=header).to_markdown(index=False, disable_numparse=True).splitlines()


# ---- make bench: results.md ---------------------------------------------------------------------
def render(
    machine: dict, args, model_desc: str, fwd_cost: dict, rows: list[dict], variants: dict[str, list[dict]], wall_s: float
) -> str:
    lines = _header(machine, args, model_desc, fwd_cost, rows, wall_s)
    lines += _end_to_end(rows) + _rollout_time(rows) + _engine_vs_peer(rows) + _budget(rows) + _variants(variants)
    return "\n".join(lines) + "\n"


def _header(machine: dict, args, model_desc: str, fwd_cost: dict, rows: list[dict], wall_s: float) -> list[str]:
    cmd = " ".join(["python -m benchmarks.bench", *args.argv])
    peer_batches = (
        "the official scripts' (`PEER_BATCHES` in benchmarks/peers.py, in the tables)"
        if args.micro_batch is None
        else f"{args.micro_batch} (--micro-batch)"
    )
    ratios = [r["iteration_vs_peer"] for r in rows]
    shares = [r["forward_share"] for r in rows]
    return [
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
        + f" (median, torch.utils.benchmark). Reward: JPEG compressibility (flowrl.rewards.jpeg, "
        f"{args.image_size}x{args.image_size} images). 1 prompt per iteration (2 where the update splits the prompts: TempFlow-GRPO); engine max_batch {args.max_batch}; "
        f"the peer loop's batches: {peer_batches}; every time is the best of {args.repeats} interleaved runs "
        f"(flowrl iteration, peer iteration, ...). Precision: {rows[0]['precision'] if rows else 'fp32'}.",
        "",
        "Sizes: each method's paper defaults from conf/method/<m>.yaml"
        + (" with the overrides in the tables" if any(r["overrides"] for r in rows) else ", no overrides")
        + ".",
        "",
        f"Goals: a full iteration >= 2x a peer-structured one: {min(ratios):.2f}x to {max(ratios):.2f}x in this run "
        f"({sum(x >= 2 for x in ratios)} of {len(rows)} methods at 2x or more). Forward share >= 90% of rollout wall "
        f"time on CPU: met by {sum(s >= 0.9 for s in shares)} of {len(rows)} (lowest {100 * min(shares):.1f}%).",
        "",
    ]


def _end_to_end(rows: list[dict]) -> list[str]:
    lines = [
        "## End to end: a flowrl iteration vs a peer-structured one, identical NFE",
        "",
        "flowrl: the engine's rollout + advantages + `policy_update` (rows batched up to max_batch, the "
        "anchor velocity shared by the G jumps leaving it). Peer: the official scripts' loops (`peer_rollout`: "
        "per prompt, per branch point, in their batch sizes, the jump velocity evaluated per sample) + the "
        "same advantages + `peer_update` (a forward with grad per trained start state in their train batch "
        "size), with the method's optimizer-step placement. "
        "Both spend the papers' NFE on the same plan and score the same images: the peer takes its noise from "
        "the engine's noise source with the engine's seed and samples on the weights the engine sampled on "
        "(tested for every method, several prompts and micro-batch 1); the cost does not depend on the values.",
        "",
    ]
    return lines + _table(
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


def _rollout_time(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "## (a) Where the engine's rollout time goes",
        "",
        "Model forwards timed inside `velocity` (synchronised on CUDA); reward = the reward model's calls; "
        "other = engine bookkeeping, SDE/ODE step math, decode.",
        "",
    ]
    return lines + _table(
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


def _engine_vs_peer(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "## (b) flowrl's engine vs a peer-style loop, same plan, same NFE",
        "",
        "The peer loop (`peer_rollout` in benchmarks/peers.py) mirrors the official scripts' structure: one "
        "prompt, one branch point at a time, the group in the official batch size, each run step by step "
        "to its scored images, the jump velocity evaluated for every sample. Both produce the same scored "
        "images (the peer's noise is the engine's) and the same NFE as the papers count them (the peer spends exactly that; the engine shares "
        "the jump velocity of the G samples leaving one anchor state and is charged the papers' count "
        "anyway: `NFE (papers)` is the charged count and `evals` what each actually ran). Throughput is "
        "scored images/s and papers-NFE/s, so engine/peer is the same for both. `calls` = sequential model "
        "calls: where a forward costs the same at any batch (a small model on a GPU) their ratio bounds the speed-up.",
        "",
    ]
    header = ["method", "NFE (papers)", "engine evals", "peer evals", "scored images", "engine s", "peer s"]
    header += ["engine img/s", "peer img/s", "engine NFE/s", "peer NFE/s", "engine/peer", "engine calls", "peer calls"]
    return lines + _table(
        header,
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


def _budget(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "## (c) Budget per prompt (from the plan) and measured wall per iteration",
        "",
        "Iteration = engine rollout + advantages + `flowrl.engine.update.policy_update` over the trained jumps "
        "(the config's GRPO loss, KL to a frozen reference where kl_beta > 0, the config's optimizer stepped "
        "where the method's plan puts its steps, full fine-tune). "
        "`train rows` = rows through a training forward/backward: one per start state, shared by the "
        "successors leaving it (the papers count one backward pass per (sample, trained step)).",
        "",
    ]
    header = ["method", "T", "G", "overrides", "NFE", "reward queries", "backward passes", "train rows"]
    header += ["optimizer steps", "rollout s", "advantages s", "train s", "iteration s"]
    return lines + _table(
        header,
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


VARIANT_SECTIONS = {  # variant comparison -> (heading, what its first row is)
    "patch_size": ("The embedded model's patch size", "patch 4"),
    "attention": ("The embedded model's attention under bf16 autocast (`model.attention`)", "autocast"),
}


def _variants(variants: dict[str, list[dict]]) -> list[str]:
    lines = []
    for section, rows in variants.items():
        if not rows:
            continue
        heading, first = VARIANT_SECTIONS[section]
        lines += ["", f"## {heading}", ""]
        lines += _table(
            ["model", "batch", "forward s", "train step s", f"forward vs {first}", f"train step vs {first}"],
            [
                [
                    r["method"],
                    r["batch"],
                    f"{r['forward_s']:.3f}",
                    f"{r['train_step_s']:.3f}",
                    f"{r['forward_vs_first']:.2f}x",
                    f"{r['train_step_vs_first']:.2f}x",
                ]
                for r in rows
            ],
        )
    return lines


# ---- the GPU suite: gpu.md ---------------------------------------------------------------------
@dataclass
class GpuReport:
    device: str
    dry_run: bool
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, **values) -> None:
        self.rows.append({"section": section, **values})
        print(section, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()}, flush=True)

    def render(self) -> str:
        import pandas as pd

        lines = [
            "# flowrl GPU bench" + (" (dry run on the CPU: scaled-down sizes, not GPU figures)" if self.dry_run else ""),
            "",
            f"Device: {self.device}; torch {torch.__version__}. Command: `python -m benchmarks.bench --suite gpu"
            + (" --dry-run" if self.dry_run else "")
            + "`.",
            "",
        ]
        for section in dict.fromkeys(r["section"] for r in self.rows):
            rows = [{k: v for k, v in r.items() if k != "section"} for r in self.rows if r["section"] == section]
            lines += [f"## {section}", "", pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"), ""]
        lines += self.notes
        return "\n".join(lines) + "\n"
