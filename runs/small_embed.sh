#!/usr/bin/env bash
# The laptop study on annotations no label made: config/small.py with the embed annotator's
# clusters (config/small_embed.py: k-means over MiniLM embeddings, each cluster named by its words),
# the corpus's own topic labels kept for the evaluation judge only, so that the topic metrics mean
# what they mean in the main study (out/small_embed/report/report.md). Extra arguments go to study.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python study.py config/small.py config/small_embed.py --out_root=out/small_embed "$@"
