# laptop configuration: CPU, a few minutes per stage (2 cores: ~4 min per pretraining arm)
# one file for every stage: each script takes the keys it knows and skips the others
#   python annotate.py config/small.py
#   python pretrain.py config/small.py [--annotated=True --out_dir=out/annotated]
#   python anchor_sft.py config/small.py --method=sft|anchor --init_dir=... --out_dir=...

# annotate.py: the embedded Wikipedia summaries, 4096-id BPE, SFT slice = two topics.
# Annotations are topic and entity: a 1.3M-parameter model does not learn to write the long free-text
# description values (up to 68 tokens) well enough to close its annotation; larger configs keep them.
dataset = 'wiki'
vocab_size = 4096
fields = 'topic:topic,entity:title'
sft_values = 'Arts,Technology'

# pretrain.py: a 1.3M-parameter GPT, ~2M tokens (about 2 epochs of the plain stream)
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 500
lr_decay_iters = 500
warmup_iters = 50
learning_rate = 2e-3
min_lr = 2e-4
eval_interval = 100
eval_iters = 10
log_interval = 50
dropout = 0.0

# anchor_sft.py: ~7 epochs over the ~340 narrow SFT rows that fit; the learning rate and length are
# what it takes for the standard arm to adopt the assistant format (its first line) in most samples.
sft_iters = 150
sft_batch_size = 16
sft_learning_rate = 2e-3
sft_min_lr = 2e-4
sft_warmup_iters = 10
sft_eval_interval = 50
# the paper supervises the annotation keys in 0.3% of the rows: 1 row of ~340 here, too few to keep
# the annotation format of a 1.3M-parameter model; 10% (~34 rows) does. Values stay masked.
key_fraction = 0.1
