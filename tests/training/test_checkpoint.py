"""flowrl.training.checkpoint: what a checkpoint holds and how it loads (the kill-and-resume runs
that use it are in tests/e2e/test_faults.py)."""

import math

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
