"""`python -m flowrl.sample`: ODE samples of the model on a prompt split, scored and saved."""


def test_sample_entry_point_runs_and_scores(make_cfg, tmp_path):
    # What `make train` runs until the GRPO loop lands, on 2 held-out prompts.
    from flowrl.sample import run

    scores = run(make_cfg("per_prompt=1", "num_steps=4", config_name="sample"))
    assert set(scores) == {"geneval", "geneval_clip", "jpeg"}
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "scores.json").is_file()
