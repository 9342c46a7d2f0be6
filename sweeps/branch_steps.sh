#!/usr/bin/env bash
# E-GRPO's active steps: do branch points over the paper's first 8 of 16 steps beat the first 4 or
# all 16 (method.num_branch_steps), at equal NFE? x seeds 0,1,2.
source "$(dirname "$0")/_common.sh"
flowrl_sweep branch_steps method=egrpo method.num_branch_steps=4,8,16 "$LENGTH" "$@"
