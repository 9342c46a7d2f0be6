"""The one config composer: the package's `conf/` tree (shipped inside the wheel), composed with
Hydra's compose API, and the fast command-line check every entry point runs before Hydra starts.

    cfg = compose(["method=<name>", "train.iterations=2"])        # conf/train.yaml + overrides
    check_command_line(sys.argv[1:])                                 # one line, exit 2, ~1 s
"""

from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent / "conf")
MAX_CHECKED_POINTS = 64  # a sweep's points composed and checked before its first job starts


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train"):
    """conf/<config_name>.yaml with Hydra overrides, outside a running Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return apply_smoke(hydra_compose(config_name, overrides=list(overrides)))


def apply_smoke(cfg):
    """`smoke=true`: the method shrunk to seconds with its structure kept, by the overrides its step
    scheduler declares (`small_overrides`: fewer steps, a smaller group, a shorter window...), so
    that one smoke switch fits every method (sweeps' SMOKE=1). Returns cfg, changed in place."""
    if not cfg.get("smoke") or cfg.get("method") is None:
        return cfg
    import yaml
    from hydra.utils import get_class
    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        for override in get_class(cfg.method.step_scheduler._target_).small_overrides:
            key, _, value = override.partition("=")
            OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return cfg


def config_options(group: str) -> list[str]:
    """The options of a config group: `config_options("method")`: the conf/method/*.yaml names."""
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def check_command_line(argv: list[str], config_name: str = "train") -> None:
    """Everything about a command line that can be checked in about a second, before Hydra runs a
    job: each config-group option exists, each (sweep) point composes, and its values pass the
    schemas (flowrl.config.schema). Raises UserFacingError with one line."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from flowrl.config.errors import ConfigError, UserFacingError
    from flowrl.config.feasibility import device_warnings
    from flowrl.config.schema import check_config

    args = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception as err:
        raise UserFacingError(f"cannot parse the overrides: {str(err).splitlines()[0]}") from None
    choices = []
    for o in parsed:
        key = o.key_or_group
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        if not key.startswith("hydra") and "." not in key and (Path(CONF_DIR) / key).is_dir():
            known = config_options(key)
            for v in values:
                if v not in known and v != "null":
                    raise ConfigError(key, v, f"unknown {key} (known: {', '.join(known)})")
        if key.startswith("hydra"):
            continue
        prefix = "+" if o.is_add() else "++" if o.is_force_add() else "~" if o.is_delete() else ""
        choices.append([f"{prefix}{key}={v}" for v in values])
    resume = [str(o.value()) for o in parsed if o.key_or_group == "resume" and o.value()]
    if resume:  # the run's config comes from its checkpoint and is checked when read: here, its directory
        run = Path(resume[-1]).expanduser()
        if not (run / "checkpoints").is_dir():
            raise ConfigError(
                "resume",
                run,
                "not a run output directory with checkpoints/ (a run writes them every train.checkpoint_every iterations)",
            )
        return
    warnings: list[str] = []
    for point in itertools.islice(itertools.product(*choices), MAX_CHECKED_POINTS):
        try:
            cfg = compose(point, config_name)
        except Exception as err:
            raise UserFacingError(_one_line(err)) from None
        check_config(cfg)
        warnings += [w for w in device_warnings(cfg) if w not in warnings]
    import os
    import sys

    if os.environ.get("LOCAL_RANK", "0") == "0":  # Lightning's launched ranks re-run the command line: say it once
        for line in warnings:
            print(f"flowrl: {line}", file=sys.stderr)


def run_checked(main, config_name: str = "train") -> None:
    """check_command_line(sys.argv[1:]), then `main()` (a hydra.main function)."""
    import os
    import sys

    from flowrl.config.errors import UserFacingError

    try:
        check_command_line(sys.argv[1:], config_name)
    except UserFacingError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"flowrl: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    main()


def _one_line(err: Exception) -> str:
    """Hydra's composition errors in one line (the hint about HYDRA_FULL_ERROR left out)."""
    import re

    text = str(err)
    found = re.search(r"Could not override '([^']+)'", text)
    if found:
        key = found.group(1)
        return f"{key}: not a key of this config (a knob of another method or group? see flowrl/config/conf/; +{key}=... adds a new key)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    return " ".join(lines) or type(err).__name__
