"""flowrl.evaluate and the protocols: the paired statistics against scipy, per-category tables from a
jsonl prompt file, chunked sampling equal to flowrl's held-out sampler, one-line errors before any
model loads, a toy run's final evaluation reproduced exactly (checkpoint=<run dir> and at the end of
training: eval_protocol=), and every protocol end to end on the tiny model with tiny reward checkpoints."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowrl.config.compose import config_options
from tests.rewards.test_aesthetic import TINY as TINY_AESTHETIC_CLIP
from tests.rewards.test_real_rewards import IR_VISION, ir_files, open_clip_ckpt, pick_dir  # noqa: F401 (fixtures)
from tests.runs import SMALL

REPO = Path(__file__).resolve().parents[2]


def test_paired_difference_is_scipy_ttest_rel():
    from scipy import stats

    from flowrl.evaluation.scoring import paired

    g = torch.Generator().manual_seed(0)
    base = {"hps": torch.rand(30, generator=g), "jpeg": torch.rand(30, generator=g)}
    trained = {k: v + 0.05 + 0.1 * torch.rand(30, generator=g) for k, v in base.items()}
    rows = paired(base, trained, per_prompt=3)  # 10 prompts x 3 samples: pairs are the prompts' means
    assert [r["reward"] for r in rows] == ["hps", "jpeg"]
    for r in rows:
        a = trained[r["reward"]].view(10, 3).double().mean(1).numpy()
        b = base[r["reward"]].view(10, 3).double().mean(1).numpy()
        test = stats.ttest_rel(a, b)
        d = a - b
        low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert r["n_pairs"] == 10
        assert r["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high), abs=1e-12)
        assert r["p_value"] == pytest.approx(test.pvalue, rel=1e-9)


def test_jsonl_prompts_give_per_category_rows(tmp_path):
    from flowrl.evaluation.protocol import read_prompt_records
    from flowrl.evaluation.scoring import metrics, summarize

    path = tmp_path / "p.jsonl"
    records = [("a cat", "anime"), ("a dog", "anime"), ("a car", "photo"), ("a tree", "photo"), ("a sky", "photo")]
    path.write_text("".join(json.dumps({"prompt": p, "tag": c}) + "\n" for p, c in records))
    found = read_prompt_records(path)
    assert found.prompts == [p for p, _ in records] and found.categories == [c for _, c in records]
    scores = {"r": torch.tensor([1.0, 1, 3, 3, 0, 0, 0, 0, 6, 6])}  # 5 prompts x 2 samples
    table = summarize(scores, {"r": object()}, found.prompts, 2, found.categories, resamples=50, seed=0)
    by = {r["category"]: r for r in table}
    assert by["all"]["mean"] == pytest.approx(2.0) and by["all"]["n_prompts"] == 5
    assert by["anime"]["mean"] == pytest.approx(2.0) and by["anime"]["n_prompts"] == 2
    assert by["photo"]["mean"] == pytest.approx(2.0) and by["photo"]["n_prompts"] == 3
    assert by["overall"]["mean"] == pytest.approx(2.0)  # the mean over categories
    assert by["anime"]["ci_low"] <= 2.0 <= by["anime"]["ci_high"]
    assert set(metrics("p", table)) >= {"eval/p/r", "eval/p/category/r/anime", "eval_ci/p/r/low", "eval/p/category/r/overall"}


def test_chunked_sampling_is_the_held_out_sampler(tiny_model):
    # The protocol draws its noise chunk by chunk from one generator; flowrl's held-out sampler
    # (generate) draws it at once: the same images, bit for bit, at the same rows per forward.
    from flowrl.evaluation.protocol import Sampler
    from flowrl.evaluation.scoring import sample_and_score
    from flowrl.sampling.ode import generate

    prompts = ["a red circle on a blue background", "a white square on a green background", "a blue star on a red background"]
    sampler = Sampler(num_steps=2, samples_per_prompt=3, seed=7, batch_size=4, full_precision=False)
    rows = [p for p in prompts for _ in range(3)]
    expected = generate(tiny_model, rows, num_steps=2, shift=3.0, seed=7, batch_size=4)

    class Mean(torch.nn.Module):
        def forward(self, images, prompts):
            return images.mean((1, 2, 3))

    scores, kept = sample_and_score(tiny_model, prompts, {"mean": Mean()}, sampler, keep=9)
    assert torch.equal(kept, expected)
    assert torch.equal(scores["mean"], expected.mean((1, 2, 3)))


def test_eval_protocol_is_on_in_the_paper_presets_and_off_for_the_tiny_model(make_cfg):
    assert make_cfg().get("eval_protocol") is None and make_cfg("experiment=toy_egrpo").get("eval_protocol") is None
    for name in config_options("experiment"):
        cfg = make_cfg(f"experiment={name}")
        paper = "_flux_" in name or "_sd35_" in name
        expected = ("hpd_test" if "_flux_" in name else "pickscore_test") if paper else None
        assert (cfg.eval_protocol.name if cfg.get("eval_protocol") else None) == expected, name
    cfg = make_cfg("eval_protocol=toy_geneval")  # any protocol, on any run
    assert cfg.eval_protocol.rewards.geneval._target_ == "flowrl.rewards.geneval.GenEvalReward"
    assert set(config_options("eval_protocol")) == set(config_options("protocol"))  # one thin file per protocol


def _cli(tmp_path, *args, env=None):
    import os

    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flowrl.evaluate", *args],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.perf_counter() - start


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["protocol=hpd_test"],
            "protocol hpd_test: prompt file not found: {data}/hpd_test.txt; it holds the 400 HPDv2 test prompts",
        ),
        (["protocol=pickscore_test", "protocol.prompts.file={data}/empty.txt"], "the prompt file has no prompt"),
        (["protocol=drawbench_ood"], "LAION aesthetic predictor checkpoint not found: {models}/sac+logos+ava1-l14-linearMSE.pth"),
        (["checkpoint={data}/no_run"], "checkpoint={data}/no_run: no such file or directory"),
        (["checkpoint=[none,{data}/empty.txt]"], "a file must be a LoRA .safetensors"),
        (["protocol=nope"], "protocol=nope: unknown protocol (known: drawbench_ood, hpd_test, pickscore_test, toy_geneval)"),
        (["protocol.sampler.num_step=3"], "protocol.sampler.num_step"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(tmp_path, args, line):
    data, models = tmp_path / "data", tmp_path / "models"
    data.mkdir()
    (data / "empty.txt").write_text("# nothing\n")
    (data / "drawbench_test.txt").write_text("a cat\n")
    args = [a.format(data=data, models=models) for a in args]
    proc, seconds = _cli(tmp_path, *args, env={"FLOWRL_DATA": str(data), "FLOWRL_MODELS": str(models)})
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err.splitlines()) == 1 and err.startswith("flowrl: ") and line.format(data=data, models=models) in err, err
    assert seconds < 5, seconds
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run directory


def test_the_torch_free_reward_check_says_what_the_loader_says(tmp_path, make_cfg):
    # conf/protocol/drawbench_ood's rewards and pickscore_test's, none of their files present: the
    # early check raises the same line the loader would
    from hydra.utils import instantiate

    from flowrl.config.errors import CheckpointNotFound
    from flowrl.evaluation.reward_files import FILES, check_reward_files

    cfg = make_cfg("protocol=drawbench_ood", f"paths.models={tmp_path}", config_name="evaluate")
    for name, node in cfg.protocol.rewards.items():
        assert node._target_ in FILES, name
        with pytest.raises(CheckpointNotFound) as early:
            check_reward_files({name: node})
        with pytest.raises(Exception) as loader:
            instantiate(node)
        cause = loader.value if isinstance(loader.value, CheckpointNotFound) else loader.value.__cause__
        assert str(early.value) == str(cause), name


# ---- a tiny run, then its evaluation by the toy protocol -------------------------------------------
RUN_EVAL = ["val.max_prompts=18", "val.num_steps=4", "val.samples_per_prompt=1", "val.final_samples_per_prompt=2"]
PROTOCOL_AS_RUN = ["protocol.max_prompts=18", "protocol.sampler.num_steps=4", "protocol.sampler.samples_per_prompt=2"]


@pytest.mark.slow
def test_the_toy_protocol_reproduces_the_runs_final_evaluation(make_cfg, tmp_path):
    """A 2-iteration run with eval_protocol=toy_geneval (at the run's evaluation size); then
    flowrl.evaluate on its run directory, its checkpoint and base vs trained: the run's final
    GenEval overall, categories and intervals, exactly."""
    import mlflow

    from flowrl.evaluate import evaluate
    from flowrl.training.loop import train

    run_dir = tmp_path / "run"
    run_cfg = make_cfg(
        *SMALL,
        *RUN_EVAL,
        "reward=geneval_clip",
        "method.num_branch_steps=2",
        "train.checkpoint_every=2",
        "eval_protocol=toy_geneval",
        *[f"eval_protocol.{o.removeprefix('protocol.')}" for o in PROTOCOL_AS_RUN],
        "logger.experiment_name=runs",
        output_dir=run_dir,
    )
    summary = train(run_cfg)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("runs").experiment_id])[0]
    logged = run.data.metrics  # each key's last value: the final evaluation's, as logged (the summary's are float32)
    overall = logged["val/category/geneval/overall"]
    assert summary["after/val/category/geneval/overall"] == pytest.approx(overall, abs=1e-7)
    # eval_protocol at the end of training: the same numbers, in the same run
    assert logged["eval/toy_geneval/category/geneval/overall"] == overall
    assert logged["eval_ci/toy_geneval/category/geneval/overall/low"] == logged["val_ci/category/geneval/overall/low"]
    for name in ("geneval", "geneval_clip", "jpeg"):
        assert logged[f"eval/toy_geneval/{name}"] == pytest.approx(logged[f"val/reward/{name}"], abs=1e-6)

    ckpt = next((run_dir / "checkpoints").iterdir())
    out = tmp_path / "eval"
    cfg = make_cfg(
        f"checkpoint=[none,{run_dir},{ckpt}]",
        *PROTOCOL_AS_RUN,
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        config_name="evaluate",
        output_dir=out,
    )
    result = evaluate(cfg)
    labels = list(result["metrics"])
    assert labels == ["base", "run", "run@iter_000002"]
    for label in labels[1:]:
        m = result["metrics"][label]
        assert m["eval/toy_geneval/category/geneval/overall"] == overall  # exactly the run's
        assert m["eval_ci/toy_geneval/category/geneval/overall/low"] == logged["val_ci/category/geneval/overall/low"]
        for cat in ("counting", "colors", "position", "color_attr"):
            assert m[f"eval/toy_geneval/category/geneval/{cat}"] == logged[f"val/category/geneval/{cat}"]
    base = result["metrics"]["base"]["eval/toy_geneval/category/geneval/overall"]
    assert base == pytest.approx(summary["before/val/category/geneval/overall"], abs=1e-7)  # the base model is the run's start
    pairs = {r["reward"]: r for r in result["pairs"]["run"]}
    assert pairs["geneval"]["n_pairs"] == 18 and pairs["geneval"]["mean_diff"] == pytest.approx(
        summary["after/val/reward/geneval"] - summary["before/val/reward/geneval"], abs=1e-7
    )  # (the summary's values are float32, the paired mean float64)
    table = (out / "table.md").read_text()
    assert "| geneval | overall |" in table and "## run − base (paired over the same prompts and noises)" in table
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0] == "checkpoint,prompt_index,sample,prompt,category,geneval,geneval_clip,jpeg"
    assert len(lines) == 1 + 3 * 18 * 2
    assert {p.name for p in out.glob("grid_*.png")} == {"grid_base.png", "grid_run.png", "grid_run@iter_000002.png"}
    runs = client.search_runs([client.get_experiment_by_name("evaluate").experiment_id])
    assert sorted(r.data.tags["checkpoint_label"] for r in runs) == labels
    assert all(r.data.tags["protocol"] == "toy_geneval" and r.info.status == "FINISHED" for r in runs)
    trained = next(r for r in runs if r.data.tags["checkpoint"] == str(run_dir))
    assert trained.data.tags["baseline"] == "none"
    assert {f"paired/toy_geneval/{r}/mean_diff" for r in ("geneval", "geneval_clip", "jpeg")} <= set(trained.data.metrics)


# ---- every protocol on the tiny model, tiny random reward checkpoints -------------------------------
@pytest.fixture(scope="module")
def tiny_reward_overrides(open_clip_ckpt, pick_dir, ir_files, tmp_path_factory):  # noqa: F811 (fixtures imported above)
    """Overrides that point every real reward of a protocol at a tiny random checkpoint in its
    published layout (the reward tests' own)."""
    import open_clip

    arch, hps_file, _ = open_clip_ckpt
    d = tmp_path_factory.mktemp("aesthetic_for_protocols")
    aesthetic_arch = d / "tiny-protocol-aesthetic.json"
    aesthetic_arch.write_text(json.dumps(TINY_AESTHETIC_CLIP))
    open_clip.add_model_config(aesthetic_arch)
    torch.manual_seed(5)
    torch.save(open_clip.create_model("tiny-protocol-aesthetic", pretrained=None).state_dict(), d / "clip.bin")
    widths = (16, 1024, 128, 64, 16, 1)
    mlp = {}
    for index, (a, b) in zip((0, 2, 4, 6, 7), zip(widths[:-1], widths[1:])):
        mlp[f"layers.{index}.weight"], mlp[f"layers.{index}.bias"] = torch.randn(b, a) / a**0.5, torch.zeros(b)
    torch.save(mlp, d / "mlp.pth")
    pick, _, _ = pick_dir
    ir_ckpt, tok, _ = ir_files
    return {
        "hps": [f"checkpoint={hps_file}", f"arch={arch}", "device=cpu"],
        "clipscore": [f"checkpoint={hps_file}", f"arch={arch}", "device=cpu"],
        "pickscore": [f"checkpoint={pick}", f"processor={pick}", "device=cpu"],
        "imagereward": [f"checkpoint={ir_ckpt}", f"tokenizer={tok}", f"vision_heads={IR_VISION['heads']}", "device=cpu"],
        "aesthetic": [f"checkpoint={d / 'mlp.pth'}", f"clip_checkpoint={d / 'clip.bin'}", f"arch={aesthetic_arch}", "device=cpu"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", config_options("protocol"))
def test_every_protocol_runs_on_the_tiny_model(make_cfg, tmp_path, tiny_reward_overrides, name):
    from flowrl.evaluate import evaluate

    data = tmp_path / "data"
    data.mkdir()
    prompts = ["a red square", "two blue bars", "a green pillar"]
    (data / "hpd_test.txt").write_text("\n".join(prompts) + "\n")
    (data / "pickscore_test.txt").write_text("\n".join(prompts) + "\n")
    (data / "drawbench_test.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "category": c}) + "\n" for p, c in zip(prompts, "aab"))
    )
    protocol = make_cfg(f"protocol={name}", config_name="evaluate").protocol
    overrides = [f"protocol.rewards.{r}.{o}" for r in protocol.rewards for o in tiny_reward_overrides.get(r, [])]
    if name == "drawbench_ood":  # a jsonl prompt file: its categories give per-category rows
        overrides.append(f"protocol.prompts.file={data / 'drawbench_test.jsonl'}")
    small = ["protocol.max_prompts=3", "protocol.sampler.num_steps=2", "protocol.sampler.samples_per_prompt=2"]
    cfg = make_cfg(
        f"protocol={name}",
        f"paths.data={data}",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "checkpoint=[none,none]",
        *small,
        *overrides,
        config_name="evaluate",
    )
    result = evaluate(cfg)
    assert list(result["metrics"]) == ["base", "base#2"]
    rewards = list(cfg.protocol.rewards)
    for reward in rewards:
        assert torch.isfinite(torch.tensor(result["metrics"]["base"][f"eval/{name}/{reward}"]))
        # the same weights, prompts and noises: a paired difference of exactly zero
        assert next(r for r in result["pairs"]["base#2"] if r["reward"] == reward)["mean_diff"] == 0
    categories = {r["category"] for r in result["tables"]["base"]}
    if name == "drawbench_ood":
        assert {"a", "b", "overall"} <= categories
    assert (tmp_path / "scores.csv").is_file() and (tmp_path / "table.md").is_file()
