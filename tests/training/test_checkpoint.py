"""flowrl.training.checkpoint: what a checkpoint holds and how it loads (the kill-and-resume runs
that use it are in tests/e2e/test_faults.py)."""

import math

import pytest
import torch


def test_checkpoint_loads_without_unpickling(tmp_path):
    # flowrl's checkpoints are safetensors + JSON + an optimizer state torch.load reads with
    # weights_only=True (no code runs on load).
    import json

    from flowrl.training.checkpoint import save_checkpoint

    class _M:
        pass

    m = _M()
    m.model = torch.nn.Linear(3, 2)
    m.iteration, m.ema, m.generator = 3, None, torch.Generator().manual_seed(0)
    m.step_scheduler = type("S", (), {"state_dict": lambda self: {"start": 1}})()
    m.progress_state = lambda: {"iteration": 3}
    opt = torch.optim.AdamW(m.model.parameters(), lr=1e-3)
    m.model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(m, opt, tmp_path, "run-1", {"seed": 0}, keep=2)
    state = torch.load(path / "optimizer.pt", weights_only=True)
    assert set(state) == {"state", "param_groups"}
    meta = json.loads((path / "state.json").read_text())
    assert (
        meta["mlflow_run_id"] == "run-1"
        and meta["step_scheduler"] == {"start": 1}
        and math.isfinite(meta["numpy_random"]["cached_gaussian"])
    )


def _fake_module(iteration: int):
    class _M:
        pass

    m = _M()
    torch.manual_seed(iteration)
    m.model = torch.nn.Linear(3, 2)
    m.iteration, m.ema, m.generator = iteration, None, torch.Generator().manual_seed(0)
    m.step_scheduler = type("S", (), {"state_dict": lambda self: {}})()
    m.progress_state = lambda: {"iteration": iteration}
    opt = torch.optim.AdamW(m.model.parameters(), lr=1e-3)
    m.model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return m, opt


def _two_checkpoints(tmp_path):
    from flowrl.training.checkpoint import save_checkpoint

    return [save_checkpoint(*_fake_module(i), tmp_path, "run-1", {}, keep=2) for i in (1, 2)]


def _truncate(path, size):
    data = path.read_bytes()[:size]
    path.write_bytes(data)


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {  # how a checkpoint gets damaged -> what verify says
    "truncated weights": (lambda p: _truncate(p / "trainable.safetensors", 10), "trainable.safetensors: 10 bytes, written as"),
    "flipped weight byte": (lambda p: _flip_last_byte(p / "trainable.safetensors"), "trainable.safetensors: content differs"),
    "no optimizer file": (lambda p: (p / "optimizer.pt").unlink(), "optimizer.pt missing"),
    "torn manifest": (lambda p: _truncate(p / "manifest.json", 5), "manifest.json unreadable"),
    "no state": (lambda p: (p / "state.json").unlink(), "state.json unreadable"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_is_found_and_the_newest_intact_one_chosen(tmp_path, case):
    from flowrl.training.checkpoint import latest_intact, verify

    older, newer = _two_checkpoints(tmp_path)
    assert verify(older) is None and verify(newer) is None and (newer / "manifest.json").is_file()
    damage, says = DAMAGE[case]
    damage(newer)
    assert says in verify(newer)
    ckpt, damaged = latest_intact(tmp_path)
    assert ckpt.path == older and ckpt.iteration == 1
    assert [(p, says in why) for p, why in damaged] == [(newer, True)]


def test_without_a_manifest_headers_and_crcs_are_still_checked(tmp_path):
    # a checkpoint written before manifests existed: the safetensors header against the file size,
    # the optimizer file's zip CRCs
    from flowrl.training.checkpoint import verify

    _, newer = _two_checkpoints(tmp_path)
    (newer / "manifest.json").unlink()
    assert verify(newer) is None
    _truncate(newer / "rng.safetensors", (newer / "rng.safetensors").stat().st_size - 3)
    assert "rng.safetensors:" in verify(newer) and "its header says" in verify(newer)
    (newer / "rng.safetensors").unlink()
    _two_checkpoints(tmp_path / "b")
    path = tmp_path / "b" / "checkpoints" / "iter_000002"
    (path / "manifest.json").unlink()
    data = bytearray((path / "optimizer.pt").read_bytes())
    data[_member_data_offset(path / "optimizer.pt", "data.pkl")] ^= 0xFF  # inside a stored member: its CRC fails
    (path / "optimizer.pt").write_bytes(bytes(data))
    assert verify(path).startswith("optimizer.pt")


def _member_data_offset(path, suffix: str) -> int:
    """Where the bytes of the zip member whose name ends with `suffix` start in the file."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def test_no_intact_checkpoint_is_one_line(tmp_path):
    from flowrl.training.checkpoint import latest_intact

    for path in _two_checkpoints(tmp_path):
        _truncate(path / "trainable.safetensors", 10)
    ckpt, damaged = latest_intact(tmp_path)
    assert ckpt is None and [p.name for p, _ in damaged] == ["iter_000002", "iter_000001"]
