# The study of config/small.py on annotations no label made: the embed annotator's clusters mode
# (annotators.py: k-means over MiniLM embeddings of a sample of chunks, each cluster named by its
# most distinctive words, e.g. 'cluster:music_album_band'). Only overrides; run after small.py:
#   python study.py config/small.py config/small_embed.py --out_root=out/small_embed   (runs/small_embed.sh)
#   python annotators.py config/small_embed.py --eval_split=report    (purity against the wiki topics)
annotator = 'embed'
embed_labels = ''  # clusters: no label list
embed_clusters = 12  # about the corpus's 11 topics, so that the SFT slice is as narrow as small.py's
cluster_terms = 3
# Its own key: the corpus's topic labels stay the evaluation judge's 'topic' (reference_fields: in
# heldout.jsonl only, never in what the models learn), so the topic metrics mean what they mean in
# the main study; small.py's exclude='topic:Uncategorized' sees them too.
embed_key = 'cluster'
reference_fields = 'topic:topic'
headline_metrics = 'entropy_topic,dissimilarity'
# The SFT set: the two most common clusters (small.py's is two topics).
sft_key = 'cluster'
sft_values = 'top:2'
name = 'wiki_embed'  # annotate.py's data dir name ...
data_name = 'wiki_embed'  # ... and the study's, which passes it to annotate.py
