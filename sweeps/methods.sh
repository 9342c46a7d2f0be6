#!/usr/bin/env bash
# Which GRPO variant wins at equal cost? Every method of conf/method/ (METHODS=a,b for some) x seeds
# 0,1,2, each run as long as $LENGTH (default: one NFE budget, so equal cost). The methods keep
# their papers' defaults (G, steps, lr: on the tiny model the LoRA lrs of Flow-GRPO / DenseGRPO are
# too high for a full fine-tune; sweeps/toy_benchmark.sh runs the toy presets instead).
source "$(dirname "$0")/_common.sh"
flowrl_sweep methods "method=${METHODS:-$(all_methods)}" "$LENGTH" "$@"
