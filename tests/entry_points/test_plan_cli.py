import json
import subprocess
import sys
import time

from flowrl.plan import main


def test_plan_json_dancegrpo(capsys):
    main(["--json", "method=dancegrpo"])
    out = json.loads(capsys.readouterr().out)
    for key in (
        "method",
        "num_steps",
        "branches",
        "nfe_per_generation",
        "nfe_per_prompt",
        "reward_queries_per_prompt",
        "trained_steps_per_prompt",
    ):
        assert key in out, key
    assert out["method"] == "dancegrpo" and out["num_steps"] == 16
    assert out["branches"][0] == {"start": 0, "stop": 1, "sde": "dance", "noise_level": 0.3} and len(out["branches"]) == 16
    assert out["nfe_per_prompt"] == 16 * 12
    # shift(linspace(1, 0, 17)) as train_grpo_flux.py makes it: sigma_1 = 3 * (15/16) / (1 + 2 * 15/16) = 0.97826
    assert len(out["sigmas"]) == 17 and out["sigmas"][0] == 1 and out["sigmas"][-1] == 0
    assert abs(out["sigmas"][1] - 45 / 46) < 1e-6
    # drawn per sample (train_grpo_flux.py), so no fixed indices; one prompt per GPU, a step every
    # 4 of its 12 samples: 3 optimizer steps per iteration
    assert out["trained_step_indices"] is None and out["optimizer_steps_per_iteration"] == 3


def test_plan_json_flowgrpo_with_override(capsys):
    # T 10, G 8 (override): NFE/prompt 80; int(10 * 0.99) = 9 trained -> 72 backward passes.
    main(["--json", "method=flowgrpo", "method.group_size=8"])
    out = json.loads(capsys.readouterr().out)
    assert (out["method"], out["num_steps"], out["group_size"]) == ("flowgrpo", 10, 8)
    assert out["nfe_per_prompt"] == 80 and out["trained_steps_per_prompt"] == 72
    assert out["same_initial_noise"] is False
    # the first 9 of 10 in order; two optimizer steps per rollout (config/grpo.py)
    assert out["trained_step_indices"] == list(range(9)) and out["optimizer_steps_per_iteration"] == 2
    # the grid of flow_grpo's SD3 pipeline (diffusers FlowMatchEulerDiscreteScheduler, shift 3;
    # sd3_pipeline_with_logprob.py@ac4c86e), as issue 19 quotes it
    expected = [1, 0.9601, 0.9133, 0.8577, 0.7904, 0.7073, 0.6022, 0.4649, 0.2780, 0.0089, 0]
    assert len(out["sigmas"]) == 11 and all(abs(a - b) < 5e-5 for a, b in zip(out["sigmas"], expected))


def test_plan_text(capsys):
    main(["method=dancegrpo"])
    text = capsys.readouterr().out
    assert "NFE per prompt         192" in text and "a random 9 of the first 15 steps" in text
    assert "3 optimizer steps per iteration of 2 prompt(s)" in text


def test_plan_json_every_method_reports_its_update(capsys):
    from benchmarks.bench import METHODS

    for method in METHODS:
        main(["--json", f"method={method}"])
        out = json.loads(capsys.readouterr().out)
        assert out["method"] == method and out["optimizer_steps_per_iteration"] >= 1
        assert out["trained_step_indices"] is None or all(0 <= i < out["num_steps"] for i in out["trained_step_indices"])


def test_plan_iteration_flag(capsys):
    main(["--json", "--iteration", "3", "method=egrpo"])
    assert json.loads(capsys.readouterr().out)["iteration"] == 3
    import pytest

    for bad in (["--iteration", "x", "method=egrpo"], ["--iteration", "-1"]):  # argparse: usage + one line, exit 2
        with pytest.raises(SystemExit) as exit_:
            main(bad)
        assert exit_.value.code == 2 and "--iteration" in capsys.readouterr().err


def test_plan_cli_is_fast():
    # Must answer without loading a model: a fresh interpreter in well under 5 s (measured ~3 s).
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "flowrl.plan", "--json", "method=dancegrpo"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["method"] == "dancegrpo"
    assert time.time() - start < 10  # generous for a loaded 2-core CI box; the goal is < 5 s
