"""Run by tests/training/test_ddp_preemption.py: the real command line (flowrl.train's cli(), Hydra
and all) with a SIGTERM sent from inside the run after a known iteration, so that a DDP preemption
test stops at a known point. Lightning re-executes this script for rank 1: every rank has the hooks.

    FLOWRL_TEST_SIGTERM=group|rank1   after iteration FLOWRL_TEST_SIGTERM_AT, rank 0 sends SIGTERM to
                                      its process group (as SLURM and `timeout` do), or rank 1 to itself
    FLOWRL_TEST_SECOND_SIGTERM=1      in the middle of the checkpoint write that the first SIGTERM asked
                                      for (after its weights, before its optimizer file), rank 0 sends
                                      the group a second one

    python tests/ddp_preempt.py [overrides]
"""

import os
import signal
import time

import torch

from flowrl.train import cli
from flowrl.training import checkpoint
from flowrl.training.module import GRPOModule

TARGET = os.environ.get("FLOWRL_TEST_SIGTERM")
AT = int(os.environ.get("FLOWRL_TEST_SIGTERM_AT", "0"))


def _signal_after_iteration() -> None:
    step = GRPOModule.training_step

    def step_then_signal(self, batch, batch_idx):
        out = step(self, batch, batch_idx)
        if self.iteration == AT:
            if TARGET == "group" and self.global_rank == 0:
                os.killpg(os.getpgid(0), signal.SIGTERM)
            elif TARGET == "rank1" and self.global_rank == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        return out

    GRPOModule.training_step = step_then_signal


def _second_signal_while_writing() -> None:
    save = checkpoint.save_checkpoint

    def save_interrupted(module, *args, **kwargs):
        if module.iteration != AT:
            return save(module, *args, **kwargs)
        torch_save = torch.save

        def slow_save(*a, **k):  # the optimizer file: trainable.safetensors is already in the .tmp folder
            os.killpg(os.getpgid(0), signal.SIGTERM)
            time.sleep(60)  # the signal interrupts this
            return torch_save(*a, **k)

        torch.save = slow_save
        try:
            return save(module, *args, **kwargs)
        finally:
            torch.save = torch_save

    checkpoint.save_checkpoint = save_interrupted


if __name__ == "__main__":
    if TARGET:
        _signal_after_iteration()
    if os.environ.get("FLOWRL_TEST_SECOND_SIGTERM") == "1":
        _second_signal_while_writing()
    cli()
