#!/usr/bin/env bash
# PPO clip range: the papers' 1e-4 against 1e-3 and 1e-2. The clip acts from a rollout's second
# optimizer step on (E-GRPO takes 8 per rollout, one per branch point; the first has ratio 1).
# E-GRPO (METHOD=... for another method) x seeds 0,1,2.
source "$(dirname "$0")/_common.sh"
flowrl_sweep clip_eps "method=${METHOD:-egrpo}" method.clip_eps=1e-4,1e-3,1e-2 "$LENGTH" "$@"
