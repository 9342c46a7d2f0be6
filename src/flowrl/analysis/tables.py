"""The groups of a comparison and its markdown table: which keys were swept, one row per group of
seeds, and `table.md`.

Swept keys (`--by`, default: found): among the shared preferred keys (method.name,
method.group_size, method.clip_eps), then the knobs that the runs' step-scheduler classes declare
(`sweep_knobs`, read through each run's `method.step_scheduler._target_` param), then every other
method.*, train.*, budget.* and reward.* param, a key is swept when its value differs across the
finished runs and is not already fixed by the swept keys found before it (a methods sweep groups by
the method only, although each method has its own G). `seed` is never a swept key: it is what is
averaged over. `--by` names them: `method`, `G`, a full param key, or a method config key without
its `method.` prefix.
"""

from __future__ import annotations

import warnings

from flowrl.analysis.runs import NFE_METRIC
from flowrl.analysis.stats import as_float, mean_ci

# Their order decides which of two keys that fix each other is kept: method.name over
# method.group_size in a methods sweep. The step schedulers' knobs follow them (preferred_keys).
SHARED_PREFERRED_KEYS = ("method.name", "method.group_size", "method.clip_eps")
STEP_SCHEDULER_TARGET = "method.step_scheduler._target_"
CANDIDATE_PREFIXES = ("method.", "train.", "budget.", "reward.")
NEVER_SWEPT = ("seed",)
NOT_SWEPT_PREFIXES = ("method.step_scheduler.", "method.calibration.")  # interpolations of method.* / not knobs
ALIASES = {"method": "method.name", "G": "method.group_size"}


def resolve_key(name: str, columns) -> str:
    """A `--by` name as a param key: an alias ('method' -> 'method.name', 'G' ->
    'method.group_size'), else `name` if it is a param, else `method.<name>`."""
    name = ALIASES.get(name, name)
    for key in (name, f"method.{name}"):
        if f"params.{key}" in columns:
            return key
    raise SystemExit(
        f"flowrl.compare: no param {name!r} in these runs"
        " (--by takes method, G, a param key, or a method config key without its 'method.' prefix)"
    )


def step_scheduler_knobs(path: str) -> tuple[str, ...]:
    """The method config keys (no 'method.' prefix) that the step-scheduler class at `path`
    declares as its sweep knobs; () when it declares none or no longer imports (a run logged
    before a class moved: its keys are still found, only without the preference)."""
    from hydra.utils import get_class

    try:
        cls = get_class(path)
    except (ImportError, ValueError) as err:
        warnings.warn(
            f"flowrl.compare: step_scheduler {path!r} does not import ({err}); its knobs are not preferred", stacklevel=2
        )
        return ()
    return tuple(getattr(cls, "sweep_knobs", ()))


def preferred_keys(finished) -> list[str]:
    """The shared preferred keys, then the knobs of every step-scheduler class the runs used (in
    the order of the runs, oldest first), as `method.<knob>`."""
    keys = list(SHARED_PREFERRED_KEYS)
    col = f"params.{STEP_SCHEDULER_TARGET}"
    paths = finished[col].dropna().unique() if col in finished.columns else []
    for path in paths:
        keys += [f"method.{knob}" for knob in step_scheduler_knobs(path) if f"method.{knob}" not in keys]
    return keys


def swept_keys(finished) -> list[str]:
    """The keys whose values differ across the finished runs and that are not fixed by the swept
    keys found before them (see the module docstring); never seed."""
    cols = [c.removeprefix("params.") for c in finished.columns if c.startswith("params.")]
    preferred = preferred_keys(finished)
    others = sorted(
        c for c in cols if c not in preferred and c.startswith(CANDIDATE_PREFIXES) and not c.startswith(NOT_SWEPT_PREFIXES)
    )
    keys: list[str] = []
    for key in [k for k in preferred if k in cols] + others:
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
    """'method.name' -> 'method', 'method.clip_eps' -> 'clip_eps', 'train.prompts_per_step' -> 'prompts_per_step'."""
    return "method" if key == "method.name" else key.rsplit(".", 1)[-1]


