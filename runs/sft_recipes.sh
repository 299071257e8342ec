#!/usr/bin/env bash
# The SFT-recipe sweep behind config/small.py's SFT settings (README: "Choosing the SFT recipe").
# Post-trains the pretrained models of a finished study with each variant below, samples each as the
# study does, and writes one diversity report beside the study's own base, sft and anchored arms.
#   bash runs/sft_recipes.sh [study root, default out/small] [output root, default out/sft_recipes]
# About 1 minute per variant on 2 cores. Every variant starts from config/small.py; its arguments
# override it. The variants differ only in the post-training recipe, never in the evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-out/small}
out=${2:-out/sft_recipes}
cfg=config/small.py
variants=(
  # the recipe before this sweep: no dropout, lr 0.1, 200 iterations cut by the val-loss rule, no replay
  "sft-nodrop:--method=sft --sft_dropout=0 --sft_lr_frac=0.1 --sft_iters=200"
  "anchored-nodrop:--method=anchor --sft_dropout=0 --anchor_lr_frac=0.1 --sft_iters=200 --replay_rows=0"
  # the learning rate (config/small.py: sft 0.2, anchored 0.3)
  "sft-lr0.1:--method=sft --sft_lr_frac=0.1"
  "sft-lr0.3:--method=sft --sft_lr_frac=0.3"
  "anchored-lr0.1:--method=anchor --anchor_lr_frac=0.1"
  "anchored-lr0.2:--method=anchor --anchor_lr_frac=0.2"
  # replay of whole documents: none, 1 and 2 per batch of 16 rows (config/small.py: 4)
  "anchored-r0:--method=anchor --replay_rows=0"
  "anchored-docs-r1:--method=anchor --replay_rows=1"
  "anchored-docs-r2:--method=anchor --replay_rows=2"
  # replay of raw stream windows, document boundaries included (the previous recipe: 2)
  "anchored-stream-r2:--method=anchor --replay_rows=2 --replay_docs=False"
)
for f in "$root/base/ckpt.pt" "$root/annotated-base/ckpt.pt" "$root/samples/sft.jsonl" "$root/samples/anchored.jsonl"; do
  [[ -f $f ]] || { echo "error: $f not found (run bash runs/small.sh first)"; exit 2; }
done
mkdir -p "$out/samples"
# the data dir the study's models were trained on (diversity.py's judge and corpus reference)
data=$(python -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['data_dir'])" \
       "$root/base/ckpt.pt")
samples="base=$root/samples/base.jsonl,sft=$root/samples/sft.jsonl,anchored=$root/samples/anchored.jsonl"
anchored="anchored"
# each variant: post-training, then sampling; two variants side by side at one thread each, as
# study.py runs its arms (config/small.py: jobs = 2), their output in $out/logs/<variant>.log
variant() {
  python anchor_sft.py $cfg "${@:3}" --init_dir="$2" --out_dir="$out/$1" --threads=1 --progress=False &&
  python sample.py $cfg --ckpt_dir="$out/$1" --out="$out/samples/$1.jsonl" --threads=1 --progress=False
}
mkdir -p "$out/logs"
pids=()
for v in "${variants[@]}"; do
  name=${v%%:*}
  read -r -a args <<< "${v#*:}"
  init=$root/annotated-base
  [[ " ${args[*]} " == *" --method=sft "* ]] && init=$root/base
  [[ $name == anchored* ]] && anchored="$anchored,$name"
  samples="$samples,$name=$out/samples/$name.jsonl"
  [[ -f $out/samples/$name.jsonl ]] && continue
  echo "[$name] ${args[*]} (log: $out/logs/$name.log)"
  variant "$name" "$init" "${args[@]}" > "$out/logs/$name.log" 2>&1 &
  pids+=($!)
  if (( ${#pids[@]} == 2 )); then
    for p in "${pids[@]}"; do wait "$p" || { echo "error: a variant failed (see $out/logs/)"; exit 1; }; done
    pids=()
  fi
done
for p in "${pids[@]}"; do wait "$p" || { echo "error: a variant failed (see $out/logs/)"; exit 1; }; done
python diversity.py $cfg --samples="$samples" --data_dir="$data" --out_dir="$out/report" --anchored_arm="$anchored"
