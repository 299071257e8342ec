#!/usr/bin/env bash
# The laptop study, offline, one command (after `pip install -r requirements.txt`):
# annotate -> plain and annotated pretraining -> the post-trainings of every arm at 3 seeds ->
# samples -> diversity report (out/small/report/report.md, printed at the end).
# Stages whose outputs exist and match their config are skipped, so a re-run is fast.
# Extra arguments go to study.py, e.g. --temperatures=0.6,0.8,1.0,1.1 or --force=True.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python study.py config/small.py "$@"
