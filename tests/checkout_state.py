"""What the test suite may not change: the checkout's `git status` (tests/conftest.py compares it at
the start and the end of every session, and fails the session on a difference).

The snapshot is `git status --porcelain --ignored --untracked-files=all`, every file listed one by
one, so a run output written under a folder that already holds the developer's own (./mlruns,
./outputs) counts as well as a new ./mlflow.db. Only what appears counts: a developer's files
present at the start are never blamed, and files that disappear (another process committing or
deleting its own) are not the suite's. Left out: .venv (the suite's interpreter, listed only as
itself) and the caches Python and the tools keep next to the code (__pycache__, .pytest_cache,
.ruff_cache, .mypy_cache). Without git, or outside a git checkout (an unpacked sdist), the
snapshot falls back to the files under the folders a run writes (RUN_OUTPUTS)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# What a run writes relative to its working directory (Hydra's run dirs, MLflow's default store and
# its ./mlruns artifacts, the prompt-embedding cache): the fallback's scope.
RUN_OUTPUTS = ("outputs", "multirun", "mlruns", "mlflow.db", "mlflow.db.lock", ".cache", "build", "dist")
CACHES = frozenset({"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"})
VENV = ".venv"


def _kind(code: str) -> str:
    """A porcelain status code in a few words: staging a new file (?? -> A) is no change to the checkout."""
    if code == "!!":
        return "ignored"
    if code == "??" or "A" in code or code[0] in "RC":
        return "new"
    return "deleted" if "D" in code else "modified"


def git_snapshot(repo: Path) -> set[tuple[str, str]] | None:
    """{(kind, path)} of `git status` under `repo`, or None when git cannot say (no git, no checkout)."""
    cmd = [
        "git",
        "--no-optional-locks",  # never takes index.lock: a commit made meanwhile must not fail on it
        "-c",
        f"safe.directory={repo}",  # a fresh clone owned by another user (a CI container) is still read
        "-C",
        str(repo),
        "status",
        "--porcelain=v1",
        "-z",
        "--ignored=traditional",
        "--untracked-files=all",
        "--",
        ".",
        f":(exclude){VENV}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    entries, records = set(), iter(proc.stdout.decode("utf-8", "surrogateescape").split("\0"))
    for record in records:
        if len(record) < 4:
            continue
        code, path = record[:2], record[3:]
        if code[0] in "RC":
            next(records, None)  # a rename's or copy's origin follows
        parts = Path(path).parts
        if not parts or parts[0] == VENV or CACHES.intersection(parts):
            continue
        entries.add((_kind(code), path))
    return entries


def walk_snapshot(repo: Path) -> set[tuple[str, str]]:
    """{("file", path)} of every file under RUN_OUTPUTS: the snapshot without git."""
    found = set()
    for name in RUN_OUTPUTS:
        top = repo / name
        if top.is_file():
            found.add(("file", name))
        for root, _, files in os.walk(top):
            found.update(("file", str(Path(root, f).relative_to(repo))) for f in files)
    return found


def snapshot(repo: Path) -> set[tuple[str, str]]:
    state = git_snapshot(repo)
    return walk_snapshot(repo) if state is None else state


def changes(before: set[tuple[str, str]], after: set[tuple[str, str]]) -> list[str]:
    """'<kind> <path>' for each entry that appeared, sorted."""
    return [f"{kind} {path}" for kind, path in sorted(after - before, key=lambda e: (e[1], e[0]))]


def report(new: list[str], shown: int = 12) -> str:
    lines = new[:shown] + ([f"... and {len(new) - shown} more"] if len(new) > shown else [])
    return (
        "the tests changed the checkout (git status, compared with the start of the session):\n  "
        + "\n  ".join(lines)
        + "\nEvery output of a test goes under its tmp_path (the make_cfg fixture runs the test there). "
        "A process that wrote into this checkout while the tests ran (a training started from it, an "
        "editor) shows up here too: then run the tests again without it."
    )
