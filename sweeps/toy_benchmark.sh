#!/usr/bin/env bash
# The toy benchmark on the shipped tiny model: every method at one rollout budget per iteration
# (the experiment=toy_<method> presets: ~2,200 NFE per iteration, the same lr, trained on the
# tiny_clip proxy, evaluated on held-out prompts on shapes (ground truth), tiny_clip and jpeg)
# x seeds 0,1,2, logged to the experiment toy_benchmark. The full study (one NFE budget per run
# for every method, plus E-GRPO's tau, G and clip eps ablations, with its README in
# experiments/toy-benchmark/) replaces this line once run lengths are budgets.
source "$(dirname "$0")/_common.sh"
flowrl_sweep toy_benchmark "experiment=${EXPERIMENTS:-$(all_toy_experiments)}" "seed=$SEEDS" "$LENGTH" "$@"