def group_label(keys: list[str], values) -> str:
    parts = [str(v) if k == "method.name" else f"{short(k)}={v}" for k, v in zip(keys, values)]
    return " ".join(parts) or "all runs"


def has_proxy_points(values) -> bool:
    """Whether some run has both a trained-reward change and a ground-truth change to plot."""
    if "proxy Δ" not in values.columns or "truth Δ" not in values.columns:
        return False
    return bool(values[["proxy Δ", "truth Δ"]].notna().all(axis=1).any())


def group_iter(values, keys):
    """(label, runs) per group of `keys`' values, in the order of first appearance."""
    if not keys:
        yield "all runs", values
        return
    for gvals, g in values.groupby([f"params.{k}" for k in keys], dropna=False, sort=False):
        yield group_label(keys, gvals if isinstance(gvals, tuple) else (gvals,)), g


def group_table(values, keys: list[str], val_keys: list[str], metric: str):
    """One row per group: the keys, n, seeds, and per held-out reward the last value and its
    change since the first evaluation (mean and 95% CI half-width over seeds); best `metric` first."""
    import pandas as pd

    rows = []
    groups = values.groupby([f"params.{k}" for k in keys], dropna=False, sort=False) if keys else [((), values)]
    for gvals, g in groups:
        gvals = gvals if isinstance(gvals, tuple) else (gvals,)
        row = {short(k): ("" if v is None or v != v else v) for k, v in zip(keys, gvals)}
        row["n"] = len(g)
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"].dropna(), key=lambda s: as_float(s) or 0.0))
        for key in val_keys:
            name = key.removeprefix("val/reward/")
            last, last_ci, _ = mean_ci(g[f"{key} last"])
            delta, delta_ci, _ = mean_ci(g[f"{key} last"] - g[f"{key} first"])
            row[name] = last
            row[f"{name} ±95% CI"] = last_ci
            row[f"Δ{name}"] = delta
            row[f"Δ{name} ±95% CI"] = delta_ci
        row |= noise_vs_spread(g, metric)
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


def category_table(client, values, keys: list[str], metric: str):
    """GenEval's per-category table, when the ground truth is a category overall
    (`val/category/<reward>/overall`): one row per group, per category of that reward the mean over
    seeds of its last evaluation and of its change since the first (before training), with the 95%
    t half-width of the change. None for other metrics or runs that log no categories."""
    import pandas as pd

    from flowrl.analysis.runs import metric_history

    if not (metric.startswith("val/category/") and metric.endswith("/overall")):
        return None
    prefix = metric.removesuffix("overall")
    cats = sorted({c.removeprefix(f"metrics.{prefix}") for c in values.columns if c.startswith(f"metrics.{prefix}")})
    cats = [c for c in cats if c != "overall"] + ["overall"]
    if len(cats) < 2:
        return None
    rows = []
    for label, g in group_iter(values, keys):
        row = {"group": label, "n": len(g)}
        for cat in cats:
            first, last = [], []
            for rid in g["run_id"]:
                hist = metric_history(client, rid, prefix + cat)
                if hist:
                    first.append(hist[0][1])
                    last.append(hist[-1][1])
            row[cat] = mean_ci(last)[0]
            delta, ci, _ = mean_ci([b - a for a, b in zip(first, last)])
            row[f"Δ{cat}"], row[f"Δ{cat} ±95% CI"] = delta, ci
        rows.append(row)
    return pd.DataFrame(rows)


def render_categories(table, metric: str) -> str:
    """The markdown section of `category_table`."""
    reward = metric.removeprefix("val/category/").removesuffix("/overall")
    return "\n".join(
        [
            f"## Per category (`{reward}`: GenEval's categories; `overall` is their mean)",
            "",
            "Each category's accuracy at the last evaluation (mean over seeds), `Δ` its change since",
            "the evaluation before training, `±95% CI` the t half-width of that change over seeds.",
            "",
            _md(table),
            "",
        ]
    )


