# laptop configuration: CPU, 1.3M parameters, the whole study within 20 minutes on 2 cores
# one file for every stage: each script takes the keys it knows and skips the others
#   python annotate.py config/small.py
#   python pretrain.py config/small.py [--annotated=True --out_dir=out/annotated]
#   python anchor_sft.py config/small.py --method=sft|anchored --init_dir=... --out_dir=...
#   python study.py config/small.py                      (runs/small.sh: all of it)
# The measurements behind these choices are in docs/LOG.md.
# Everything specific to the Wikipedia corpus lives here; another labeled corpus gets its own file.

# annotate.py: the embedded Wikipedia summaries, 4096-id BPE, SFT slice = two topics.
dataset = 'wiki'
vocab_size = 4096
# Annotations are topic and entity (the article's title). The free-text description values (up to
# 68 tokens) are more than a 1M-parameter model learns to write; larger configs keep them.
fields = 'topic:topic,entity:title'
sft_values = 'Arts,Technology'
# Shaping for a model this small: the first two sentences of every summary (the definition and one
# fact: its most on-topic and most learnable part; ~550k tokens). The SFT set, the judge's held-out
# documents and the eval prompts' reference texts follow, since all come from the same documents.
max_sentences = 2
# 'Uncategorized' is not a topic: it holds 1,000 articles of every subject (Tax, Taoism, Tanzania,
# the Tang dynasty, 0) that the corpus never sorted. As a label it would teach the judge a class
# without meaning, and as an annotation value it would say nothing; those documents are left out.
exclude = 'topic:Uncategorized'
# The corpus's topics are skewed (People 1,828 documents, Mathematics 256): base's samples lean to a few
# topics, and SFT's pull toward its two made topic entropy *rise*, so the paper's own metric could not
# register collapse. At most 600 documents of each topic for pretraining and the judge (the five
# largest cut to about the size of the next; 4,298 pretraining documents instead of 7,213) were
# chosen on the base and sft arms alone, before any anchored number on it was seen: there SFT's topic
# entropy falls 7.7% [1.5%, 13.2%] below base's (docs/PREREGISTRATION.md, "Testbed").
balance_docs = 600

# pretrain.py: the modern recipe (model.py) at 4 x 128, ~4M tokens (about 7 epochs of the plain
# stream), chosen on the plain stream's val loss: tied embeddings beat untied at this size, and
# 4 x 128 beat 4 x 192, 3 x 192 and 6 x 192 at equal time.
recipe = 'modern'
tie_embeddings = True
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 1000
optimizer = 'muon'
learning_rate = 8e-3  # AdamW: the (tied) embedding
matrix_lr = 0.02  # Muon: the matrices of the blocks
weight_decay = 0.1
lr_schedule = 'wsd'
warmup_iters = 50
warmdown_frac = 0.4
final_lr_frac = 0.1
eval_interval = 500  # val loss and checkpoint: each evaluation reads 20 batches, ~3 s of the 20-minute budget
ckpt_interval = 100  # and ckpt.pt in between (a 13 MB write): an interrupted study loses at most 100 iterations
eval_iters = 10
log_interval = 50
dropout = 0.0
# torch.compile where a C++ compiler is found (training.py falls back to eager): 1.11x the eager
# steps at one thread each, the same val loss to 4 decimals (docs/LOG.md)
compile = True

# anchor_sft.py: 120 iterations (5 epochs of the ~400 narrow SFT rows), the last half a linear
# warmdown. A fixed length, the same for every arm: the SFT val loss curve is flat near its minimum,
# and a rule that keeps the lowest-val-loss checkpoint flips on third-decimal differences between
# machines and seeds.
sft_iters = 120
sft_batch_size = 16
sft_lr_frac = 0.2
sft_warmup_iters = 10
sft_eval_interval = 20
sft_patience = 0
# The anchored recipe was measured here (prior distillation with the opening line a target, replay of
# whole documents, 20% key rows, SFT dropout 0.1): its values are anchor_sft.py's defaults, with the
# numbers behind each, and this file inherits them like every config.
replay_lr_frac = 0.4  # recipe: 2x this file's sft_lr_frac (0.2), as the default 0.2 is of the default 0.1

# study.py: every arm post-trained and sampled at 3 seeds (the CIs hold the variance of training);
# samples per eval prompt and their length (two sentences fit with room to spare); training and
# sampling stages that do not depend on each other run 2 at a time, each with half the cores: a 1.3M
# model keeps 1 thread busier than 2 (2 cores: ~20% less wall time)
seeds = 3
jobs = 2
num_samples = 32
max_new_tokens = 128
