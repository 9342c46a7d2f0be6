"""MLflow tracking of every run, so that ablations (Hydra multirun sweeps) compare in the MLflow UI.

A run records: params = the flattened resolved config, namespaced metrics (`train/loss`,
`train/reward/<name>`, `val/reward/<name>`, `perf/nfe`), artifacts (the resolved config, sample
grids, final weights) and tags (git commit, dirty tree, and the knobs a sweep compares: method,
group_size, clip_eps, the method's own sweep knobs, seed, sweep, budget). Experiments are tagged
mlflow.experimentKind=custom_model_development (training runs, in MLflow's words; the page the UI
opens them on is `make ui`'s choice: flowrl.mlflow_ui).

mlflow and lightning take seconds to import, so they are imported inside the functions:
`import flowrl.training.tracking` stays cheap (config tooling and tests import it without training).
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import tempfile
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow refuses a plain ./mlruns file store by default
MAX_PARAM_CHARS = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH: longer values are rejected
PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH (the store's per-request limit)
TRUNCATED = "..."
GIT_TIMEOUT_S = 5


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The given uri > env MLFLOW_TRACKING_URI > sqlite:///mlflow.db in the working directory.

    The explicit uri wins over the environment on purpose: Lightning's MLFlowLogger calls
    mlflow.set_tracking_uri(), which writes MLFLOW_TRACKING_URI into os.environ. With the
    environment first, the store of one in-process run (a pytest session, a Hydra multirun)
    would silently capture every later run that names its own store. Runs that name none
    (`tracking_uri: null`) still follow the environment, e.g. a shared tracking server."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _resolved(cfg):
    """Plain, resolved containers without the top-level `hydra` node.

    `hydra` is dropped before resolving: its interpolations (${hydra:...}, ${now:...}) only
    resolve inside a running Hydra app, and it describes the launcher, not the experiment."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        if "hydra" in cfg:
            cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, dict):
        return {k: v for k, v in cfg.items() if k != "hydra"}
    return cfg


def _param_value(value) -> str:
    """str(value), cut to MLflow's limit with a visible marker (MLflow rejects longer values)."""
    text = str(value)
    if len(text) <= MAX_PARAM_CHARS:
        return text
    return text[: MAX_PARAM_CHARS - len(TRUNCATED)] + TRUNCATED


def flatten_config(cfg, prefix: str = "") -> dict[str, str]:
    """{"method.group_size": "12", "reward.weights.tiny_clip": "0.7", "xs.0": "1", ...}.

    MLflow params are flat strings; dotted keys keep the config tree searchable in the UI
    (`params."method.group_size" = '12'`). Empty dicts/lists stay as one param ("{}", "[]")
    so that every config key is visible."""
    return _flatten(_resolved(cfg), prefix)


def _flatten(node, prefix: str) -> dict[str, str]:
    items = node.items() if isinstance(node, dict) else enumerate(node)
    out: dict[str, str] = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = _param_value(value)
    return out


def _sci(value) -> str:
    """1e-4 -> '1e-04', 2.5e-5 -> '2.5e-05' (not rounded to '2e-05': names must stay distinct)."""
    if not isinstance(value, (int, float)) or value == 0:
        return str(value)
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def _optimizer_lr(node):
    """The learning rate the optimizer gets: method.lr x train.lr_scale."""
    from omegaconf import OmegaConf

    lr = OmegaConf.select(node, "method.lr", default=None)
    scale = OmegaConf.select(node, "train.lr_scale", default=None)
    return lr if lr is None or scale is None else lr * scale


