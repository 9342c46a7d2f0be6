#!/usr/bin/env bash
# G²RPO's Multi-Granularity Advantage Integration: do coarser completions ([1,2], [1,2,3]: the
# paper's Λ; its code uses [1,2]) beat a single granularity [1], at their extra NFE? x seeds 0,1,2.
source "$(dirname "$0")/_common.sh"
flowrl_sweep granularity method=g2rpo 'method.granularities=[1],[1,2],[1,2,3]' "$LENGTH" "$@"
