# laptop configuration: CPU, a few minutes per stage (2 cores: ~4 min per pretraining arm)
# one file for every stage: each script takes the keys it knows and skips the others
#   python annotate.py config/small.py
#   python pretrain.py config/small.py [--annotated=True --out_dir=out/annotated]
#   python anchor_sft.py config/small.py --method=sft|anchor --init_dir=... --out_dir=...

# annotate.py: the embedded Wikipedia summaries, 4096-id BPE, SFT slice = two topics
dataset = 'wiki'
vocab_size = 4096
sft_values = 'Arts,Technology'

# pretrain.py: a 1.3M-parameter GPT, ~2.3M tokens (about 2 epochs of the plain stream)
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
batch_size = 16
gradient_accumulation_steps = 1
max_iters = 550
lr_decay_iters = 550
warmup_iters = 50
learning_rate = 2e-3
min_lr = 2e-4
eval_interval = 110
eval_iters = 10
log_interval = 50
dropout = 0.0

# anchor_sft.py: a few epochs over the 400 narrow SFT rows
sft_iters = 100
sft_batch_size = 16
sft_learning_rate = 5e-4
sft_min_lr = 5e-5
sft_warmup_iters = 10
sft_eval_interval = 50
