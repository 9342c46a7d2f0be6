"""Held-out evaluation sized for power: endpoint evaluations (before / after training) may be
larger than the ones between, and every score gets a bootstrap 95% interval over prompts."""

import pytest
import torch

from flowrl.evaluation.stats import bootstrap_ci


def test_bootstrap_ci_resamples_prompts_not_images():
    # 4 prompts x 3 samples: prompt means 0, 1/3, 2/3, 1 -> every resample's mean is a mean of 4
    # of these, so the interval lies in [0, 1] around 0.5; identical prompts give a point interval
    scores = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    low, high = bootstrap_ci(scores, resamples=2000, seed=0)
    assert 0 <= low < 0.5 < high <= 1
    assert bootstrap_ci(torch.full((5, 2), 0.7), 100, 0) == pytest.approx((0.7, 0.7))
    # the interval narrows as prompts are added (sd / sqrt(P)), the evaluation's own noise
    wide = bootstrap_ci(scores, 2000, 0)
    narrow = bootstrap_ci(scores.repeat(16, 1), 2000, 0)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 2


@pytest.mark.slow
def test_endpoint_evaluations_are_larger_and_logged_with_intervals(make_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    from flowrl.training.loop import train

    cfg = make_cfg(
        "smoke=true",
        "train.iterations=2",
        "trainer.val_check_interval=1",
        "val.samples_per_prompt=1",
        "val.final_samples_per_prompt=3",
        "val.num_steps=4",
        "val.max_prompts=24",  # 6 per held-out category: the whole set made this test a minute
        "logger.experiment_name=eval",
    )
    train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("eval").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val/reward/geneval")
    # 0 (endpoint), 1 (between), 2 (the last iteration's evaluation is the final one: endpoint
    # size, not repeated)
    assert [m.step for m in history] == [0, 1, 2]
    lows = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_ci/geneval/low")}
    highs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_ci/geneval/high")}
    for m in history:
        assert lows[m.step] <= m.value + 1e-6 and m.value <= highs[m.step] + 1e-6


def test_category_means_group_by_the_rewards_categories():
    # GenEval's report: accuracy per category, `overall` = their unweighted mean (GenEval's
    # evaluate_images.py summary), here from hand-picked scores of four held-out prompts
    from flowrl.evaluation.stats import category_means
    from flowrl.rewards.geneval import GenEvalReward

    prompts = ["two red pillars", "a blue bar left of a red square", "a green bar right of a red square", "a white bar"]
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0])
    out = category_means(GenEvalReward(), "geneval", scores, prompts)
    assert out == {
        "val/category/geneval/counting": 1.0,
        "val/category/geneval/position": 0.5,
        "val/category/geneval/colors": 1.0,
        "val/category/geneval/overall": (1.0 + 0.5 + 1.0) / 3,
    }
    assert category_means(object(), "jpeg", scores, prompts) == {}  # a reward without categories logs none


def test_held_out_subset_is_evenly_spaced_and_keeps_every_category():
    from flowrl.data.geneval import split_specs
    from flowrl.training.build import held_out_prompts

    prompts = [s.prompt for s in split_specs("heldout")]  # 550, ordered category by category
    assert held_out_prompts(prompts, None) == prompts and held_out_prompts(prompts, 10_000) == prompts
    sub = held_out_prompts(prompts, 55)
    assert len(sub) == 55 and sub == prompts[::10]  # 550 / 55: every 10th
    cats = {s.prompt: s.category for s in split_specs("heldout")}
    # 27 counting, 444 position, 76 colour-attribution prompts keep their tenth; the 3 colors
    # prompts (fewer than the spacing of 10) may drop out
    assert {cats[p] for p in sub} >= {"counting", "position", "color_attr"}


# ---- the evaluation before training, cached (val.before_cache; flowrl.training.eval_cache) ----


def test_cached_evaluation_computes_once_then_reads(tmp_path):
    from flowrl.training.eval_cache import cached_evaluation

    calls = []

    def compute():
        calls.append(1)
        return {"returned": {"val/reward/geneval": 0.25}, "logged": {"val/reward/geneval": 0.25}}

    first, hit = cached_evaluation(tmp_path / "cache", "ab" * 32, compute)
    assert not hit and len(calls) == 1
    again, hit = cached_evaluation(tmp_path / "cache", "ab" * 32, compute)
    assert hit and again == first and len(calls) == 1  # read back, not recomputed
    _, hit = cached_evaluation(tmp_path / "cache", "cd" * 32, compute)
    assert not hit and len(calls) == 2  # another key is another evaluation
    assert not list((tmp_path / "cache").glob("*.tmp"))  # written atomically (tmp file renamed)


def test_before_key_sees_weights_prompts_and_val_sizes_not_the_cache_folder(make_cfg):
    from flowrl.training.build import build_module
    from flowrl.training.eval_cache import before_key

    cfg = make_cfg("smoke=true")
    module, data = build_module(cfg)
    prompts = list(data.val)[:4]
    key = before_key(module, prompts, cfg)
    assert before_key(module, prompts, make_cfg("smoke=true", "val.before_cache=/elsewhere")) == key
    assert before_key(module, prompts[:3], cfg) != key  # other prompts
    assert before_key(module, prompts, make_cfg("smoke=true", "val.final_samples_per_prompt=2")) != key
    assert before_key(module, prompts, make_cfg("smoke=true", "val.seed=7")) != key  # other noises
    with torch.no_grad():
        next(module.model.parameters()).view(-1)[0] += 1e-3  # other weights (one element)
    assert before_key(module, prompts, cfg) != key


@pytest.mark.slow
def test_a_cached_evaluation_before_training_logs_what_the_computed_one_logged(make_cfg, tmp_path):
    # two runs of one sweep (seeds 0 and 1) start from the same weights: the second reads the
    # first's evaluation before training and logs the same step-0 metrics (its ground truth's
    # interval included), so compare's before / after and deltas are unchanged by the cache
    from mlflow.tracking import MlflowClient

    from flowrl.training.loop import train

    base = ["smoke=true", "train.iterations=1", "val.samples_per_prompt=1", "val.max_prompts=8", "val.num_steps=4"]
    base += [f"val.before_cache={tmp_path}/cache", "logger.experiment_name=cache"]
    summaries = [train(make_cfg(*base, f"seed={s}", output_dir=tmp_path / f"s{s}")) for s in (0, 1)]
    assert summaries[0]["before/val/category/geneval/overall"] == summaries[1]["before/val/category/geneval/overall"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cache").experiment_id], order_by=["attributes.start_time"])
    step0 = [
        {
            k: h[0].value
            for k in ("val/reward/geneval", "val_ci/category/geneval/overall/low", "val/nfe_total")
            for h in [client.get_metric_history(r.info.run_id, k)]
            if h and h[0].step == 0
        }
        for r in runs
    ]
    assert len(step0[0]) == 3 and step0[0] == step0[1]
    assert len(list((tmp_path / "cache").glob("before_*.json"))) == 1
