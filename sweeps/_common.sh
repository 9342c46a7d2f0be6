# Shared by every sweeps/<name>.sh (sourced, not run). Each script is one line:
#   flowrl_sweep <name> <the sweep's overrides>... "$@"
# which runs `python -m flowrl.train -m <overrides>` with:
#   - logger.experiment_name=<name> sweep=<name>: one MLflow experiment per question, each run
#     tagged sweep=<name> (EXPERIMENT=mine, or the argument logger.experiment_name=mine, renames it);
#   - $LENGTH, the run-length override: default budget.nfe=100000 (model evaluations as
#     flowrl.plan counts them, the same for every point, so equal cost; ~30 E-GRPO iterations on
#     the tiny model), or e.g. LENGTH=train.iterations=30, LENGTH=budget.wall_s=600;
#   - seed=$SEEDS (default 0,1,2) as the first override: Hydra's basic sweeper takes the product of
#     the lists in command-line order, the first slowest, so a sweep stopped early has every point
#     at the seeds it reached;
#   - LAUNCHER=joblib (local, N_JOBS parallel runs, default: the number of cores) or LAUNCHER=slurm
#     (src/flowrl/config/conf/hydra/launcher/slurm.yaml); default: one run after the other in one process;
#   - SMOKE=1: tiny sizes, so that any sweep finishes in seconds per run (the shrinks below; a
#     shrink is dropped where the sweep or the arguments set the same key);
#   - every extra argument passed through last (Hydra: the last value of a key wins).
# Run from the repository root: the MLflow store is the working directory's (sqlite:///mlflow.db,
# what `make ui` serves; MLFLOW_TRACKING_URI or logger.tracking_uri=... for another), and Hydra
# writes each run's folder under multirun/<name>/.
# Then: python -m flowrl.compare --experiment <name>  (table, CIs and plots).
set -euo pipefail

FLOWRL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$FLOWRL_ROOT/.venv/bin/python" ]]; then PYTHON="$FLOWRL_ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"

SMOKE="${SMOKE:-0}"
SEEDS="${SEEDS:-$([[ "$SMOKE" == 1 ]] && echo 0 || echo 0,1,2)}"
LENGTH="${LENGTH:-$([[ "$SMOKE" == 1 ]] && echo train.iterations=1 || echo budget.nfe=100000)}"

# Tiny sizes: one iteration of one prompt (no budget, also where a preset sets one), one held-out
# sample per prompt, and `smoke=true`: each method shrunk by its own step scheduler (fewer steps, a
# smaller group, its own knobs with them), so one list fits every method, a new one included.
SMOKE_OVERRIDES=(
  budget.nfe=null
  train.prompts_per_step=1
  smoke=true
  val.samples_per_prompt=1
  val.final_samples_per_prompt=null
  val.num_steps=4
  val.grid_prompts=2
  trainer.val_check_interval=1
)

# Every method of conf/method/, comma-separated (a new method file joins methods.sh by itself).
all_methods() {
  local f names=()
  for f in "$FLOWRL_ROOT"/src/flowrl/config/conf/method/*.yaml; do names+=("$(basename "$f" .yaml)"); done
  local IFS=,
  echo "${names[*]}"
}

# Every toy_<method> preset of conf/experiment/ (the methods at one rollout budget on the tiny model).
all_toy_experiments() {
  local f names=()
  for f in "$FLOWRL_ROOT"/src/flowrl/config/conf/experiment/toy_*.yaml; do names+=("$(basename "$f" .yaml)"); done
  local IFS=,
  echo "${names[*]}"
}

_override_key() {  # '++method.tau=1,2' -> 'method.tau'; 'hydra/launcher=joblib' -> 'hydra/launcher'
  local key="${1%%=*}"
  key="${key#++}"; key="${key#+}"; key="${key#\~}"
  echo "$key"
}

flowrl_sweep() {
  local name="$1"; shift
  local given=("$@") args=("seed=$SEEDS") keys=" " o
  for o in "${given[@]}"; do keys+="$(_override_key "$o") "; done
  if [[ "$SMOKE" == 1 ]]; then
    for o in "${SMOKE_OVERRIDES[@]}"; do
      [[ "$keys" == *" $(_override_key "$o") "* ]] || args+=("$o")
    done
  fi
  case "${LAUNCHER:-}" in
    "") ;;
    joblib) args+=(hydra/launcher=joblib "hydra.launcher.n_jobs=${N_JOBS:-$(nproc 2>/dev/null || echo 2)}") ;;
    *) args+=("hydra/launcher=$LAUNCHER") ;;
  esac
  args+=(
    "logger.experiment_name=${EXPERIMENT:-$name}"
    "sweep=$name"
    # the evaluation before training is the same for every run that starts from the same weights:
    # computed once (flowrl.training.eval_cache; its key covers the weights, prompts, noises and code)
    "val.before_cache=multirun/$name/before_cache"
    "hydra.sweep.dir=multirun/$name/\${now:%Y-%m-%d_%H-%M-%S}"
  )
  (set -x && "$PYTHON" -m flowrl.train -m "${args[@]}" "${given[@]}")
}
