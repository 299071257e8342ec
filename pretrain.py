"""
Pretraining on the plain or the annotated token stream written by annotate.py.

    python pretrain.py config/small.py                                      # plain:     <|bos|> x ...
    python pretrain.py config/small.py --annotated=True --out_dir=out/annotated   # <|ann|> z <|text|> x ...
    torchrun --standalone --nproc_per_node=2 pretrain.py config/small.py --device=cpu

Both arms use the same iterations, batch and block size, so compute is matched and annotation
tokens *replace* content tokens (paper, section 3: annotated pretraining).
"""
import os

import numpy as np
import torch

from common import UserError, main_guard
from formats import load_meta
from model import GPT, GPTConfig
from training import (check_meta, load_checkpoint, model_from_checkpoint, padded_vocab, resume_state,
                      setup_device, train)

# -----------------------------------------------------------------------------
# default config (GPU-ish sizes live in config/; config/small.py is the laptop run)
# I/O
data_dir = 'data/wiki'
out_dir = 'out/base'
annotated = False  # train on annotated_*.bin instead of plain_*.bin
init_from = 'scratch'  # 'scratch' or 'resume' (from out_dir/ckpt.pt)
eval_interval = 250
eval_iters = 20
log_interval = 10
progress = True  # tqdm bar on rank 0
# data
batch_size = 16  # micro-batch size per rank
block_size = 256
gradient_accumulation_steps = 1  # total over all ranks (divided among them)
# model
n_layer = 4
n_head = 4
n_embd = 256
dropout = 0.0
bias = False
# AdamW, cosine schedule
learning_rate = 1e-3
max_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
warmup_iters = 100
lr_decay_iters = 2000  # ~ max_iters (Chinchilla)
min_lr = 1e-4  # ~ learning_rate / 10
# system
device = 'auto'  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
backend = 'auto'  # DDP backend: 'auto' = nccl on CUDA, gloo on CPU
dtype = 'auto'  # 'auto' = bfloat16 autocast on CUDA, float32 on CPU
compile = False  # torch.compile the model
cpu_peak_flops = 0.0  # your CPU's peak FLOP/s, to print MFU on CPU (GPUs: from a table)
seed = 1337
threads = 0  # torch CPU threads per process (0: torch's default)
from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------


def stream(split):
    prefix = 'annotated' if annotated else 'plain'
    path = os.path.join(data_dir, f'{prefix}_{split}.bin')
    if not os.path.isfile(path):
        raise UserError(f"token stream not found: {path} (run annotate.py)")
    data = np.memmap(path, dtype=np.uint16, mode='r')
    if len(data) <= block_size + 1:
        raise UserError(f"{path} has {len(data)} tokens, fewer than block_size+1={block_size + 1}")
    return data


def make_get_batch(device):
    data = {s: stream(s) for s in ('train', 'val')}
    world_micro = gradient_accumulation_steps  # micro-batches per iteration over all ranks

    def get_batch(split, gen, micro_ids):
        d = data[split]
        n = world_micro if split == 'train' else 1
        starts = torch.randint(len(d) - block_size - 1, (n, batch_size), generator=gen)
        out = []
        for m in micro_ids:
            ix = starts[m].tolist()
            x = torch.from_numpy(np.stack([d[i:i + block_size] for i in ix]).astype(np.int64))
            y = torch.from_numpy(np.stack([d[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64))
            out.append((x.to(device, non_blocking=True), y.to(device, non_blocking=True)))
        return out
    return get_batch


def main():
    if threads:
        torch.set_num_threads(threads)
    env = setup_device(device, backend)
    meta = load_meta(data_dir)
    if annotated and block_size < meta['max_annotation_tokens'] + 2:
        raise UserError(f"block_size={block_size} is too small for one annotation "
                        f"({meta['max_annotation_tokens']} tokens) plus text")
    torch.manual_seed(seed + env['rank'])
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                      bias=bias, vocab_size=padded_vocab(meta), dropout=dropout)
    state = resume_state(None)
    ckpt = None
    if init_from == 'resume':
        ckpt = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
        check_meta(ckpt, meta, data_dir)
        if ckpt.get('stage') != 'pretrain':
            raise UserError(f"{out_dir}/ckpt.pt is a '{ckpt.get('stage')}' checkpoint, not a pretraining one")
        model_args = ckpt['model_args']
        model = model_from_checkpoint(ckpt, env['device'])
        state = resume_state(ckpt)
        if env['master']:
            print(f"resuming {out_dir} from iter {state['iter_num']}")
    elif init_from == 'scratch':
        model = GPT(GPTConfig(**model_args)).to(env['device'])
    else:
        raise UserError(f"init_from must be 'scratch' or 'resume', got '{init_from}'")
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), env['device_type'])
    if ckpt is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
    if env['master']:
        os.makedirs(out_dir, exist_ok=True)
        arm = 'annotated' if annotated else 'plain'
        print(f"pretraining ({arm} stream) {model.num_params() / 1e6:.2f}M params on {env['device']}"
              f" x{env['world']}, {max_iters} iters of {gradient_accumulation_steps * batch_size * block_size:,} tokens")
    extra = dict(stage='pretrain', model_args=model_args, config=config, annotated=annotated,
                 meta_fingerprint=meta['fingerprint'], data_dir=data_dir)
    cfg = dict(config, desc=f"pretrain {'annotated' if annotated else 'plain'}")
    train(model, optimizer, make_get_batch(env['device']), cfg, env, state, extra)
    if env['ddp']:
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main_guard(main)
