# GPU model family, smallest: 6 layers x 384 wide (width/depth = 64, as gpt_l8 and gpt2_small).
# Combine with a data config, which comes first: the model config overrides nothing of it.
#   torchrun --standalone --nproc_per_node=8 pretrain.py config/simplestories.py config/gpt_l6.py
# 12.2M parameters (4096-id vocabulary) x 20 tokens/parameter (Chinchilla, as in the paper) = 244M
# tokens = 1861 iterations of 16 x 1024 x 8 = 131k tokens.
n_layer = 6
n_head = 6
n_embd = 384
block_size = 1024
batch_size = 16  # per GPU micro-batch
gradient_accumulation_steps = 8  # over all GPUs: divisible by 1, 2, 4, 8
max_iters = 1861
warmup_iters = 100
learning_rate = 4e-3  # AdamW: embedding and head
matrix_lr = 0.02  # Muon: the hidden matrices
eval_interval = 250
eval_iters = 50
log_interval = 10
device = 'cuda'
dtype = 'bfloat16'
compile = True
# SFT of the same model
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
