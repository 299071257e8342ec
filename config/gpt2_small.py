# GPU model family, largest: GPT-2 small, 12 layers x 768 wide (width/depth = 64). See config/gpt_l6.py.
# 88.1M parameters (4096-id vocabulary; 124M with GPT-2's 50k) x 20 tokens/parameter = 1.76B tokens
# = 3361 iterations of 16 x 1024 x 32 = 524k tokens (nanoGPT's ~0.5M-token batch).
#   torchrun --standalone --nproc_per_node=8 pretrain.py config/simplestories.py config/gpt2_small.py
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
batch_size = 16
gradient_accumulation_steps = 32
max_iters = 3361
warmup_iters = 200
learning_rate = 4e-3  # AdamW: embedding and head
matrix_lr = 0.02  # Muon: the hidden matrices
eval_interval = 250
ckpt_interval = 50  # ckpt.pt between evaluations too: a lost rank or machine costs at most 50 iterations
eval_iters = 50
log_interval = 10
device = 'cuda'
dtype = 'bfloat16'
compile = True
sft_iters = 300
sft_batch_size = 32
sft_lr_frac = 0.1
sft_warmup_iters = 20
sft_eval_interval = 100
# the anchored recipe: anchor_sft.py's defaults (measured on the laptop, config/small.py; untested at
# this size), replay_lr_frac 2x sft_lr_frac as there; only what scales with the batch or the SFT set differs
replay_rows = 8  # recipe: whole documents per 32 SFT rows, 1 row in 5 as on the laptop (4 per 16)
key_fraction = 0.003  # recipe: the paper's 0.3%, ~60 key rows of the data configs' ~20,000 SFT rows (the laptop: ~80)
# study.py: every arm at 3 seeds, the training stages under torchrun (e.g. --nproc=8)
seeds = 3
