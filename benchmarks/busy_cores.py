"""Busy cores (CPU time / wall) per phase of the make-train configuration, over 4 iterations.

    python -m benchmarks.busy_cores [overrides]     # e.g. model.precision=fp32

Each phase of the module is wrapped with perf_counter and process_time (the process's CPU time
over all its threads), and one line per phase is printed: the README's "Both cores" table. It
runs into a temporary MLflow store, without periodic evaluations, in about 60 s on 2 cores.
"""

import collections
import functools
import sys
import tempfile
import time

import lightning.pytorch.loggers.mlflow as lightning_mlflow
import torch

import flowrl.training.module as grpo_module
from flowrl.config.compose import compose
from flowrl.training.loop import train

TOTALS = collections.defaultdict(lambda: [0.0, 0.0, 0])  # phase -> [wall s, cpu s, calls]


def timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            row = TOTALS[name]
            row[0] += time.perf_counter() - wall
            row[1] += time.process_time() - cpu
            row[2] += 1

    return wrapper


def main(overrides: list[str]) -> None:
    module = grpo_module.GRPOModule
    grpo_module.rollout = timed("rollout (forwards, decode, rewards)", grpo_module.rollout)
    module.score = timed("  of which decode + rewards", module.score)
    grpo_module.policy_update = timed("policy update", grpo_module.policy_update)
    module.training_step = timed("training step (all of it)", module.training_step)
    module.evaluate = timed("held-out evaluation", module.evaluate)
    logger = lightning_mlflow.MLFlowLogger
    logger.log_metrics = timed("MLflow log_metrics", logger.log_metrics)
    out = tempfile.mkdtemp()
    cfg = compose(
        [
            f"paths.output_dir={out}",
            f"logger.tracking_uri=sqlite:///{out}/mlflow.db",
            "train.iterations=4",
            "trainer.val_check_interval=1000",  # evaluations before and after only
            *overrides,
        ]
    )
    wall, cpu = time.perf_counter(), time.process_time()
    train(cfg)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"torch threads {torch.get_num_threads()}; whole run {wall:.1f} s wall, {cpu:.1f} s cpu: {cpu / wall:.2f} busy cores")
    for name, (w, c, n) in TOTALS.items():
        print(f"{name:38s} calls {n:3d}  wall {w:7.2f} s  cpu {c:7.2f} s  busy cores {c / max(w, 1e-9):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
