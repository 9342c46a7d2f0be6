"""The training loop on the tiny model: ratio exactly 1 before the first update, and a
2-iteration end-to-end run of each method with MLflow tracking (slow)."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from flowrl.train import CONF_DIR


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path}",
                f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                "train.iterations=2",
                "train.prompts_per_step=2",
                "method.group_size=3",
                "method.num_steps=4",
                "val.samples_per_prompt=1",
                "val.num_steps=4",
                "trainer.val_check_interval=1",
                *overrides,
            ],
        )


def test_ratio_is_exactly_one_before_first_update(tiny_model):
    # Re-evaluating every jump of a fresh rollout with the same weights (train mode, grad on)
    # must reproduce the rollout's log-probs bit for bit: ratio = exp(0) = 1 exactly.
    from flowrl.sampling.rollout import rollout_sde_trajectories, step_log_prob
    from flowrl.sampling.sigmas import flow_sigmas
    from flowrl.step_schedulers.uniform import UniformStepScheduler

    for sde, noise_level in (("dance", 0.3), ("sde", 0.7)):
        sched = UniformStepScheduler(num_steps=4, group_size=3, noise_level=noise_level, sde=sde)
        sigmas = flow_sigmas(4, 3.0)
        tiny_model.eval()
        ro = rollout_sde_trajectories(
            tiny_model,
            sched,
            ["a red circle on a blue background", "a white square on a green background"],
            sigmas,
            torch.Generator().manual_seed(0),
            max_batch=4,
        )
        tiny_model.train()
        for step in range(4):
            for start in range(0, 6, 4):
                rows = slice(start, min(6, start + 4))
                new = step_log_prob(tiny_model, sched, ro, step, rows).log_prob
                assert torch.equal(torch.exp(new - ro.log_probs[rows, step]), torch.ones(rows.stop - rows.start)), (sde, step)
        tiny_model.eval()


def test_rollout_same_initial_noise_and_nfe(tiny_model):
    from flowrl.sampling.rollout import rollout_sde_trajectories
    from flowrl.sampling.sigmas import flow_sigmas
    from flowrl.step_schedulers.uniform import UniformStepScheduler

    sched = UniformStepScheduler(num_steps=3, group_size=4, same_initial_noise=True)
    ro = rollout_sde_trajectories(
        tiny_model, sched, ["a red circle on a blue background"], flow_sigmas(3), torch.Generator().manual_seed(0), max_batch=3
    )
    assert ro.nfe == 4 * 3 and ro.latents.shape == (4, 4, *tiny_model.latent_shape) and ro.images.shape == (4, 3, 32, 32)
    assert torch.equal(ro.latents[0, 0], ro.latents[3, 0])  # same x_1 in the group
    assert not torch.equal(ro.latents[0, 1], ro.latents[3, 1])  # different SDE noise after
    sched2 = UniformStepScheduler(num_steps=3, group_size=4, same_initial_noise=False)
    ro2 = rollout_sde_trajectories(
        tiny_model, sched2, ["a red circle on a blue background"], flow_sigmas(3), torch.Generator().manual_seed(0)
    )
    assert not torch.equal(ro2.latents[0, 0], ro2.latents[3, 0])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dancegrpo", "flowgrpo"])
def test_two_iterations_end_to_end(tmp_path, method):
    import mlflow

    from flowrl.train import train

    summary = train(_cfg(tmp_path, f"method={method}", "logger.experiment_name=e2e"))
    assert {"before/val/reward/shapes", "after/val/reward/shapes", "after/val/reward/tiny_clip"} <= set(summary)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])[0]
    assert run.info.status == "FINISHED" and method in run.info.run_name
    m = run.data.metrics
    for key in (
        "train/loss",
        "train/clip_frac",
        "train/approx_kl",
        "train/ratio_mean",
        "train/reward/tiny_clip",
        "val/reward/shapes",
        "perf/nfe",
    ):
        assert key in m, key
    assert m["train/first_step_ratio_mean"] == 1.0  # first trained step of the last iteration
    assert run.data.params["method.name"] == method
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "images", "final_model"} <= artifacts
