#!/usr/bin/env bash
# E-GRPO's entropy threshold: does the paper's tau 2.2 beat 1.8 / 2.0 / 2.4 / 2.6, and merging at all
# (tau 0 = no merge, G²RPO's single SDE steps without MGAI)? x seeds 0,1,2.
source "$(dirname "$0")/_common.sh"
flowrl_sweep tau method=egrpo method.tau=0,1.8,2.0,2.2,2.4,2.6 "$LENGTH" "$@"
