"""The users' command on real-format checkpoints: `python -m flowrl.train method=egrpo reward=hps
model=flux_dev` (and SD3.5 + PickScore-free DenseGRPO) run two iterations end to end on tiny
random pipelines and a tiny HPS checkpoint that the tests save in the published formats."""

import json

import pytest
import torch

from tests.models.test_real_models import HW, MSL, build_flux, build_sd3
from tests.rewards.test_real_rewards import TINY_OPEN_CLIP


@pytest.fixture(scope="module")
def hps_ckpt(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("hps")
    arch = d / "tiny-e2e-clip.json"
    arch.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(arch)
    torch.manual_seed(2)
    model = open_clip.create_model("tiny-e2e-clip", pretrained=None)
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, d / "HPS_v2.1_compressed.pt")
    return arch, d / "HPS_v2.1_compressed.pt"


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, builder, method",
    [
        # E-GRPO's lr is a full fine-tune's (method.lrs): with a LoRA the run needs an lr of its own
        ("flux_dev", build_flux, ["method=egrpo", "method.num_branch_steps=2", "method.tau=1.0", "method.lr=1e-4"]),
        ("sd35_medium", build_sd3, ["method=densegrpo", "method.calibration.iterations=1", "method.calibration.num_samples=2"]),
    ],
)
def test_two_iterations_on_real_format_checkpoints(make_cfg, tmp_path, hps_ckpt, model, builder, method):
    import mlflow

    from flowrl.training.loop import train

    path = builder(tmp_path / model)
    arch, ckpt = hps_ckpt
    overrides = [
        f"paths.cache_dir={tmp_path / 'cache'}",
        "logger.experiment_name=real-e2e",
        f"model={model}",
        f"model.path={path}",
        "model.device=cpu",
        "model.dtype=float32",
        f"model.height={HW}",
        f"model.width={HW}",
        f"model.max_sequence_length={MSL}",
        "model.lora.rank=2",
        "model.lora.alpha=4",
        *method,
        "method.num_steps=4",
        "method.group_size=2",
        "reward=hps",
        f"reward.checkpoint={ckpt}",
        f"reward.arch={arch}",
        "~eval_rewards.geneval",  # the synthetic-world checker only makes sense on the tiny model's images
        "train.iterations=2",
        "train.prompts_per_step=1",
        "train.max_batch=4",
        "val.samples_per_prompt=1",
        "val.max_prompts=4",
        "val.num_steps=4",
        "trainer.val_check_interval=1",
    ]
    summary = train(make_cfg(*overrides, output_dir=tmp_path / "run"))
    assert {"after/val/reward/geneval_clip", "after/val/reward/jpeg"} <= set(summary)
    assert (tmp_path / "run" / "final_model" / "pytorch_lora_weights.safetensors").is_file()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("real-e2e").experiment_id])[0]
    assert "train/reward/hps" in run.data.metrics and run.data.metrics["train/first_step_ratio_mean"] == 1.0
