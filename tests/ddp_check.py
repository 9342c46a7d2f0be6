"""Run by tests/training/test_distributed.py: one E-GRPO iteration on the tiny model with Lightning DDP on 2
CPU processes (gloo), each rank writing the gradient of its first optimizer step (after the
ranks' all-reduce, right before the step) to OUT/grad_rank<r>.safetensors. Lightning re-executes
this script for rank 1.

    python tests/ddp_check.py OUT
"""

import sys
from pathlib import Path

import torch

from flowrl.config.compose import compose
from flowrl.training.loop import train
from flowrl.training.module import GRPOModule

OVERRIDES = [
    # fp32: the comparison is of DDP's gradient arithmetic; under bf16 autocast the union's batching
    # (both prompts in one forward) would round differently by ~1e-2, hiding a 2x normalisation error
    "model.precision=fp32",
    "trainer=ddp",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "train.iterations=1",
    "train.prompts_per_step=1",
    "train.checkpoint_every=0",
    "method=egrpo",
    "method.group_size=3",
    "method.num_steps=4",
    "method.num_branch_steps=2",
    "val.samples_per_prompt=1",
    "val.num_steps=2",
    "trainer.val_check_interval=100",
]


def main(out: Path) -> None:
    clip = GRPOModule.clip_gradients

    def recording_clip(self, opt, *args, **kwargs):  # right before opt.step: the ranks' averaged gradient
        path = out / f"grad_rank{self.global_rank}.safetensors"
        if not path.exists():
            from safetensors.torch import save_file

            grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}
            save_file(grads, str(path))
        return clip(self, opt, *args, **kwargs)

    GRPOModule.clip_gradients = recording_clip
    torch.set_num_threads(1)
    # a script of its own (no pytest fixture): flowrl's one composer, outputs and store under OUT
    cfg = compose(
        [
            *OVERRIDES,
            f"paths.output_dir={out / 'run'}",
            f"logger.tracking_uri=sqlite:///{out}/mlflow.db",
            "logger.experiment_name=ddp",
        ]
    )
    train(cfg)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
