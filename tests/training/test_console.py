"""flowrl.training.console: the run's header, its closing block and Lightning's progress bar in
flowrl's words (no "Epoch 0/0", no v_num, no it/s)."""


def test_header_names_the_method_the_trained_reward_the_ground_truth_and_the_length(make_cfg):
    from flowrl.training.console import header

    cfg = make_cfg("method=egrpo", "train.iterations=30")
    line = header(cfg, "30 iterations")
    assert line.startswith("flowrl: method=egrpo | trains on reward=") and line.endswith("| 30 iterations")
    assert "ground truth val/category/geneval/overall" in line and "\n" not in line  # GenEval's overall


def test_closing_block_says_where_the_model_and_the_run_are():
    from flowrl.training.console import closing

    text = closing("/runs/a/final_model", "egrpo G12 s0", "abc123", "flowrl", "7", "sqlite:///mlflow.db")
    assert "final model  /runs/a/final_model" in text
    assert "egrpo G12 s0 (id abc123, experiment flowrl" in text
    assert "make ui, then http://127.0.0.1:5000/#/experiments/7/runs/abc123" in text
    other = closing("m", "n", "r", "e", "3", "sqlite:////tmp/x.db")
    assert "make ui STORE=sqlite:////tmp/x.db, then" in other
    remote = closing("m", "n", "r", "e", "3", "http://tracker:5000/")
    assert "open it      http://tracker:5000/#/experiments/3/runs/r" in remote


def test_progress_bar_speaks_in_iterations():
    from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn

    from flowrl.training.console import progress_bar

    bar = progress_bar()
    assert bar._get_train_description(0) == "iterations" and bar.validation_description == "held-out evaluation"

    class Trainer:  # what configure_columns reads
        pass

    columns = bar.configure_columns(Trainer())
    assert columns and not any(isinstance(c, ProcessingSpeedColumn) for c in columns)
