#!/usr/bin/env bash
# The pre-registered confirmation (docs/PREREGISTRATION.md): the headline arms on three pretraining
# pairs that no tuning saw (seeds 2026-2028), each post-trained and sampled once, so that every
# replicate is a whole independent pipeline and the CIs hold the variance of pretraining too
# (out/confirm/report/report.md). Nothing here may change after the plan's commit; the recipe is
# config/small.py's. Extra arguments go to study.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python study.py config/small.py --out_root=out/confirm --seed=2026 --pretrain_seeds=3 --seeds=1 "$@"
