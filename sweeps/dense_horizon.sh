#!/usr/bin/env bash
# DenseGRPO's step rewards: completing every intermediate latent with all remaining ODE steps
# (null, the paper's default) against n = 1, 2, 4 evenly spaced steps (cheaper, coarser rewards).
# x seeds 0,1,2.
source "$(dirname "$0")/_common.sh"
flowrl_sweep dense_horizon method=densegrpo method.dense_horizon=null,1,2,4 "$LENGTH" "$@"
