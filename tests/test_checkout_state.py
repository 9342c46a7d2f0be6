"""The session check of tests/conftest.py (tests/checkout_state.py) on a small git checkout of its
own: what a test could leave behind is reported, the developer's files and the caches are not."""

import shutil
import subprocess

import pytest

from tests import checkout_state


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_what_appears_in_git_status_is_reported(tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text("outputs/\nmlruns/\nmlflow.db\n__pycache__/\n.venv/\n")
    (repo / "README.md").write_text("x\n")
    (repo / "kept.py").write_text("x\n")
    _git(repo, "add", ".gitignore", "README.md", "kept.py")
    _git(repo, "commit", "-q", "-m", "one")
    # the developer's own, before the session: edits, an untracked file, runs of their own
    (repo / "README.md").write_text("edited\n")
    (repo / "notes.txt").write_text("mine\n")
    (repo / "mlruns" / "1").mkdir(parents=True)
    (repo / "mlruns" / "1" / "meta.yaml").write_text("mine\n")
    (repo / "staged.py").write_text("x\n")
    before = checkout_state.snapshot(repo)
    assert ("ignored", "mlruns/1/meta.yaml") in before and ("modified", "README.md") in before

    # what the suite must not do, and what it may
    (repo / "mlruns" / "2").mkdir()
    (repo / "mlruns" / "2" / "meta.yaml").write_text("a test's run\n")  # under the developer's ./mlruns
    (repo / "mlflow.db").write_text("")  # a new store
    (repo / "kept.py").write_text("rewritten\n")  # a tracked file
    (repo / "stray.txt").write_text("")  # an untracked file
    (repo / "README.md").write_text("edited again\n")  # modified before: the developer's
    (repo / "mlruns" / "1" / "meta.yaml").write_text("rewritten\n")  # an ignored file's content: git does not say
    (repo / "pkg" / "__pycache__").mkdir(parents=True)
    (repo / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"")  # Python's cache
    (repo / ".venv").mkdir()
    (repo / ".venv" / "x").write_text("")  # the interpreter's folder
    (repo / "notes.txt").unlink()  # gone: not the suite's to answer for
    _git(repo, "add", "staged.py")  # another process staging its new file: no change to the checkout
    new = checkout_state.changes(before, checkout_state.snapshot(repo))
    assert new == ["modified kept.py", "ignored mlflow.db", "ignored mlruns/2/meta.yaml", "new stray.txt"]
    report = checkout_state.report(new, shown=2)
    assert "modified kept.py" in report and "... and 2 more" in report and "tmp_path" in report


def test_outside_a_git_checkout_the_run_outputs_are_compared(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # git looks no higher up for a checkout
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "old.log").write_text("")
    before = checkout_state.snapshot(tmp_path)  # not a checkout: git says nothing, the fallback walks
    (tmp_path / "outputs" / "new.log").write_text("")
    (tmp_path / "mlflow.db").write_text("")
    (tmp_path / "elsewhere.txt").write_text("")
    assert checkout_state.changes(before, checkout_state.snapshot(tmp_path)) == ["file mlflow.db", "file outputs/new.log"]
