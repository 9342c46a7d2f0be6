"""Budgets in place of train.iterations: parsing, the stop rule, evaluations at budget fractions."""

import pytest

from flowrl.config.errors import UserFacingError
from flowrl.training.budget import Budget


def test_budget_from_config():
    assert Budget.from_config({"nfe": None, "reward_queries": None, "wall_s": None}) is None
    assert Budget.from_config(None) is None
    b = Budget.from_config({"nfe": 1000, "reward_queries": None})
    assert (b.kind, b.amount, str(b)) == ("nfe", 1000.0, "nfe=1000")
    with pytest.raises(UserFacingError, match="set one of"):
        Budget.from_config({"nfe": 10, "wall_s": 5})
    with pytest.raises(UserFacingError, match=r"budget.nfe=-3: must be a number > 0"):
        Budget.from_config({"nfe": -3})
    with pytest.raises(UserFacingError, match="unknown key"):
        Budget.from_config({"flops": 3})


def test_max_iterations_from_the_plan_cost():
    # E-GRPO at its defaults: 1,615 NFE per prompt (flowrl.plan), 2 prompts -> 3,230 per iteration;
    # a 10,000-NFE budget is ceil(10000 / 3230) = 4 iterations (3 reach 9,690 < 10,000).
    from flowrl.step_schedulers.entropy_merge import EntropyMergeStepScheduler

    cost = EntropyMergeStepScheduler().plan(0).cost(num_prompts=2)
    assert cost == {"nfe": 3230, "reward_queries": 2 * 192}
    assert Budget("nfe", 10_000).max_iterations(cost) == 4
    assert Budget("wall_s", 60).max_iterations(cost) >= 10**6


SMALL = [
    "logger.experiment_name=budget",
    "method=dancegrpo",
    "method.num_steps=4",
    "method.group_size=2",
    "method.gradient_accumulation_steps=2",
    "train.prompts_per_step=2",
    "train.iterations=1",  # ignored: the budget sets the length
    "val.samples_per_prompt=1",
    "val.num_steps=2",
    "trainer.val_check_interval=1",  # ignored too: evaluations follow the budget
]


def _history(tmp_path, key):
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("budget").experiment_id])[0]
    return run, sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow
def test_nfe_budget_stops_at_the_budget_and_evaluates_at_its_fractions(make_cfg, tmp_path):
    from flowrl.training.loop import train

    # DanceGRPO at T 4, G 2, 2 prompts: 16 NFE per iteration. A budget of 100 NFE stops after
    # iteration 7 (112 >= 100; 96 < 100), at most one iteration over. Evaluations at 25 / 50 /
    # 75% fall after the iterations that first reach 25, 50, 75 NFE: 2 (32), 4 (64), 5 (80).
    train(make_cfg(*SMALL, "budget.nfe=100"))
    run, nfe = _history(tmp_path, "perf/nfe_total")
    assert run.info.status == "FINISHED"
    assert nfe[-1] == (7, 112.0) and [s for s, _ in nfe] == list(range(1, 8))
    assert [s for s, _ in _history(tmp_path, "val/reward/geneval")[1]] == [0, 2, 4, 5, 7]
    assert _history(tmp_path, "val/nfe_total")[1] == [(0, 0.0), (2, 32.0), (4, 64.0), (5, 80.0), (7, 112.0)]
    assert "perf/wall_total" in run.data.metrics
    assert run.data.metrics["perf/reward_queries_total"] == 7 * 2 * 2
    assert run.data.tags["budget"] == "nfe=100"


@pytest.mark.slow
def test_wall_budget_stops_after_the_iteration_that_spends_it(make_cfg, tmp_path):
    from flowrl.training.loop import train

    # 4 s of training iterations: the run stops after the first iteration whose cumulative wall
    # reaches 4 s, and the final evaluation is not repeated (Lightning's stop-validation is it).
    train(make_cfg(*SMALL, "budget.wall_s=4"))
    _, wall = _history(tmp_path, "perf/wall_total")
    assert wall[-1][1] >= 4.0 and (len(wall) == 1 or wall[-2][1] < 4.0)
    steps = [s for s, _ in _history(tmp_path, "val/reward/geneval")[1]]
    assert steps[0] == 0 and steps[-1] == wall[-1][0] and len(steps) == len(set(steps))


def test_evaluations_between_follow_val_budget_fractions():
    # a budget of 100 NFE spent 16 per iteration: the fractions crossed by each iteration decide
    # (val.budget_fractions; [] = none between 0 and 100%, which are the run's own)
    from types import SimpleNamespace

    from flowrl.training.run_control import RunControl

    def due(fractions):
        control = RunControl([], 0, Budget("nfe", 100), 0, None, None, fractions=fractions)
        module = SimpleNamespace(nfe_total=0)
        steps = []
        for it in range(1, 8):
            before, module.nfe_total = module.nfe_total, 16 * it
            if control.due_evaluation(module, before):
                steps.append(it)
        return steps

    assert due((0.25, 0.5, 0.75)) == [2, 4, 5]
    assert due((0.5,)) == [4]
    assert due(()) == []
