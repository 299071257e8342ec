# The study of config/small.py on annotations no label made: the embed annotator's clusters mode
# (annotators.py: k-means over MiniLM embeddings of a sample of chunks, each cluster named by its
# most distinctive words, e.g. 'cluster:music_album_band'). Only overrides; run after small.py:
#   python annotate.py config/small.py config/small_embed.py
#   python annotators.py config/small_embed.py --eval_split=report    (purity against the wiki topics)
annotator = 'embed'
embed_labels = ''  # clusters: no label list
embed_clusters = 12  # about the corpus's 11 topics, so that the SFT slice is as narrow as small.py's
cluster_terms = 3
# Its own key: the corpus's topic labels stay the evaluation judge's 'topic', never confused with
# the clusters the models are trained on.
embed_key = 'cluster'
# The SFT set: the two most common clusters (small.py's is two topics).
sft_key = 'cluster'
sft_values = 'top:2'
name = 'wiki_embed'
