"""The four plots of a comparison, each a PNG written with matplotlib (Agg, no display).

- `reward_vs_nfe.png`: the held-out metric against the NFE spent (`val/nfe_total`, logged with
  each evaluation), one line per group, mean over seeds with a 95% CI band (none for one seed).
  Runs that do not log `val/nfe_total` are drawn against the step number (the axis label says so).
- `final.png`: the final metric per group as bars from a stated baseline: the value before
  training (the first evaluation) when known, else zero (the y axis says which), so a bar's length
  is the change; 95% CI bars only for groups of n > 1 seeds.
- `ablation_<key>.png`, one per swept key other than the method: the final metric against the
  key's value (a numeric axis when every value is a number, log-scaled when they span two
  decades), one line per combination of the other swept keys, 95% CI bars for n > 1, the value
  before training as a dashed line in view.
- `proxy_vs_truth.png`: per run, the change of the trained reward (x) against the change of the
  ground truth `val/reward/shapes` (y), from the first to the last evaluation. Points right of 0
  and below 0 are reward hacking: the proxy rose while the ground truth fell.

Overlapping groups stay visible: each group has its own marker and line style and, in the line
plots, a small x offset (the axis label gives it); groups whose curves coincide say so in the
legend and the title.
"""

from __future__ import annotations

from flowrl.analysis.stats import as_float, mean_ci
from flowrl.analysis.tables import group_iter, has_proxy_points, short


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node or in CI
    import matplotlib.pyplot as plt

    return plt


MARKERS = "osD^v<>PX*h"
LINESTYLES = ("-", "--", "-.", ":")
OFFSET = 0.012  # each group's x offset step, as a fraction of the x span: overlapping groups stay visible
COINCIDE = 0.005  # two curves closer than this fraction of the y span at every point are drawn as coinciding


def offsets(n: int, step: float) -> list[float]:
    """n offsets, `step` apart, centred on 0 (one group: none)."""
    return [(i - (n - 1) / 2) * step for i in range(n)]


def coinciding(curves: dict[str, tuple[list, list]], span: float) -> dict[str, list[str]]:
    """{label: the other labels whose curve it coincides with}: same x positions, and every y within
    COINCIDE x span (identical runs, or a knob that changed nothing)."""
    tol = COINCIDE * (span or 1.0)
    same: dict[str, list[str]] = {}
    labels = list(curves)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            (xa, ya), (xb, yb) = curves[a], curves[b]
            if len(xa) == len(xb) and all(
                abs(p - q) <= tol and abs(u - v) <= tol * max(1.0, abs(u)) for p, q, u, v in zip(ya, yb, xa, xb)
            ):
                same.setdefault(a, []).append(b)
                same.setdefault(b, []).append(a)
    return same


def _span(values) -> float:
    finite = [v for v in values if v == v]
    return (max(finite) - min(finite)) if finite else 0.0


def _coincide_note(same: dict[str, list[str]]) -> str:
    return f"; {len(same)} groups coincide (offset, see legend)" if same else ""


def plot_reward_vs_nfe(path, values, keys, curves, x_is_nfe, metric) -> dict:
    """Per group, the k-th evaluation of every seed averaged: x the mean NFE (or step), y the mean
    metric, the band its 95% CI (none for one seed). Each group is offset in x by a small step and
    has its own marker and line style, so groups that overlap stay visible; groups whose curves
    coincide say so in the legend and the title. Returns {'offsets', 'coinciding'} for tests."""
    plt = _pyplot()
    drawn = {}
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
        drawn[f"{label} (n={len(g)})"] = (xs, ys, lo, hi)
    all_x = [x for xs, *_ in drawn.values() for x in xs]
    all_y = [y for _, ys, *_ in drawn.values() for y in ys]
    x_span = _span(all_x) or 1.0
    same = coinciding({k: (v[0], v[1]) for k, v in drawn.items()}, _span(all_y))
    shift = offsets(len(drawn), OFFSET * x_span)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, (xs, ys, lo, hi)) in enumerate(drawn.items()):
        xo = [x + shift[i] for x in xs]
        shown = label + (f" (coincides with {', '.join(same[label])})" if label in same else "")
        (line,) = ax.plot(
            xo, ys, marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)], label=shown, alpha=0.85
        )
        if any(h > y0 for h, y0 in zip(hi, lo)):
            ax.fill_between(xo, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    xlabel = "NFE spent (val/nfe_total)" if x_is_nfe else "step (val/nfe_total not logged)"
    if len(drawn) > 1:
        xlabel += f"; groups offset by {OFFSET * x_span:.3g} each so overlapping curves stay visible"
    ax.set_xlabel(xlabel, fontsize="small")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title(f"held-out reward vs compute (mean over seeds, 95% CI band for n > 1){_coincide_note(same)}", fontsize="small")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"offsets": shift, "coinciding": same}


def plot_final(path, table, metric) -> dict:
    """The metric's column of the grouped table as bars, one per group, from a stated baseline: the
    value before training (the first evaluation, last minus Δ) when the table has the change, else
    zero, said on the y axis. 95% CI bars only where a group has n > 1 seeds (one seed has no
    interval: no bar, no cap). Returns {'baseline': 'before' | 'zero', 'bottoms', 'error_bars'}."""
    import math

    plt = _pyplot()
    name = metric.removeprefix("val/reward/")
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(table) + 2), 4.5))
    info = {"baseline": None, "bottoms": [], "error_bars": 0}
    if name in table.columns:
        after = [float(v) for v in table[name]]
        ci_col = f"{name} ±95% CI"
        ci = [float(v) for v in table[ci_col]] if ci_col in table.columns else [math.nan] * len(after)
        n = [int(v) for v in table["n"]] if "n" in table.columns else [1] * len(after)
        delta = [float(v) for v in table[f"Δ{name}"]] if f"Δ{name}" in table.columns else []
        if delta and all(math.isfinite(d) for d in delta):
            bottoms, info["baseline"] = [a - d for a, d in zip(after, delta)], "before"
            ylabel = f"held-out {metric}\nbar: from before training (first evaluation) to the last"
        else:
            bottoms, info["baseline"] = [0.0] * len(after), "zero"
            ylabel = f"held-out {metric} (last evaluation)\nbars from 0"
        xs = list(range(len(after)))
        ax.bar(xs, [a - b for a, b in zip(after, bottoms)], bottom=bottoms, color="tab:blue", alpha=0.8)
        if info["baseline"] == "before":
            ax.scatter(xs, bottoms, marker="_", s=300, color="black", zorder=3, label="before training")
            for x, a, d in zip(xs, after, delta):
                ax.annotate(f"{d:+.4g}", (x, a), textcoords="offset points", xytext=(0, 3), ha="center", fontsize="small")
            ax.legend(fontsize="small", loc="best")
        with_ci = [i for i in xs if n[i] > 1 and math.isfinite(ci[i])]
        if with_ci:
            ax.errorbar(
                with_ci, [after[i] for i in with_ci], yerr=[ci[i] for i in with_ci], fmt="none", ecolor="black", capsize=4
            )
        info["bottoms"], info["error_bars"] = bottoms, len(with_ci)
        labels = [f"{lbl}\n(n={k}{', no CI' if k < 2 else ''})" for lbl, k in zip(table["_label"], n)]
        ax.set_xticks(xs, labels, fontsize="small")
        tops = [a + (c if i in with_ci else 0.0) for i, (a, c) in enumerate(zip(after, ci))]
        lows = [a - (c if i in with_ci else 0.0) for i, (a, c) in enumerate(zip(after, ci))]
        low, high = min([*bottoms, *lows]), max([*bottoms, *tops])
        pad = 0.1 * (high - low) if high > low else 0.01
        ax.set_ylim(low - pad, high + pad)  # the baseline is in view: a bar's length is the change
        ax.set_ylabel(ylabel, fontsize="small")
    else:
        ax.set_ylabel(f"held-out {metric} (last evaluation)")
    ax.set_title("final held-out reward per group\n(mean over seeds, 95% CI for n > 1)", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return info


def plot_ablation(path, values, keys, key, metric) -> dict:
    """The final metric against one swept key; one line per combination of the other swept keys,
    each offset a little in x with its own marker (overlapping lines stay visible, coinciding ones
    say so). 95% CI bars only for points of n > 1 seeds. The value before training (the mean first
    evaluation) is a dashed line kept in view, the baseline the y axis names.
    Returns {'offsets', 'coinciding', 'error_bars', 'baseline'}."""
    import math

    plt = _pyplot()
    col = f"{metric} last"
    raw = sorted(set(values[f"params.{key}"].fillna("None")), key=lambda v: (as_float(v) is None, as_float(v) or 0.0, v))
    numeric = all(as_float(v) is not None for v in raw)
    pos = {v: (as_float(v) if numeric else i) for i, v in enumerate(raw)}
    log_x = numeric and min(pos.values()) > 0 and max(pos.values()) / min(pos.values()) >= 100
    others = [k for k in keys if k != key]
    lines = {}
    for label, g in group_iter(values, others):
        pts = []
        for v in raw:
            sel = g[g[f"params.{key}"].fillna("None") == v]
            if sel.empty:
                continue
            mean, half, n = mean_ci(sel[col])
            pts.append((pos[v], mean, half if n > 1 and math.isfinite(half) else None))
        lines[label] = pts
    same = coinciding(
        {k: ([p[0] for p in v], [p[1] for p in v]) for k, v in lines.items()}, _span([p[1] for v in lines.values() for p in v])
    )
    if log_x:  # offsets as factors on a log axis
        shift = offsets(len(lines), OFFSET * math.log10(max(pos.values()) / min(pos.values())))
    else:
        shift = offsets(len(lines), OFFSET * ((_span(list(pos.values())) if numeric else len(raw) - 1) or 1.0))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = 0
    for i, (label, pts) in enumerate(lines.items()):
        xs = [x * 10 ** shift[i] if log_x else x + shift[i] for x, _, _ in pts]
        ys = [y for _, y, _ in pts]
        shown = (label + (f" (coincides with {', '.join(same[label])})" if label in same else "")) if others else None
        (line,) = ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)], label=shown)
        ci = [(x, y, h) for x, (_, y, h) in zip(xs, pts) if h is not None]
        if ci:
            ax.errorbar(
                [c[0] for c in ci], [c[1] for c in ci], yerr=[c[2] for c in ci], fmt="none", ecolor=line.get_color(), capsize=4
            )
            bars += len(ci)
    before_col = f"{metric} first"
    before = None
    if before_col in values.columns:
        firsts = [float(v) for v in values[before_col] if v == v]
        if firsts:
            before = sum(firsts) / len(firsts)
            ax.axhline(before, color="grey", linestyle="--", linewidth=1, label="before training (mean first evaluation)")
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, before - 0.05 * (high - low)), max(high, before + 0.05 * (high - low)))
    if numeric:
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks([pos[v] for v in raw], raw)
    else:
        ax.set_xticks(range(len(raw)), raw)
    ax.set_xlabel(
        key + ("; lines offset a little in x so overlapping ones stay visible" if len(lines) > 1 else ""), fontsize="small"
    )
    ylabel = f"held-out {metric} (last evaluation)"
    ax.set_ylabel(ylabel + ("\ndashed: before training" if before is not None else ""), fontsize="small")
    ax.set_title(f"ablation: {short(key)} (mean over seeds, 95% CI for n > 1){_coincide_note(same)}", fontsize="small")
    if others or before is not None:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"offsets": shift, "coinciding": same, "error_bars": bars, "baseline": before}


def plot_proxy_vs_truth(path, values, keys, metric: str) -> bool:
    """Δ trained reward vs Δ ground truth (`metric`) per run; False (no file) when no run has both."""
    if not has_proxy_points(values):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    drawn = False
    for i, (label, g) in enumerate(group_iter(values, keys)):
        g = g.dropna(subset=["proxy Δ", "truth Δ"])
        if not g.empty:  # its own marker and a size that shrinks per group: coinciding points stay visible
            size = max(16, 64 - 12 * i)
            ax.scatter(g["proxy Δ"], g["truth Δ"], label=label, s=size, marker=MARKERS[i % len(MARKERS)], alpha=0.8)
            drawn = True
    proxies = sorted(set(values["proxy key"].dropna())) if "proxy key" in values.columns else []
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"Δ trained reward ({', '.join(proxies) or '?'}), first -> last evaluation")
    ax.set_ylabel(f"Δ ground truth ({metric})")
    ax.set_title("proxy vs ground truth, one point per run\n(right of 0 and below 0: reward hacking)")
    if keys:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn
