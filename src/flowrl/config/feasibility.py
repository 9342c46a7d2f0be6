"""Can this run fit the machine, and is every argument one its callee takes? Answered before any
model loads, torch-free (the command line's fast path imports no torch for these):

- `model_shapes(model)`: the latent and image sizes of a model config, from its yaml (and the tiny
  model's json), so a plan's rollout memory (`StepPlan.rollout_memory`) can be estimated;
- `machine_memory(cfg)`: what the rollout's tensors live in: the GPU's memory for a GPU run
  (nvidia-smi, when it is there), else the host's RAM (the smaller of physical and cgroup limit);
- `check_rollout_memory(cfg, plan)`: a run whose estimate exceeds it is refused in one line that
  names the knob to lower (`method=egrpo method.group_size=100000` grew 3 GB every 10 s until the
  kernel killed it);
- `callable_arguments(target)`: the argument names of a class or function, read from its source
  with `ast` (importing Lightning to ask would take ~10 s), for `+trainer.<kwarg>` and model keys;
- `device_warnings(cfg)`: more ranks than CPU cores or visible GPUs.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path


# ---- sizes --------------------------------------------------------------------------------------
def model_shapes(model) -> tuple[int, int] | None:
    """(latent numel, image numel 3*H*W) of one sample of a model config, or None when unknown."""
    if model is None:
        return None
    target = str(model.get("_target_") or "")
    if target.startswith("flowrl.models.tiny_flux."):
        from flowrl.config.model_files import tiny_flux_dir

        try:
            meta = json.loads((tiny_flux_dir(model.get("path"), model.get("world")) / "flowrl_tiny_flux.json").read_text())
        except (OSError, ValueError):
            return None
        size = int(meta.get("image_size", 32))
        return 3 * size * size, 3 * size * size  # the latent is the image, in patches
    if target.startswith(("flowrl.models.flux.", "flowrl.models.sd3.")):
        h, w = int(model.get("height", 512)), int(model.get("width", 512))
        # VAE 8x down, 16 channels, packed in 2x2 patches: (H/16)(W/16) tokens of 64
        return (h // 16) * (w // 16) * 64, 3 * h * w
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---- the machine --------------------------------------------------------------------------------
def host_memory() -> int | None:
    """Physical RAM, or the cgroup's limit when smaller (a container, a SLURM job)."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            sizes.append(int(text))
    return min(sizes) if sizes else None


@functools.cache
def visible_gpu_memory() -> tuple[int, ...]:
    """Each visible GPU's memory in bytes, from nvidia-smi (empty without it: no GPU, or unknown)."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            gpus[parts[0]] = int(parts[1]) * 2**20
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        if any(v.startswith("-") for v in wanted[:1]):
            return ()
        if all(v.isdigit() for v in wanted):
            return tuple(gpus[v] for v in wanted if v in gpus)
        return tuple(sorted(gpus.values()))[: len(wanted)]
    return tuple(gpus.values())


def _accelerator(cfg) -> str:
    trainer = cfg.get("trainer") or {}
    return str(trainer.get("accelerator", "auto") or "auto").lower()


def is_gpu_run(cfg) -> bool:
    """The module lives on a GPU during fit: Lightning's accelerator (gpu / cuda, or auto with a GPU
    visible) or a model placed on cuda."""
    acc = _accelerator(cfg)
    device = str((cfg.get("model") or {}).get("device", "cpu") or "cpu")
    if acc in ("gpu", "cuda") or device.startswith("cuda"):
        return True
    return acc == "auto" and bool(visible_gpu_memory())


def machine_memory(cfg) -> tuple[int, str] | None:
    """(bytes, what they are) the rollout's tensors must fit in, or None when unknown."""
    if is_gpu_run(cfg):
        gpus = visible_gpu_memory()
        if gpus:
            return min(gpus), "GPU memory"
    host = host_memory()
    return (host, "memory") if host else None


# ---- the rollout's memory -----------------------------------------------------------------------
def _knob(plan, num_prompts: int, parts: dict[str, int]) -> str:
    """The knob to lower: train.max_batch when decoded images dominate, else the group size, the
    prompts or the steps, whichever is furthest above its smallest useful value."""
    if parts["decoded images"] > parts["stored latents"]:
        return "train.max_batch"
    ratios = {
        "method.group_size": plan.group_size / 2,
        "train.prompts_per_step": num_prompts / 1,
        "method.num_steps": plan.num_steps / 10,
    }
    return max(ratios, key=ratios.get)


def check_rollout_memory(cfg, plan) -> None:
    """Refuse (ConfigError, one line naming the knob) a run whose rollout would not fit the
    machine's memory (`machine_memory`); nothing to check when either size is unknown."""
    from flowrl.config.errors import ConfigError

    shapes = model_shapes(cfg.get("model"))
    have = machine_memory(cfg)
    if shapes is None or have is None:
        return
    prompts = int(cfg.train.prompts_per_step)
    parts = plan.rollout_memory(prompts, *shapes, max_batch=int(cfg.train.max_batch))
    need = sum(parts.values())
    if need <= have[0]:
        return
    knob = _knob(plan, prompts, parts)
    from omegaconf import OmegaConf

    shown = ", ".join(f"{k} {human_bytes(v)}" for k, v in parts.items())
    others = ", ".join(
        k for k in ("method.group_size", "train.prompts_per_step", "method.num_steps", "train.max_batch") if k != knob
    )
    raise ConfigError(
        knob,
        OmegaConf.select(cfg, knob),
        f"the rollout would hold about {human_bytes(need)} ({shown}; {prompts} prompts x G {plan.group_size}, "
        f"T {plan.num_steps}), more than this machine's {human_bytes(have[0])} of {have[1]}: lower {knob} "
        f"(or {others}; flowrl-plan shows the estimate)",
    )


# ---- arguments of a callee, read from its source ------------------------------------------------
def _module_file(module: str) -> Path | None:
    """The source file of a dotted module, found without importing it (or its parents)."""
    import importlib.util

    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    if not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def callable_arguments(target: str, _depth: int = 0) -> frozenset[str] | None:
    """The keyword arguments `target` (module.Name: a class's __init__ or a function) accepts, read
    with ast from its source; follows `from x import Name` re-exports. None when unknown or when it
    takes **kwargs (anything goes)."""
    module, _, name = target.rpartition(".")
    path = _module_file(module) if module else None
    if path is None or _depth > 5:
        return None
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            return _arguments(init, skip_self=True) if init is not None else None
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return _arguments(node, skip_self=False)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    base = module.split(".")
                    source = node.module or ""
                    if node.level:
                        package = base if path.name == "__init__.py" else base[:-1]
                        package = package[: len(package) - (node.level - 1)]
                        source = ".".join([*package, *([source] if source else [])])
                    return callable_arguments(f"{source}.{alias.name}", _depth + 1)
    return None


def _arguments(fn: ast.FunctionDef, skip_self: bool) -> frozenset[str] | None:
    if fn.args.kwarg is not None:
        return None
    args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
    return frozenset(a.arg for a in args[1 if skip_self else 0 :])


def check_arguments(cfg, group: str) -> None:
    """Every key of `cfg.<group>` is an argument of the callable its `_target_` names (a typo in
    `+trainer.<kwarg>=` or `+model.<key>=` fails here in one line, not as a TypeError after the
    model loaded)."""
    from flowrl.config.errors import ConfigError
    from flowrl.config.schema import did_you_mean

    node = cfg.get(group)
    target = node.get("_target_") if node is not None and hasattr(node, "get") else None
    if not target:
        return
    known = callable_arguments(str(target))
    if known is None:
        return
    for key in node:
        if str(key).startswith("_") or key in known:
            continue
        hint = did_you_mean(str(key), known)
        raise ConfigError(f"{group}.{key}", node.get(key), f"not an argument of {target}{hint}")


# ---- devices ------------------------------------------------------------------------------------
def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def device_warnings(cfg) -> list[str]:
    """One line per device problem that need not stop a run: more ranks than CPU cores (accelerator
    cpu, or auto without a GPU) or than the visible GPUs."""
    trainer = cfg.get("trainer")
    if trainer is None:
        return []
    devices = trainer.get("devices")
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    elif not isinstance(devices, int) and hasattr(devices, "__len__") and not isinstance(devices, str):
        devices = len(devices)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 2:
        return []
    acc = _accelerator(cfg)
    gpus = len(visible_gpu_memory()) if acc != "cpu" else 0
    if acc in ("gpu", "cuda") or (acc == "auto" and gpus):
        if devices > gpus:
            return [f"warning: trainer.devices={devices} is more than the {gpus} visible GPU(s)"]
        return []
    cores = cpu_cores()
    if devices > cores:
        return [
            f"warning: trainer.devices={devices} is more than this machine's {cores} CPU cores "
            f"(accelerator {acc}): the ranks share cores, so every iteration is that much slower"
        ]
    return []
