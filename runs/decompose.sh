#!/usr/bin/env bash
# Where the gain comes from: the one command's arms (runs/small.sh, reused where up to date) plus the
# annotated rungs anchored-mask (the paper's masking alone) and anchored-replay (+ replay) at every
# seed, and the paper's ablations (anchored-noann at every seed; anchored-prior, anchored-plain at one).
# The report (out/small/report-decomposition/report.md) gets the ladder table: what each ingredient
# adds on the plain side (sft -> sft-replay -> sft-distill) and on the annotated side, and what the
# annotation adds at each rung. Extra arguments go to study.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python study.py config/small.py --decomposition=True --report_dir=out/small/report-decomposition "$@"
