#!/usr/bin/env bash
# The laptop scaling sweep: base, sft and anchored at three model sizes of one family
# (width/depth = 32) on the embedded corpus, the same token budget for each (config/small.py), then
# each diversity metric against parameters per arm (out/scaling/report/scaling_*.png) and a table
# (out/scaling/report/report.md). Stages already done are skipped on a re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python study.py config/small.py --out_root=out/scaling \
    --sizes='xs:--n_layer=2 --n_head=2 --n_embd=64;s:--n_layer=4 --n_head=4 --n_embd=128;m:--n_layer=5 --n_head=5 --n_embd=160' "$@"