def _scheduler_knobs(node):
    """The method's own knobs, as its step scheduler declares them (run_name_knobs): the
    ablations sweep these, and a sweep's runs must not all read alike. No method names here."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    target = OmegaConf.select(node, "method.step_scheduler._target_", default=None)
    if target is None:
        return None
    return " ".join(get_class(target).run_name_parts(node.method)) or None


RUN_NAME_PARTS = (  # (config key, or a function of the config; how it reads in the name)
    ("method.name", str),
    ("method.group_size", lambda v: f"G{v}"),
    ("method.clip_eps", lambda v: f"clip{_sci(v)}"),
    ("method.noise_level", lambda v: f"a{v:g}" if isinstance(v, (int, float)) else f"a{v}"),
    (_scheduler_knobs, str),
    ("method.kl_beta", lambda v: f"kl{v:g}" if v else None),
    (_optimizer_lr, lambda v: f"lr{_sci(v)}"),
    ("seed", lambda v: f"s{v}"),
)


def run_name(cfg) -> str:
    """'<method> G12 clip1e-04 a0.3 lr1e-05 s0': the method and its key hyper-parameters.

    The MLflow run list shows names first; this makes sweep members tell apart at a glance.
    Keys the config lacks are left out."""
    from omegaconf import DictConfig, OmegaConf

    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(_resolved(cfg))
    parts = []
    for key, fmt in RUN_NAME_PARTS:
        value = key(node) if callable(key) else OmegaConf.select(node, key, default=None)
        part = None if value is None else fmt(value)
        if part is not None:
            parts.append(part)
    return " ".join(parts) or "flowrl"


def _git(args: list[str], repo_dir: str | Path | None) -> str | None:
    """stdout of a git command, None outside a checkout or without git (never raises)."""
    try:
        out = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(repo_dir: str | Path | None = None) -> str | None:
    """HEAD of the checkout holding repo_dir (default: the working directory), so a run can be
    reproduced from its commit; None outside a git checkout."""
    out = _git(["rev-parse", "HEAD"], repo_dir)
    return out.strip() if out and out.strip() else None


def git_dirty(repo_dir: str | Path | None = None) -> bool | None:
    """True if tracked files differ from HEAD (then the commit alone does not reproduce the run).

    Untracked files are ignored: run outputs (mlflow.db, outputs/) would mark every run dirty."""
    out = _git(["status", "--porcelain", "--untracked-files=no"], repo_dir)
    return None if out is None else bool(out.strip())


def build_mlflow_logger(
    experiment_name: str = "flowrl",
    run_name: str | None = None,
    tracking_uri: str | None = None,
    tags: dict | None = None,
    log_model: bool = False,
    run_id: str | None = None,
):
    """A RunLogger (Lightning MLFlowLogger) on the resolved tracking uri (the Hydra target of conf/logger).

    Without an explicit uri Lightning would fall back to a ./mlruns file store, which MLflow
    refuses; the run itself is created lazily, on the first use of `.experiment` / `.run_id`.
    `run_id` continues an existing run (a resumed training)."""
    uri = resolve_tracking_uri(tracking_uri)
    with sqlite_store_lock(uri), _first_contact(uri):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)  # creates / migrates a new sqlite store
        ensure_experiment(client, experiment_name)  # two sweeps' first runs must not both create it
    return _run_logger_class()(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=uri,
        tags={str(k): str(v) for k, v in (tags or {}).items()},
        log_model=log_model,
        run_id=run_id,
    )


# MLflow's own retry and timeout settings for the first request to a tracking server (its defaults,
# 7 retries with backoff 2 and a 120 s timeout, kept an unreachable server waiting 257 s): 3 tries
# of at most 5 s, about 20 s in the worst case (a silent host), 3 s for a refused connection. Only
# the first contact: the run's own requests keep MLflow's defaults (a long run rides out a hiccup).
# A setting in the environment wins.
FIRST_CONTACT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


@contextlib.contextmanager
def _first_contact(uri: str):
    """A tracking server (http / https) that does not answer stops the run in one line, within
    FIRST_CONTACT_ENV's retries; other stores pass through."""
    if not uri.startswith(("http://", "https://")):
        yield
        return
    from flowrl.config.errors import UserFacingError

    saved = {key: os.environ.get(key) for key in FIRST_CONTACT_ENV}
    for key, value in FIRST_CONTACT_ENV.items():
        os.environ.setdefault(key, value)
    try:
        yield
    except Exception as err:
        import re

        text = str(err)
        found = re.search(r"\[Errno -?\d+\][^'\")]*|Read timed out|timed out", text)
        reason = found.group(0).strip() if found else text.splitlines()[0][:200]
        raise UserFacingError(
            f"tracking server {uri} does not answer ({reason}); start it (mlflow server, or make ui for the "
            f"local store) or track locally: logger.tracking_uri=sqlite:///mlflow.db"
        ) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def reopen_run(logger) -> None:
    """A resumed run: its MLflow run RUNNING again, and the steps it logged after its checkpoint
    (it may have been killed later) not logged twice: the resumed run recomputes them exactly."""
    client, run_id = logger.experiment, logger.run_id
    logger.status_before_resume = client.get_run(run_id).info.status  # a failed resume restores it
    client.update_run(run_id, status="RUNNING")
    history = client.get_metric_history(run_id, "perf/iteration_s")  # logged every iteration
    logger.skip_through = max((m.step for m in history), default=-1)


