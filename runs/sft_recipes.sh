#!/usr/bin/env bash
# The SFT-recipe sweep: variants of config/small.py's post-training recipe, each post-trained from
# the study's own pretrained models and sampled at every seed, in one report beside the study's arms
# (out/small/report-recipes/report.md). The study's own stages are skipped when they are up to date.
# Every variant changes the recipe (model side), never the evaluation. config/small.py's recipe
# distills for either method: a plain SFT variant says --anchor_prior=mask.
set -euo pipefail
cd "$(dirname "$0")/.."
variants=(
  # the learning rate (config/small.py: sft 0.2; arms that replay 0.4)
  "sft-lr0.1:--method=sft --anchor_prior=mask --replay_rows=0 --sft_lr_frac=0.1"
  "sft-lr0.4:--method=sft --anchor_prior=mask --replay_rows=0 --sft_lr_frac=0.4"
  "sft-replay-lr0.3:--method=sft --anchor_prior=mask --replay_lr_frac=0.3"
  "anchored-lr0.3:--method=anchored --replay_lr_frac=0.3"
  # replay: none and 2 whole documents per batch of 16 rows (config/small.py: 4); raw stream windows
  "anchored-r0:--method=anchored --replay_rows=0"
  "anchored-r2:--method=anchored --replay_rows=2"
  "anchored-stream:--method=anchored --replay_docs=False"
  # the SFT length (config/small.py: 120 iterations for every arm)
  "sft-160it:--method=sft --anchor_prior=mask --replay_rows=0 --sft_iters=160"
  "sft-replay-160it:--method=sft --anchor_prior=mask --sft_iters=160"
  "anchored-160it:--method=anchored --sft_iters=160"
)
exec python study.py config/small.py --report_dir=out/small/report-recipes \
    --variants="$(IFS=';'; echo "${variants[*]}")" "$@"
