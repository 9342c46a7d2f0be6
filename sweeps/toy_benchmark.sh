#!/usr/bin/env bash
# The toy benchmark on the shipped tiny model (experiments/toy-benchmark-v2/README.md): every method's
# experiment=toy_<method> preset (faithful defaults, one NFE budget per run: 48,000, the same lr,
# GenEval's protocol on the compositional world: trained on the geneval verifier, evaluated on
# held-out compositions, GenEval's overall the ground truth, at 0/25/50/75/100% of the budget)
# x seeds 0,1,2 (SEEDS=0,1,2,3,4 for the study's five), into the experiment toy_benchmark.
# E-GRPO's ablations at the same budget are the tau / group_size / clip_eps sweeps on the same
# preset (the README gives the three commands).
LENGTH="${LENGTH:-$([[ "${SMOKE:-0}" == 1 ]] && echo train.iterations=1 || echo budget.nfe=48000)}"
source "$(dirname "$0")/_common.sh"
flowrl_sweep toy_benchmark "experiment=${EXPERIMENTS:-$(all_toy_experiments)}" "$LENGTH" "$@"
