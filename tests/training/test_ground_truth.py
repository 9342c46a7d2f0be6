"""Every run names its ground-truth metric: the run tag ground_truth=<metric key>, which
flowrl.compare uses as its default metric."""

import pytest

from flowrl.config.errors import ConfigError
from flowrl.config.schema import check_config
from flowrl.training.tracking import run_tags


@pytest.mark.parametrize(
    "overrides, tag",
    [
        (
            [],
            "val/category/geneval/overall",
        ),  # auto: the first eval reward of eval_rewards=geneval, by category: GenEval's overall
        (["eval_rewards=real"], "val/reward/hps"),  # auto: the first of the real panel
        (["ground_truth=geneval_clip"], "val/reward/geneval_clip"),  # named explicitly
        (["experiment=shapes_world"], "val/reward/shapes"),  # the first world: a reward without categories
    ],
)
def test_the_ground_truth_tag(make_cfg, overrides, tag):
    assert run_tags(make_cfg(*overrides))["ground_truth"] == tag


def test_the_paper_presets_name_their_headline_metric(make_cfg):
    # read off the composed config, not checked (the presets need real model files)
    assert make_cfg("experiment=densegrpo_sd35_pickscore").ground_truth == "pickscore"
    assert make_cfg("experiment=egrpo_flux_hps").ground_truth == "hps"


def test_a_ground_truth_that_is_not_evaluated_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"ground_truth=hps: auto or one of the eval rewards \(geneval, geneval_clip, jpeg\)"):
        check_config(make_cfg("ground_truth=hps"))
