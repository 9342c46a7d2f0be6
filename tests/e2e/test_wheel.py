"""A non-editable install works from any directory: the configs ship inside the wheel.

The wheel is built from this checkout and installed, without its dependencies, into a fresh venv
whose only other path is the project venv's site-packages (appended by a .pth file, so the
editable install's finder there is not activated and `flowrl` can only come from the wheel).
Then, from an unrelated directory, `flowrl-plan --json` and a one-iteration `flowrl-train` on
the embedded tiny model run and write their outputs there.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    # a copy of the sources: setuptools writes build/ and *.egg-info next to what it builds
    source = work / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = work / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("flowrl-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    target = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    )
    (Path(target.stdout.strip()) / "_flowrl_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env_dir


def _run(env_dir: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    return subprocess.run(
        [str(env_dir / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=900, cwd=cwd, env=env
    )


@pytest.mark.slow
def test_wheel_install_finds_its_configs_from_any_directory(wheel_venv, tmp_path):
    where = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", "import flowrl; print(flowrl.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert str(wheel_venv) in where.stdout, where.stdout + where.stderr  # the wheel's copy, not the checkout's

    plan = _run(wheel_venv, ["flowrl-plan", "--json", "method.group_size=4"], tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert json.loads(plan.stdout)["group_size"] == 4

    out = tmp_path / "run"
    train = _run(
        wheel_venv,
        [
            "flowrl-train",
            "train.iterations=1",
            "smoke=true",
            "val.samples_per_prompt=1",
            "val.max_prompts=18",
            "val.num_steps=4",
            f"paths.output_dir={out}",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    assert "val/reward/geneval" in train.stdout
    assert (out / "final_model").is_dir()
