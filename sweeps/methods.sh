#!/usr/bin/env bash
# Which GRPO variant wins at equal cost? Every method of conf/method/ (METHODS=a,b for some) x seeds
# 0,1,2, each run as long as $LENGTH. The methods keep their papers' defaults (G, steps, lr);
# until run lengths are budgets (LENGTH=budget.nfe=...), equal iterations are not equal NFE.
source "$(dirname "$0")/_common.sh"
flowrl_sweep methods "method=${METHODS:-$(all_methods)}" "seed=$SEEDS" "$LENGTH" "$@"