def first_logged(logger, prefix: str) -> dict[str, float]:
    """{key: value at its first step} of a run's metrics under `prefix` (a resumed run's "before")."""
    client, run_id = logger.experiment, logger.run_id
    out = {}
    for key in client.get_run(run_id).data.metrics:
        if key.startswith(prefix):
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            out[key] = history[0].value
    return out


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow's "Machine learning" kind: training runs, no GenAI traces


def ensure_experiment(client, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged mlflow.experimentKind=custom_model_development.

    The tag records what the experiment holds, in MLflow's own words (the UI's experiment-kind
    selector writes the same tag). It does not choose the page the UI opens: MLflow 3.17.2's UI
    follows the browser's "GenAI" / "Model training" switch instead, which `make ui`'s app sets
    (flowrl.mlflow_ui). Experiments created before flowrl set the tag (or by another tool) get it
    too, unless they already carry a kind of their own."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


@contextlib.contextmanager
def sqlite_store_lock(uri: str):
    """Hold an exclusive lock on `<db>.lock` while a sqlite store (and an experiment) is created.

    MLflow builds a new sqlite store by running its schema migrations, and two processes doing
    that on one fresh file at once (a parallel Hydra sweep, two trainings started together)
    corrupt it: "duplicate column name: step", "table latest_metrics already exists" (measured:
    3 or 4 of 4 processes started together failed). Once the first one has migrated, the others
    find the schema current and only read. Other stores pass through. (filelock: the library
    that does this on every OS; it ships with huggingface_hub, a dependency already.)"""
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
    if path is None:
        yield
        return
    from filelock import FileLock

    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):  # blocks until the process creating the store is done
        yield


@functools.cache
def _run_logger_class():
    """RunLogger, defined on first use so that importing this module does not import Lightning."""
    from lightning.pytorch.loggers import MLFlowLogger

    class RunLogger(MLFlowLogger):
        """An MLFlowLogger whose run ends when flowrl ends it (`end_run`), not when Lightning says.

        Lightning calls `finalize("success")` at the end of every `trainer.validate()` and
        `trainer.fit()`. flowrl.train validates before fitting, so the stock logger marks the run
        FINISHED after that first validation; a run killed later (OOM, SIGKILL, a lost node) then
        reads FINISHED in the MLflow UI with an end time minutes before its last metric. Here the
        run stays RUNNING until `end_run`: a run that never ends cleanly is visibly unfinished."""

        skip_through = -1  # a resumed run: steps up to here are in the store already

        def log_metrics(self, metrics, step=None) -> None:
            if step is not None and step <= self.skip_through:
                return
            super().log_metrics(metrics, step)

        def finalize(self, status: str = "success") -> None:  # noqa: ARG002 - Lightning's hook, ignored on purpose
            """Nothing: metrics are written synchronously; the run ends in end_run()."""

        def end_run(self, status: str = "success") -> None:
            """Terminate the MLflow run: "success" -> FINISHED, "failed" -> FAILED, "KILLED" as is."""
            super().finalize(status)

    return RunLogger


BUDGET_KEYS = ("nfe", "reward_queries", "wall_s")
SHARED_TAG_KEYS = (  # (tag, config key): the UI's group-by and parallel-coordinates read these
    ("method", "method.name"),
    ("group_size", "method.group_size"),
    ("clip_eps", "method.clip_eps"),
    ("seed", "seed"),
    ("sweep", "sweep"),
)


def run_tag_keys(resolved: dict) -> list[tuple[str, str]]:
    """The shared tags, then the method's own `sweep_knobs` (declared by its step scheduler class:
    e.g. an entropy threshold or a window size), each tagged under its own name."""
    target = ((resolved.get("method") or {}).get("step_scheduler") or {}).get("_target_")
    knobs = ()
    if target:
        from hydra.utils import get_class

        knobs = getattr(get_class(target), "sweep_knobs", ())
    return [*SHARED_TAG_KEYS[:3], *[(k, f"method.{k}") for k in knobs], *SHARED_TAG_KEYS[3:]]


def _budget_tag(resolved: dict) -> str | None:
    """'nfe=200000' (the set keys of the top-level `budget:` block, comma-joined), else
    'iterations=30' (train.iterations), else None."""
    budget = resolved.get("budget") or {}
    parts = [f"{key}={budget[key]}" for key in BUDGET_KEYS if isinstance(budget, dict) and budget.get(key) is not None]
    if parts:
        return ",".join(parts)
    iterations = (resolved.get("train") or {}).get("iterations")
    return None if iterations is None else f"iterations={iterations}"