def noise_vs_spread(g, metric: str) -> dict[str, float]:
    """The ground truth's two noises, from one group's runs: `eval SE`, the final evaluation's own
    sampling noise (its bootstrap 95% interval, val_ci/<name>/low|high, as a standard error: width /
    2 x 1.96, averaged over runs), and `seed SD`, the spread of the final score over seeds (sample
    SD). An evaluation is large enough when eval SE <= seed SD / 4: then seeds, not the
    evaluation, limit what a comparison can resolve."""
    name = metric.removeprefix("val/reward/")
    ci = metric.replace("val/reward/", "val_ci/", 1) if metric.startswith("val/reward/") else metric.replace("val/", "val_ci/", 1)
    low, high = f"metrics.{ci}/low", f"metrics.{ci}/high"
    if low not in g.columns or high not in g.columns:
        return {}
    se = ((g[high] - g[low]) / (2 * 1.959964)).mean()
    sd = g[f"{metric} last"].std(ddof=1) if len(g) > 1 else float("nan")
    return {f"{name} eval SE": se, f"{name} seed SD": sd}


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


def _per_run(values, keys):
    """One row per finished run: name, seed, the swept keys, each held-out reward before / after,
    the trained reward's key."""
    cols = {"run": "run", "seed": "seed"} | {f"params.{k}": short(k) for k in keys}
    per_run = values[[c for c in cols if c in values.columns]].rename(columns=cols)
    for key in sorted(c.removesuffix(" last") for c in values.columns if c.endswith(" last")):
        name = key.removeprefix("val/reward/")
        per_run[f"{name} before"] = values[f"{key} first"]
        per_run[f"{name} after"] = values[f"{key} last"]
    if "proxy key" in values.columns:
        per_run["trained reward"] = values["proxy key"]
    return per_run


def render_markdown(experiment, metric, keys, table, values, left_out, x_is_nfe, ui_path, sections=()) -> str:
    """`table.md`: the grouped table, `sections` (markdown, e.g. the paired comparison), the runs,
    the runs left out, the plots, the MLflow UI view."""
    lines = [f"# flowrl.compare: experiment `{experiment}`", ""]
    by = ", ".join(f"`{k}`" for k in keys) or "(nothing differs: one group)"
    lines += [
        f"Grouped by {by}; `n` runs (seeds) per group. Each reward: the mean over seeds at the last",
        "held-out evaluation, and `Δ` its change since the first one (before training); `±95% CI` is",
        "the half-width of the Student t interval over seeds (blank for one seed). Sorted by",
        f"`{metric}`. `eval SE`: the final evaluation's own sampling noise (its bootstrap interval",
        "as a standard error); `seed SD`: the final score's spread over seeds; the evaluation is",
        "sized well when eval SE <= seed SD / 4.",
        "",
    ]
    lines += [_md(table.drop(columns=["_label"])) if not table.empty else "(no finished runs)", ""]
    lines += list(sections)
    if not values.empty:
        lines += ["## Runs", "", _md(_per_run(values, keys)), ""]
    lines += ["## Not compared (not FINISHED)", ""]
    lines += ["(none)", ""] if left_out.empty else [_md(left_out[["run", "status"]]), ""]
    x = "NFE (`val/nfe_total`)" if x_is_nfe else "step (`val/nfe_total` not logged)"
    lines += [
        "## Plots",
        "",
        f"- `reward_vs_nfe.png`: `{metric}` against {x}, mean over seeds, 95% CI band",
        "- `final.png`: the last evaluation per group, 95% CI bars",
    ]
    lines += [f"- `ablation_{short(k)}.png`: `{metric}` against `{k}`" for k in keys if k != "method.name"]
    if has_proxy_points(values):
        lines += [f"- `proxy_vs_truth.png`: Δ trained reward against Δ `{metric}`, one point per run"]
    lines += [""]
    if ui_path:
        grouped = ", ".join(short(k) for k in keys) or "nothing"
        lines += [f"MLflow UI, these runs grouped by {grouped}: `<server>/{ui_path}` (charts: `&compareRunsMode=CHART`)", ""]
    return "\n".join(lines)
