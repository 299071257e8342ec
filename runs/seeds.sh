#!/usr/bin/env bash
# The laptop study with its pretraining repeated too: 3 pretraining pairs (seeds 1337-1339), each
# post-trained and sampled once, so that every replicate is a whole independent pipeline and the
# report's CIs hold the variance of pretraining as well (out/seeds/report/report.md).
# Extra arguments go to study.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python study.py config/small.py --out_root=out/seeds --pretrain_seeds=3 --seeds=1 --ablation_seeds=1 "$@"
