#!/usr/bin/env bash
# Group size G: more samples per group give better advantage estimates but cost G x the rollouts;
# which G is best per unit of compute? E-GRPO (METHOD=... for another method) x seeds 0,1,2.
source "$(dirname "$0")/_common.sh"
flowrl_sweep group_size "method=${METHOD:-egrpo}" method.group_size=4,8,12,16 "$LENGTH" "$@"
