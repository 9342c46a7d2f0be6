#!/usr/bin/env bash
# The toy study (experiments/toy-benchmark-v2) at 10x its seeds, in one device call of < 10 minutes:
# every toy_<method> preset x seeds 0..49 at 48,000 NFE, then flowrl.compare paired by seed
# against DanceGRPO. Evaluations: 10 noises per held-out entry between (5,120 images), 32 at the
# endpoints (16,384 images), sized for power: make train's final score spreads over seeds by SD
# 0.0157 and a 4,096-image evaluation has bootstrap SE 0.0070 (experiments/compositional-world/
# make-train-seeds), so SE <= SD / 4 = 0.0039 needs >= 13,200 images; 16,384 give ~0.0035.
#
#   make gpu-wheels                       # here: what the device image lacks, into wheels/
#   device run (carry wheels/):  pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl \
#       && PYTHONPATH=/tmp/site:src OUT=$OUT bash benchmarks/toy_study_gpu.sh
#
# Sizing: the runs go N_JOBS (16, one per CPU core) at a time through Hydra's joblib launcher, all on
# the one GPU (the tiny model is launch-bound, so processes share it well); seeds first, so when
# the DEADLINE_S (480 s) watchdog stops the sweep, every method has the same seeds (the run each
# process had in hand ends KILLED and is not counted). compare then reads the finished runs.
# Nobody has run this on a GPU yet: the seeds it reaches in 480 s are the measurement.
#
# DRY_RUN=1: the same script on the CPU in seconds (2 methods x 1 seed, smoke sizes), which the
# tests run. Results: $OUT (default experiments/toy-benchmark-v2/gpu): table.md, paired.csv,
# plots, mlflow.db (the runs), sweep.log; the runs' folders, checkpoints and artifacts go to $WORK
# (default a fresh temporary folder), so that a device call brings back only the results.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-experiments/toy-benchmark-v2/gpu}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
PYTHON="${PYTHON:-$([[ -x .venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3)}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT/src" MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  export SMOKE=1 SEEDS=0 EXPERIMENTS=toy_dancegrpo,toy_egrpo N_JOBS="${N_JOBS:-1}" OMP_NUM_THREADS=1
  DEADLINE_S="${DEADLINE_S:-300}"
  EXTRA=(trainer.accelerator=cpu)
else
  # every module the runs import, checked before the first run (a missing wheel fails in one line)
  "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; import hydra, hydra_plugins.hydra_joblib_launcher, mlflow, sqlalchemy, alembic, pydantic, diffusers, open_clip, tabulate, lightning, flowrl" \
    || { echo "toy_study_gpu: a package is missing (make gpu-wheels here, carry wheels/, pip install --target, PYTHONPATH)" >&2; exit 2; }
  export SEEDS="${SEEDS:-$(seq -s, 0 49)}" N_JOBS="${N_JOBS:-16}" OMP_NUM_THREADS=1
  DEADLINE_S="${DEADLINE_S:-480}"
  EXTRA=(trainer.accelerator=gpu val.samples_per_prompt=10 val.final_samples_per_prompt=32)
fi
export PYTHON LAUNCHER=joblib EXPERIMENT=toy-benchmark-v2-gpu

# the sweep in its own process group, so the watchdog's SIGTERM reaches every run (flowrl ends
# each at its iteration boundary, KILLED, with a checkpoint) and the launcher alike
start=$(date +%s)
cd "$WORK"  # Hydra's multirun/ and MLflow's ./mlruns land here
setsid bash "$ROOT/sweeps/toy_benchmark.sh" "${EXTRA[@]}" >"$OUT/sweep.log" 2>&1 &
sweep=$!
# (its output goes nowhere: a sleep left holding this script's stdout would keep a caller reading
# the pipe, e.g. the tests, waiting the full deadline after the sweep has ended)
( sleep "$DEADLINE_S" && kill -TERM -- "-$sweep" 2>/dev/null && echo "toy_study_gpu: deadline ${DEADLINE_S}s: sweep stopped" >>"$OUT/sweep.log" ) >/dev/null 2>&1 &
watchdog=$!
wait "$sweep" || echo "toy_study_gpu: the sweep ended with status $? (see $OUT/sweep.log)"
pkill -P "$watchdog" sleep 2>/dev/null || true  # the watchdog's sleep first, then the watchdog
kill "$watchdog" 2>/dev/null || true
echo "toy_study_gpu: sweep $(($(date +%s) - start)) s; $(grep -c 'MLflow run' "$OUT/sweep.log" || true) runs finished"

"$PYTHON" -m flowrl.compare --experiment toy-benchmark-v2-gpu --baseline method.name=dancegrpo --paired-by seed \
  --by method.name --out "$OUT"
echo "toy_study_gpu: $(($(date +%s) - start)) s in all; results in $OUT"
