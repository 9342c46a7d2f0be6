"""The four plots of a comparison, each a PNG written with matplotlib (Agg, no display).

- `reward_vs_nfe.png`: the held-out metric against the NFE spent (`val/nfe_total`, logged with
  each evaluation), one line per group, mean over seeds with a 95% CI band. Runs that do not log
  `val/nfe_total` are drawn against the step number (the axis label says so).
- `final.png`: the final metric per group, with 95% CI bars.
- `ablation_<key>.png`, one per swept key other than the method: the final metric against the
  key's value (a numeric axis when every value is a number, log-scaled when they span two
  decades), one line per combination of the other swept keys, 95% CI bars.
- `proxy_vs_truth.png`: per run, the change of the trained reward (x) against the change of the
  ground truth `val/reward/shapes` (y), from the first to the last evaluation. Points right of 0
  and below 0 are reward hacking: the proxy rose while the ground truth fell.
"""

from __future__ import annotations

from flowrl.analysis.runs import GROUND_TRUTH
from flowrl.analysis.stats import as_float, mean_ci
from flowrl.analysis.tables import group_iter, short


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
    import matplotlib.pyplot as plt

    return plt


def plot_reward_vs_nfe(path, values, keys, curves, x_is_nfe, metric) -> None:
    """Per group, the k-th evaluation of every seed averaged: x the mean NFE (or step), y the mean
    metric, the band its 95% CI."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, g in group_iter(values, keys):
        runs = [curves.get(rid, []) for rid in g["run_id"]]
        xs, ys, lo, hi = [], [], [], []
        for k in range(max((len(r) for r in runs), default=0)):
            pts = [r[k] for r in runs if len(r) > k]
            mean, half, n = mean_ci([y for _, y in pts])
            xs.append(sum(x for x, _ in pts) / len(pts))
            ys.append(mean)
            lo.append(mean - half if n > 1 else mean)
            hi.append(mean + half if n > 1 else mean)
        (line,) = ax.plot(xs, ys, marker="o", label=f"{label} (n={len(g)})")
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("NFE spent (val/nfe_total)" if x_is_nfe else "step (val/nfe_total not logged)")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title("held-out reward vs compute (mean over seeds, 95% CI)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_final(path, table, metric) -> None:
    """The metric's column of the grouped table as bars, one per group, with 95% CI bars."""
    plt = _pyplot()
    name = metric.removeprefix("val/reward/")
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(table) + 2), 4.5))
    if name in table.columns:
        yerr = table[f"{name} ±95% CI"].fillna(0.0) if f"{name} ±95% CI" in table.columns else None
        ax.bar(range(len(table)), table[name], yerr=yerr, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(table)), [f"{lbl}\n(n={n})" for lbl, n in zip(table["_label"], table["n"])], fontsize="small")
        lows = (table[name] - (yerr if yerr is not None else 0)).min()
        highs = (table[name] + (yerr if yerr is not None else 0)).max()
        pad = 0.1 * (highs - lows) if highs > lows else 0.01
        ax.set_ylim(lows - pad, highs + pad)
    ax.set_ylabel(f"held-out {metric} (last evaluation)")
    ax.set_title("final held-out reward per group (mean over seeds, 95% CI)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ablation(path, values, keys, key, metric) -> None:
    """The final metric against one swept key; one line per combination of the other swept keys."""
    plt = _pyplot()
    col = f"{metric} last"
    raw = sorted(set(values[f"params.{key}"].fillna("None")), key=lambda v: (as_float(v) is None, as_float(v) or 0.0, v))
    numeric = all(as_float(v) is not None for v in raw)
    pos = {v: (as_float(v) if numeric else i) for i, v in enumerate(raw)}
    others = [k for k in keys if k != key]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, g in group_iter(values, others):
        xs, ys, errs = [], [], []
        for v in raw:
            sel = g[g[f"params.{key}"].fillna("None") == v]
            if sel.empty:
                continue
            mean, half, _ = mean_ci(sel[col])
            xs.append(pos[v])
            ys.append(mean)
            errs.append(0.0 if half != half else half)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=4, label=label if others else None)
    if numeric:
        xs = [pos[v] for v in raw]
        if min(xs) > 0 and max(xs) / min(xs) >= 100:
            ax.set_xscale("log")
        ax.set_xticks(xs, raw)
    else:
        ax.set_xticks(range(len(raw)), raw)
    ax.set_xlabel(key)
    ax.set_ylabel(f"held-out {metric} (last evaluation)")
    ax.set_title(f"ablation: {short(key)} (mean over seeds, 95% CI)")
    if others:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_proxy_vs_truth(path, values, keys) -> bool:
    """Δ trained reward vs Δ ground truth per run; False (no file) when no run has both."""
    if "proxy Δ" not in values.columns or "truth Δ" not in values.columns:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    drawn = False
    for label, g in group_iter(values, keys):
        g = g.dropna(subset=["proxy Δ", "truth Δ"])
        if not g.empty:
            ax.scatter(g["proxy Δ"], g["truth Δ"], label=label, s=36)
            drawn = True
    proxies = sorted(set(values["proxy key"].dropna())) if "proxy key" in values.columns else []
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"Δ trained reward ({', '.join(proxies) or '?'}), first -> last evaluation")
    ax.set_ylabel(f"Δ ground truth ({GROUND_TRUTH})")
    ax.set_title("proxy vs ground truth, one point per run\n(right of 0 and below 0: reward hacking)")
    if keys:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn
