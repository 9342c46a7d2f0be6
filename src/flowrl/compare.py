"""`python -m flowrl.compare --experiment NAME [--metric val/reward/shapes] [--by method] [--out DIR]`:
the runs of one MLflow experiment, grouped by the swept keys and aggregated over seeds.

What it writes to DIR (default `outputs/compare/<experiment>/`), and logs as the artifacts of a
summary run named "compare" (tag `flowrl.summary=true`) in the same experiment:
- `table.md`: one row per group (the swept keys' values), `n` seeds, each held-out reward at the
  last evaluation and its change since the first one (the model before training, same prompts and
  noise, so the change is a paired difference), each as the mean over seeds and the half-width
  of its 95% confidence interval; then one row per run; then the runs left out (not FINISHED:
  RUNNING, KILLED, FAILED), by name and status. It is printed too.
- `reward_vs_nfe.png`: the held-out `--metric` against the NFE spent (`val/nfe_total`, logged
  with each evaluation), one line per group, mean over seeds with a 95% CI band. Runs that do
  not log `val/nfe_total` are drawn against the step number (the axis label says so).
- `final.png`: the final `--metric` per group, with 95% CI bars.
- `ablation_<key>.png`, one per swept key other than the method: the final `--metric` against
  the key's value (a numeric axis when every value is a number, log-scaled when they span two
  decades), one line per combination of the other swept keys, 95% CI bars.
- `proxy_vs_truth.png`: per run, the change of the trained reward (x) against the change of the
  ground truth `val/reward/shapes` (y), from the first to the last evaluation. The trained
  reward is the run's `reward.name` param if it has one, else the name of its `train/reward/<name>`
  metric (for a combined reward, the part with the largest `reward.weights.<name>`), read as
  `val/reward/<name>` (held-out, the same prompts and noise as `shapes`) when the run logs it,
  else as `train/reward/<name>` (the rollouts' mean, noisier). Points right of 0 and below 0 are
  reward hacking: the proxy rose while the ground truth fell.

Statistics: the 95% CI is the Student t interval over the seeds of a group,
mean ± t(0.975, n − 1) · s / sqrt(n), with s the sample standard deviation (ddof 1) and the t
quantile from scipy.stats. A group of one seed has no interval (blank).

Swept keys (`--by`, default: found): among method.name, method.tau, method.group_size,
method.clip_eps, method.granularities, method.dense_horizon, then every other method.*, train.*,
budget.* and reward.* param, a key is swept when its value differs across the finished runs and
is not already fixed by the swept keys found before it (a methods sweep groups by method only,
although each method has its own G). `seed` is never a swept key: it is what is averaged over.
`--by method,tau` names them (tag names, or full param keys).

The older single table (one row per finished run: budget, held-out rewards before / after / delta,
s per iteration) is still there: `--out FILE.md` writes just that table, as before.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

DEFAULT_METRIC = "val/reward/shapes"
GROUND_TRUTH = "val/reward/shapes"
NFE_METRIC = "val/nfe_total"  # logged by training with every held-out evaluation
SUMMARY_TAG = "flowrl.summary"
SUMMARY_RUN_NAME = "compare"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # the MLflow UI's shareable view state (an experiment tag)
SHARED_VIEW_KEY = "flowrl-compare"
CI_LEVEL = 0.95
# Candidate swept keys, first the ones a sweep asks about. Their order decides which of two
# keys that fix each other is kept (method.name over method.group_size in a methods sweep).
PREFERRED_KEYS = (
    "method.name",
    "method.tau",
    "method.group_size",
    "method.clip_eps",
    "method.granularities",
    "method.dense_horizon",
)
CANDIDATE_PREFIXES = ("method.", "train.", "budget.", "reward.")
NEVER_SWEPT = ("seed",)
NOT_SWEPT_PREFIXES = ("method.step_scheduler.", "method.calibration.")  # interpolations of method.* / not knobs
ALIASES = {"method": "method.name", "tau": "method.tau", "G": "method.group_size"}
_LIST_ITEM = re.compile(r"^(.+)\.(\d+)$")


# -- reading the runs ----------------------------------------------------------------------------


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    from flowrl.training.tracking import resolve_tracking_uri

    return MlflowClient(resolve_tracking_uri(tracking_uri))


def _experiment(client, name: str):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise SystemExit(f"flowrl.compare: no MLflow experiment named {name!r}")
    return exp


def _search_all(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of the experiment (MlflowClient.search_runs, all pages), oldest first."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, max_results=1000, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def collapse_lists(params: dict[str, str]) -> dict[str, str]:
    """{'method.granularities.0': '1', 'method.granularities.1': '2'} -> {'method.granularities': '[1, 2]'}.

    flowrl.training.tracking flattens a list into one param per item; a swept list (G²RPO's granularities)
    must compare as one value."""
    items: dict[str, dict[int, str]] = {}
    out = {}
    for key, value in params.items():
        m = _LIST_ITEM.match(key)
        if m and m.group(1) not in params:
            items.setdefault(m.group(1), {})[int(m.group(2))] = value
        else:
            out[key] = value
    for prefix, by_index in items.items():
        if sorted(by_index) == list(range(len(by_index))):
            out[prefix] = "[" + ", ".join(by_index[i] for i in range(len(by_index))) + "]"
        else:  # not a list after all (a dict with numeric keys): keep the items
            out.update({f"{prefix}.{i}": v for i, v in by_index.items()})
    return out


def load_runs(experiment: str, tracking_uri: str | None = None):
    """(experiment, DataFrame of every run but summary runs, oldest first).

    Columns: run_id, run (name), status, seed, `params.<key>` (lists collapsed), `metrics.<key>`
    (the latest value, as MLflow's search returns it) and `tags.<key>`."""
    import pandas as pd

    client = _client(tracking_uri)
    exp = _experiment(client, experiment)
    rows = []
    for run in _search_all(client, exp.experiment_id):
        tags = run.data.tags
        if tags.get(SUMMARY_TAG) == "true":
            continue
        params = collapse_lists(run.data.params)
        row = {"run_id": run.info.run_id, "run": run.info.run_name, "status": run.info.status}
        row["seed"] = params.get("seed", tags.get("seed"))
        row.update({f"params.{k}": v for k, v in params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in tags.items()})
        rows.append(row)
    return exp, pd.DataFrame(rows, columns=None if rows else ["run_id", "run", "status", "seed"])


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """[(step, value)] by step; a step logged twice keeps its last value."""
    by_step = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        by_step[m.step] = m.value
    return sorted(by_step.items())


# -- the swept keys --------------------------------------------------------------------------------


def resolve_key(name: str, columns) -> str:
    """'method' -> 'method.name', 'tau' -> 'method.tau', 'group_size' -> 'method.group_size',
    a full param key as is."""
    name = ALIASES.get(name, name)
    for key in (name, f"method.{name}"):
        if f"params.{key}" in columns:
            return key
    raise SystemExit(f"flowrl.compare: no param {name!r} in these runs (--by takes tag names like method, tau or param keys)")


def swept_keys(finished) -> list[str]:
    """The keys whose values differ across the finished runs and that are not fixed by the swept
    keys found before them (see the module docstring); never seed."""
    cols = [c.removeprefix("params.") for c in finished.columns if c.startswith("params.")]
    others = sorted(
        c for c in cols if c not in PREFERRED_KEYS and c.startswith(CANDIDATE_PREFIXES) and not c.startswith(NOT_SWEPT_PREFIXES)
    )
    keys: list[str] = []
    for key in [k for k in PREFERRED_KEYS if k in cols] + others:
        if key in NEVER_SWEPT:
            continue
        values = finished[f"params.{key}"].fillna("")
        if values.nunique() < 2:
            continue
        if keys:
            fixed = finished.assign(_v=values).groupby([f"params.{k}" for k in keys], dropna=False)["_v"].nunique()
            if fixed.max() <= 1:
                continue
        keys.append(key)
    return keys


def short(key: str) -> str:
    """'method.name' -> 'method', 'method.tau' -> 'tau', 'train.prompts_per_step' -> 'prompts_per_step'."""
    return "method" if key == "method.name" else key.rsplit(".", 1)[-1]


def group_label(keys: list[str], values) -> str:
    parts = [str(v) if k == "method.name" else f"{short(k)}={v}" for k, v in zip(keys, values)]
    return " ".join(parts) or "all runs"


def _as_float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# -- statistics ------------------------------------------------------------------------------------


def mean_ci(values, level: float = CI_LEVEL) -> tuple[float, float, int]:
    """(mean, half-width of the Student t interval at `level`, n) of the finite values.

    half = t(1 - (1 - level) / 2, n - 1) * s / sqrt(n), s the sample standard deviation (ddof 1);
    NaN for n < 2 (one seed has no interval), and (NaN, NaN, 0) without values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan, n
    from scipy.stats import t

    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, float(t.ppf(1 - (1 - level) / 2, n - 1)) * sd / math.sqrt(n), n


# -- per-run values --------------------------------------------------------------------------------


def trained_reward(row) -> str | None:
    """The name of the reward a run was trained on (see the module docstring)."""
    name = row.get("params.reward.name")
    if isinstance(name, str) and name:
        return name
    names = sorted(c.removeprefix("metrics.train/reward/") for c in row.index if c.startswith("metrics.train/reward/"))
    names = [n for n in names if _as_float(row.get(f"metrics.train/reward/{n}")) is not None]
    if len(names) <= 1:
        return names[0] if names else None
    weights = {n: _as_float(row.get(f"params.reward.weights.{n}")) or 0.0 for n in names}
    return max(names, key=lambda n: weights[n])


def run_values(client, finished, metric: str):
    """Per finished run: the histories the plots need and the first/last values the table needs.

    Returns (frame with columns `<reward> first` / `<reward> last` for every val/reward/* and
    `proxy` / `proxy Δ` / `truth Δ`, curves {run_id: [(x, y), ...]}, x_is_nfe)."""
    val_keys = sorted({c.removeprefix("metrics.") for c in finished.columns if c.startswith("metrics.val/reward/")})
    if metric not in val_keys and f"metrics.{metric}" in finished.columns:
        val_keys.append(metric)
    val_keys.sort(key=lambda k: k != metric)  # the ranked metric's columns first
    out = finished.copy()
    curves, nfe_seen = {}, True
    for idx, row in finished.iterrows():
        rid = row["run_id"]
        for key in val_keys:
            hist = metric_history(client, rid, key) if _as_float(row.get(f"metrics.{key}")) is not None else []
            out.loc[idx, f"{key} first"] = hist[0][1] if hist else math.nan
            out.loc[idx, f"{key} last"] = hist[-1][1] if hist else math.nan
            if key == metric:
                nfe = dict(metric_history(client, rid, NFE_METRIC)) if f"metrics.{NFE_METRIC}" in row.index else {}
                nfe_seen = nfe_seen and bool(nfe) and all(step in nfe for step, _ in hist)
                curves[rid] = [(step, nfe.get(step), value) for step, value in hist]
        proxy = trained_reward(row)
        out.loc[idx, "proxy"] = proxy
        if proxy is not None:
            key = f"val/reward/{proxy}" if f"val/reward/{proxy}" in val_keys else f"train/reward/{proxy}"
            if key.startswith("val/"):
                first, last = out.loc[idx, f"{key} first"], out.loc[idx, f"{key} last"]
            else:
                hist = metric_history(client, rid, key)
                first, last = (hist[0][1], hist[-1][1]) if hist else (math.nan, math.nan)
            out.loc[idx, "proxy key"] = key
            out.loc[idx, "proxy Δ"] = last - first
        if f"{GROUND_TRUTH} last" in out.columns:
            out.loc[idx, "truth Δ"] = out.loc[idx, f"{GROUND_TRUTH} last"] - out.loc[idx, f"{GROUND_TRUTH} first"]
    x_is_nfe = nfe_seen and bool(curves)
    curves = {rid: [((nfe if x_is_nfe else step), y) for step, nfe, y in pts] for rid, pts in curves.items()}
    return out, curves, x_is_nfe, val_keys


# -- the table -------------------------------------------------------------------------------------


def group_table(values, keys: list[str], val_keys: list[str], metric: str):
    """One row per group: the keys, n, seeds, and per held-out reward the last value and its
    change since the first evaluation (mean and 95% CI half-width over seeds); best --metric first."""
    import pandas as pd

    rows = []
    groups = values.groupby([f"params.{k}" for k in keys], dropna=False, sort=False) if keys else [((), values)]
    for gvals, g in groups:
        gvals = gvals if isinstance(gvals, tuple) else (gvals,)
        row = {short(k): ("" if v is None or v != v else v) for k, v in zip(keys, gvals)}
        row["n"] = len(g)
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"].dropna(), key=lambda s: _as_float(s) or 0.0))
        for key in val_keys:
            name = key.removeprefix("val/reward/")
            last, last_ci, _ = mean_ci(g[f"{key} last"])
            delta, delta_ci, _ = mean_ci(g[f"{key} last"] - g[f"{key} first"])
            row[name] = last
            row[f"{name} ±95% CI"] = last_ci
            row[f"Δ{name}"] = delta
            row[f"Δ{name} ±95% CI"] = delta_ci
        if f"metrics.{NFE_METRIC}" in g.columns:
            nfe = mean_ci(g[f"metrics.{NFE_METRIC}"])[0]
            row["NFE"] = None if nfe != nfe else int(round(nfe))
        if "metrics.perf/iteration_s" in g.columns:
            row["s/iter (last)"] = round(mean_ci(g["metrics.perf/iteration_s"])[0], 1)
        row["_label"] = group_label(keys, gvals)
        rows.append(row)
    table = pd.DataFrame(rows)
    sort_col = metric.removeprefix("val/reward/")
    if sort_col in table.columns:
        table = table.sort_values(sort_col, ascending=False, kind="stable")
    return table.reset_index(drop=True)


def _cell(value) -> str:
    """4 decimals for floats, blank for missing (NaN: a group of one seed has no CI), else str."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{round(value, 4) + 0.0:.4f}"  # no "-0.0000"
    return str(value)


def _md(frame) -> str:
    """pandas' to_markdown (tabulate) on cells formatted here: param values stay as logged
    ('1.8', not '1.8000'), numbers are right-aligned."""
    numeric = [frame[c].dtype.kind in "if" for c in frame.columns]
    cells = frame.astype(object).map(_cell)
    return cells.to_markdown(index=False, disable_numparse=True, colalign=["right" if n else "left" for n in numeric])


def render_markdown(experiment, metric, keys, table, values, left_out, x_is_nfe, ui_path) -> str:
    lines = [f"# flowrl.compare: experiment `{experiment}`", ""]
    by = ", ".join(f"`{k}`" for k in keys) or "(nothing differs: one group)"
    lines += [
        f"Grouped by {by}; `n` runs (seeds) per group. Each reward: the mean over seeds at the last",
        "held-out evaluation, and `Δ` its change since the first one (before training); `±95% CI` is",
        "the half-width of the Student t interval over seeds (blank for one seed). Sorted by",
        f"`{metric}`.",
        "",
    ]
    lines += [_md(table.drop(columns=["_label"])) if not table.empty else "(no finished runs)", ""]
    if not values.empty:
        lines += ["## Runs", ""]
        cols = {"run": "run", "seed": "seed"} | {f"params.{k}": short(k) for k in keys}
        per_run = values[[c for c in cols if c in values.columns]].rename(columns=cols)
        for key in sorted(c.removesuffix(" last") for c in values.columns if c.endswith(" last")):
            name = key.removeprefix("val/reward/")
            per_run[f"{name} before"] = values[f"{key} first"]
            per_run[f"{name} after"] = values[f"{key} last"]
        if "proxy key" in values.columns:
            per_run["trained reward"] = values["proxy key"]
        lines += [_md(per_run), ""]
    lines += ["## Not compared (not FINISHED)", ""]
    if left_out.empty:
        lines += ["(none)", ""]
    else:
        lines += [_md(left_out[["run", "status"]]), ""]
    x = "NFE (`val/nfe_total`)" if x_is_nfe else "step (`val/nfe_total` not logged)"
    lines += [
        "## Plots",
        "",
        f"- `reward_vs_nfe.png`: `{metric}` against {x}, mean over seeds, 95% CI band",
        "- `final.png`: the last evaluation per group, 95% CI bars",
    ]
    lines += [f"- `ablation_{short(k)}.png`: `{metric}` against `{k}`" for k in keys if k != "method.name"]
    lines += [f"- `proxy_vs_truth.png`: Δ trained reward against Δ `{GROUND_TRUTH}`, one point per run", ""]
    if ui_path:
        grouped = ", ".join(short(k) for k in keys) or "nothing"
        lines += [f"MLflow UI, these runs grouped by {grouped}: `<server>/{ui_path}` (charts: `&compareRunsMode=CHART`)", ""]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _group_iter(values, keys):
    if not keys:
        yield "all runs", values
        return
    for gvals, g in values.groupby([f"params.{k}" for k in keys], dropna=False, sort=False):
        yield group_label(keys, gvals if isinstance(gvals, tuple) else (gvals,)), g


def plot_reward_vs_nfe(path, values, keys, curves, x_is_nfe, metric) -> None:
    """Per group, the k-th evaluation of every seed averaged: x the mean NFE (or step), y the mean
    metric, the band its 95% CI."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, g in _group_iter(values, keys):
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
    raw = sorted(set(values[f"params.{key}"].fillna("None")), key=lambda v: (_as_float(v) is None, _as_float(v) or 0.0, v))
    numeric = all(_as_float(v) is not None for v in raw)
    pos = {v: (_as_float(v) if numeric else i) for i, v in enumerate(raw)}
    others = [k for k in keys if k != key]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, g in _group_iter(values, others):
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
    for label, g in _group_iter(values, keys):
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


# -- the MLflow UI view ----------------------------------------------------------------------------


def share_grouped_view(client, experiment, keys: list[str], runs, metric: str, x_is_nfe: bool) -> str:
    """Store an MLflow UI view of this comparison as the experiment tag
    mlflow.sharedViewState.flowrl-compare and return the UI path that opens it:
    `#/experiments/<id>/runs?viewStateShareKey=flowrl-compare` (add `&compareRunsMode=CHART` for
    the charts).

    The view: runs grouped by `keys` (as the run tags flowrl sets where it has one, else the
    params), the group rows showing the mean over seeds; only FINISHED runs, as in the table, and
    not the summary runs; the held-out rewards, the NFE and the seed as columns; and a first
    chart of `metric` against `val/nfe_total` (the step without it), which the UI draws per
    group as the mean with a band over the seeds. It is the state the UI's own "Share" button stores (MLflow 3.17; a plain JSON
    value is accepted)."""
    from flowrl.training.tracking import RUN_TAG_KEYS

    tag_for = {key: tag for tag, key in RUN_TAG_KEYS}
    group_by = []
    for key in keys:
        tag = tag_for.get(key)
        if tag is not None and f"tags.{tag}" in runs.columns:
            group_by.append({"mode": "tag", "groupByData": tag})
        else:
            group_by.append({"mode": "param", "groupByData": key})
    metrics = sorted(c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.val/"))
    columns = [f"metrics.`{m}`" for m in metrics] + (["tags.`seed`"] if "tags.seed" in runs.columns else [])
    section = "flowrl-compare"
    chart = {
        "type": "LINE",
        "uuid": "flowrl-compare-curve",
        "metricSectionId": section,
        "isGenerated": False,
        "deleted": False,
        "runsCountToCompare": 100,
        "metricKey": metric,
        "selectedMetricKeys": [metric],
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "metric" if x_is_nfe else "step",
        "selectedXAxisMetricKey": NFE_METRIC if x_is_nfe else "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": False,
        "useGlobalLineSmoothing": False,
    }
    state = {
        "groupBy": {"aggregateFunction": "average", "groupByKeys": group_by} if group_by else None,
        "searchFilter": f"attributes.status = 'FINISHED' and attributes.run_name != '{SUMMARY_RUN_NAME}'",
        "selectedColumns": columns,
        "compareRunCharts": [chart],
        "compareRunSections": [
            {
                "uuid": section,
                "name": "flowrl.compare",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
        ],
    }
    client.set_experiment_tag(experiment.experiment_id, SHARED_VIEW_PREFIX + SHARED_VIEW_KEY, json.dumps(state))
    return f"#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={SHARED_VIEW_KEY}"


# -- the whole comparison --------------------------------------------------------------------------


def compare(
    experiment: str,
    metric: str = DEFAULT_METRIC,
    by: list[str] | None = None,
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    log_summary: bool = True,
) -> dict:
    """Read, group, aggregate, plot, write and log (see the module docstring).

    Returns {'table': grouped DataFrame, 'runs': per-run DataFrame, 'left_out': DataFrame,
    'keys': swept keys, 'files': written paths, 'summary_run_id': id or None, 'markdown': text,
    'ui_path': the MLflow UI path of the grouped view}."""
    client = _client(tracking_uri)
    exp, runs = load_runs(experiment, tracking_uri)
    out = Path(out_dir) if out_dir is not None else Path("outputs") / "compare" / experiment
    out.mkdir(parents=True, exist_ok=True)
    finished = runs[runs["status"] == "FINISHED"].reset_index(drop=True)
    left_out = runs[runs["status"] != "FINISHED"].reset_index(drop=True)
    keys = [resolve_key(k, runs.columns) for k in by] if by else swept_keys(finished)
    values, curves, x_is_nfe, val_keys = run_values(client, finished, metric)
    if not finished.empty and f"{metric} last" not in values.columns:
        raise SystemExit(f"flowrl.compare: no finished run of {experiment!r} logs {metric!r}")
    table = group_table(values, keys, val_keys, metric) if not finished.empty else values.iloc[0:0].assign(_label=[])
    ui_path = share_grouped_view(client, exp, keys, runs, metric, x_is_nfe)
    text = render_markdown(experiment, metric, keys, table, values, left_out, x_is_nfe, ui_path)
    files = [out / "table.md"]
    files[0].write_text(text + "\n")
    if not finished.empty:
        plot_reward_vs_nfe(out / "reward_vs_nfe.png", values, keys, curves, x_is_nfe, metric)
        plot_final(out / "final.png", table, metric)
        files += [out / "reward_vs_nfe.png", out / "final.png"]
        for key in keys:
            if key != "method.name":
                plot_ablation(out / f"ablation_{short(key)}.png", values, keys, key, metric)
                files.append(out / f"ablation_{short(key)}.png")
        if plot_proxy_vs_truth(out / "proxy_vs_truth.png", values, keys):
            files.append(out / "proxy_vs_truth.png")
    summary_id = None
    if log_summary:
        summary_id = log_summary_run(client, exp.experiment_id, files, metric, keys, len(finished), len(left_out))
    return {
        "table": table,
        "runs": values,
        "left_out": left_out,
        "keys": keys,
        "files": files,
        "summary_run_id": summary_id,
        "markdown": text,
        "ui_path": ui_path,
    }


def log_summary_run(client, experiment_id: str, files, metric: str, keys: list[str], n_finished: int, n_left_out: int) -> str:
    """A FINISHED run named "compare" (tag flowrl.summary=true, left out of later comparisons)
    holding the table and the plots as artifacts."""
    run = client.create_run(experiment_id, run_name=SUMMARY_RUN_NAME, tags={SUMMARY_TAG: "true"})
    rid = run.info.run_id
    client.log_param(rid, "metric", metric)
    client.log_param(rid, "by", ",".join(keys) or "-")
    client.log_param(rid, "runs_compared", n_finished)
    client.log_param(rid, "runs_left_out", n_left_out)
    for path in files:
        client.log_artifact(rid, str(path))
    client.set_terminated(rid, "FINISHED")
    return rid


# -- the older single table ------------------------------------------------------------------------


def runs_table(experiment: str, tracking_uri: str | None = None):
    """One row per finished run of `experiment` (oldest first): budget, held-out rewards at the
    first and last evaluation and their change, s per iteration. Summary runs are left out."""
    import pandas as pd

    client = _client(tracking_uri)
    exp = _experiment(client, experiment)
    rows = []
    for run in _search_all(client, exp.experiment_id, "attributes.status = 'FINISHED'"):
        if run.data.tags.get(SUMMARY_TAG) == "true":
            continue
        p = run.data.params
        row = {
            "run": run.info.run_name,
            "method": p.get("method.name"),
            "prompts/iter": p.get("train.prompts_per_step"),
            "G": p.get("method.group_size"),
            "iterations": p.get("train.iterations"),
        }
        nfe = client.get_metric_history(run.info.run_id, "perf/nfe")
        row["NFE/iter (spent)"] = round(sum(m.value for m in nfe) / len(nfe)) if nfe else None
        it = client.get_metric_history(run.info.run_id, "perf/iteration_s")
        row["s/iter"] = round(sum(m.value for m in it) / len(it), 1) if it else None
        for key in sorted(k for k in run.data.metrics if k.startswith("val/reward/")):
            hist = metric_history(client, run.info.run_id, key)
            name = key.removeprefix("val/reward/")
            row[f"{name} before"] = round(hist[0][1], 4)
            row[f"{name} after"] = round(hist[-1][1], 4)
            row[f"{name} delta"] = round(hist[-1][1] - hist[0][1], 4)
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table) -> str:
    """A DataFrame as a GitHub markdown table (the older single table's format)."""
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join("" if v is None or v != v else str(v) for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flowrl.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="flowrl", help="MLflow experiment name (logger.experiment_name)")
    ap.add_argument("--metric", default=DEFAULT_METRIC, help=f"held-out metric to rank and plot (default {DEFAULT_METRIC})")
    ap.add_argument("--by", default=None, help="comma-separated keys to group by (default: the swept keys, found)")
    ap.add_argument(
        "--out", default=None, help="output folder (default outputs/compare/<experiment>); FILE.md: the older per-run table only"
    )
    ap.add_argument("--tracking-uri", default=None, help="default: env MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ap.add_argument("--no-summary-run", action="store_true", help="do not log the results as a summary run")
    args = ap.parse_args(argv)
    if args.out and args.out.endswith(".md"):  # the older single table, as before
        table = runs_table(args.experiment, args.tracking_uri)
        text = to_markdown(table) if not table.empty else "(no finished runs)"
        print(text)
        Path(args.out).write_text(text + "\n")
        return
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    result = compare(args.experiment, args.metric, by, args.out, args.tracking_uri, log_summary=not args.no_summary_run)
    print(result["markdown"])
    print(f"\nwrote {', '.join(str(p) for p in result['files'])}")
    if result["summary_run_id"]:
        print(f"logged as artifacts of run {result['summary_run_id']} ('{SUMMARY_RUN_NAME}')")


if __name__ == "__main__":
    main()
