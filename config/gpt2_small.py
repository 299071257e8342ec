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
# the anchored recipe of config/small.py at this size: prior distillation and replay of whole
# pretraining documents (1 in 5 rows of a batch, as there), the arms that replay at their own
# learning rate (2x SFT's, as there); the controls (study.py) get the same terms on the plain side
# (sft-replay, sft-distill). Untested at this size.
anchor_prior = 'distill'
distill_weight = 1.0
opening_weight = 0.05  # the opening line a target on the prior rows (config/small.py: 0 broke the format)
replay_rows = 8
replay_docs = True
replay_lr_frac = 0.2
sft_dropout = 0.1
# study.py: every arm at 3 seeds, the training stages under torchrun (e.g. --nproc=8)
seeds = 3