def run_tags(cfg) -> dict[str, str]:
    """{'method': <name>, 'group_size': '12', 'clip_eps': '0.0001', <the method's sweep knobs>,
    'seed': '0', 'sweep': <name>, 'budget': 'iterations=30'}: the knobs a sweep compares, as MLflow run tags.

    The UI groups runs by a tag in one click (mean with a band over seeds) and lists tags in
    its parallel-coordinates chart; params are there too, but under their full dotted keys
    among some hundred others. A key the config lacks (or sets to null) is left out."""
    resolved = _resolved(cfg)
    if not isinstance(resolved, dict):
        return {}
    tags = {}
    for tag, key in run_tag_keys(resolved):
        node = resolved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            tags[tag] = str(node)
    budget = _budget_tag(resolved)
    if budget is not None:
        tags["budget"] = budget
    truth = ground_truth(resolved)
    if truth is not None:  # the held-out metric that judges the run (flowrl.compare's default)
        tags["ground_truth"] = truth
    return tags


def ground_truth(resolved: dict) -> str | None:
    """The metric key of the eval reward named by `ground_truth` (`auto`: the first of
    `eval_rewards`, each option lists its ground truth first: geneval for the compositional world,
    shapes for the first one, HPS for the real panel): val/reward/<name>, or for a reward that
    scores prompts by category (the geneval verifier) GenEval's headline, the mean over
    categories, val/category/<name>/overall."""
    truth, evals = resolved.get("ground_truth"), resolved.get("eval_rewards") or {}
    if truth == "auto":
        truth = next(iter(evals), None)
    if truth is None:
        return None
    target = (evals.get(truth) or {}).get("_target_")
    if target:
        from hydra.utils import get_class

        if hasattr(get_class(target), "categories"):
            return f"val/category/{truth}/overall"
    return f"val/reward/{truth}"


def log_run_metadata(logger, cfg, seed: int | None = None) -> None:
    """Params (the flattened resolved config), tags (git commit, dirty tree, and the sweep knobs
    of `run_tags`: method, group_size, clip_eps, the method's sweep knobs, seed, sweep, budget) and the resolved
    config as artifact config/resolved.yaml.

    Params go through log_batch in chunks of 100 (the store's per-request limit; MLflow 3's client
    chunks too, the explicit chunks keep this independent of that), not through
    logger.log_hyperparams, which silently cuts values to 250 characters. The git state is read
    from this package's checkout, not from the working directory, which may be anywhere."""
    from mlflow.entities import Param, RunTag
    from omegaconf import OmegaConf

    client, run_id = logger.experiment, logger.run_id
    params = [Param(key, value) for key, value in flatten_config(cfg).items()]
    for start in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start : start + PARAMS_PER_BATCH])

    resolved = _resolved(cfg)
    if seed is None and isinstance(resolved, dict):
        seed = resolved.get("seed")
    package_dir = Path(__file__).resolve().parent
    tags = {"git_commit": git_commit(package_dir), "git_dirty": git_dirty(package_dir), **run_tags(resolved)}
    if seed is not None:
        tags["seed"] = seed
    client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items() if value is not None])

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resolved.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        client.log_artifact(run_id, str(path), artifact_path="config")


def log_image_grid(logger, images, name: str, step: int, nrow: int = 8) -> str:
    """images [B, 3, H, W] in [0, 1] -> PNG artifact images/{name}_step{step:06d}.png; returns that path.

    Small images are nearest-upscaled to about 128 px so that 32 px samples stay readable in the UI;
    the zero-padded step keeps the artifact list in training order."""
    from flowrl.utils.images import save_grid

    images = images.detach().cpu()
    upscale = max(1, 128 // images.shape[-1])
    filename = f"{name}_step{step:06d}.png"
    with tempfile.TemporaryDirectory() as tmp:
        path = save_grid(images, Path(tmp) / filename, nrow=nrow, upscale=upscale)
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="images")
    return f"images/{filename}"


def log_artifact_path(logger, path: str | Path, artifact_path: str | None = None) -> None:
    """A file or a whole directory (e.g. final weights) under artifact_path of the run."""
    path = Path(path)
    if path.is_dir():
        logger.experiment.log_artifacts(logger.run_id, str(path), artifact_path=artifact_path)
    else:
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=artifact_path)


def metrics_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """[(step, value), ...] of one metric, by step: for tests and run comparisons without the UI."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, key)
    return sorted(((m.step, m.value) for m in history), key=lambda sv: sv[0])
