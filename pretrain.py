"""
Pretraining on the plain or the annotated token stream written by annotate.py.

    python pretrain.py config/small.py                                      # plain:     <|bos|> x ...
    python pretrain.py config/small.py --annotated=True --out_dir=out/annotated   # <|ann|> z <|text|> x ...
    torchrun --standalone --nproc_per_node=2 pretrain.py config/small.py --device=cpu

Both arms use the same iterations, batch and block size, so compute is matched and annotation
tokens *replace* content tokens (paper, section 3: annotated pretraining).
"""
import os
from functools import partial

import numpy as np
import torch

from common import UserError, main_guard
from formats import load_meta, token_stream
from model import GPT, GPTConfig
from training import (SCHEDULES, check_meta, check_model_config, check_training_config, elastic_restart, load_checkpoint,
                      lr_multiplier, model_from_checkpoint, padded_vocab, peak_flops, resume_state, sampled_evals,
                      setup_device, train)

# -----------------------------------------------------------------------------
# default config (GPU-ish sizes live in config/; config/small.py is the laptop run)
# I/O
data_dir = 'data/wiki'
out_dir = 'out/base'
annotated = False  # train on annotated_*.bin instead of plain_*.bin
init_from = 'scratch'  # 'scratch' or 'resume' (from out_dir/ckpt.pt)
eval_interval = 250
ckpt_interval = 0  # > 0: ckpt.pt also every this many iterations (an interrupted run loses at most that many)
eval_iters = 20
log_interval = 10
progress = True  # tqdm bar on rank 0
# data
batch_size = 16  # micro-batch size per rank
block_size = 256
gradient_accumulation_steps = 1  # total over all ranks (divided among them)
# model (model.py's docstring has the two recipes)
recipe = 'modern'  # 'modern' (rotary, RMSNorm, ReLU^2, QK-norm) or 'gpt2' (the GPT-2 recipe, for comparison)
tie_embeddings = False  # modern: share the input embedding and the output head
n_layer = 4
n_head = 4
n_embd = 256
dropout = 0.0
# optimizer and schedule
optimizer = 'muon'  # 'muon' (Muon on the hidden matrices, AdamW on the rest) or 'adamw' (AdamW on all)
learning_rate = 1e-3  # AdamW (muon: embedding, head and 1-D parameters only)
matrix_lr = 0.02  # Muon: the 2-D matrices inside the blocks
max_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
lr_schedule = 'wsd'  # 'wsd' (warmup, constant, linear warmdown) or 'cosine'
warmup_iters = 100
warmdown_frac = 0.4  # wsd: the last 40% of the iterations decay linearly ...
final_lr_frac = 0.1  # ... (cosine: decays) to this fraction of the base learning rates
# system
device = 'auto'  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
backend = 'auto'  # DDP backend: 'auto' = nccl on CUDA, gloo on CPU
dtype = 'auto'  # 'auto' = bfloat16 autocast on CUDA and on CPUs that multiply bf16 natively, else float32
compile = False  # torch.compile the model
cpu_peak_flops = 0.0  # your CPU's peak FLOP/s, to print MFU on CPU (GPUs: from a table)
seed = 1337
threads = 0  # torch CPU threads per process (0: torch's default)
from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------


def make_get_batch(data_dir, annotated, batch_size, block_size, accum, device):
    """The training loop's get_batch(split, gen, micro_ids) (windows) on the plain or the annotated
    stream of data_dir: accum micro-batches an iteration over all ranks (one for evaluation), each
    of batch_size random windows of block_size tokens."""
    data = {s: token_stream(data_dir, 'annotated' if annotated else 'plain', s, block_size + 2)
            for s in ('train', 'val')}
    return partial(windows, data=data, batch_size=batch_size, block_size=block_size, accum=accum, device=device)


def windows(split, gen, micro_ids, *, data, batch_size, block_size, accum, device):
    """The micro-batches micro_ids (x, y) of one iteration of split (make_get_batch)."""
    d = data[split]
    n = accum if split == 'train' else 1
    starts = torch.randint(len(d) - block_size - 1, (n, batch_size), generator=gen)
    out = []
    for m in micro_ids:
        ix = starts[m].tolist()
        x = torch.from_numpy(np.stack([d[i:i + block_size] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([d[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64))
        out.append((x.to(device, non_blocking=True), y.to(device, non_blocking=True)))
    return out


def check_resume(ckpt, model_args, out_dir, annotated, optimizer):
    """A resumed run continues the checkpoint's model and optimizer: other shape flags would
    train the old shape while the checkpoint records the new config, so they are refused."""
    if ckpt.get('stage') != 'pretrain':
        raise UserError(f"{out_dir}/ckpt.pt is a '{ckpt.get('stage')}' checkpoint, not a pretraining one")
    old = dict(ckpt['model_args'], annotated=ckpt.get('annotated'), optimizer=ckpt['config'].get('optimizer'))
    new = dict(model_args, annotated=annotated, optimizer=optimizer)
    differ = [k for k in new if k != 'dropout' and old.get(k) != new[k]]
    if differ:
        raise UserError(f"cannot resume {out_dir} with other " + ', '.join(
            f"{k} ({old.get(k)} in the checkpoint, {new[k]} now)" for k in differ))


def main():
    check_model_config(config)
    check_training_config(config, positive=('batch_size', 'max_iters', 'eval_interval', 'eval_iters'),
                          nonneg=('learning_rate', 'matrix_lr', 'warmup_iters', 'ckpt_interval'),
                          fractions=('warmdown_frac', 'final_lr_frac'),
                          choices=dict(optimizer=('muon', 'adamw'), lr_schedule=SCHEDULES,
                                       init_from=('scratch', 'resume')))
    if threads:
        torch.set_num_threads(threads)
    env = setup_device(device, backend)
    meta = load_meta(data_dir)
    if annotated and block_size < meta['max_annotation_tokens'] + 2:
        raise UserError(f"block_size={block_size} is too small for one annotation "
                        f"({meta['max_annotation_tokens']} tokens) plus text")
    torch.manual_seed(seed + env['rank'])
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, recipe=recipe,
                      tie_embeddings=tie_embeddings, vocab_size=padded_vocab(meta), dropout=dropout)
    state = resume_state(None)
    ckpt = None
    if init_from == 'resume' or elastic_restart(out_dir):
        ckpt = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
        check_meta(ckpt, meta, data_dir)
        check_resume(ckpt, model_args, out_dir, annotated, optimizer)
        ckpt['model_args'] = model_args  # the same shape; only dropout may change
        model = model_from_checkpoint(ckpt, env['device'])
        state = resume_state(ckpt)
        if env['master']:
            print(f"resuming {out_dir} from iter {state['iter_num']}")
    else:
        model = GPT(GPTConfig(**model_args)).to(env['device'])
    opt = model.configure_optimizers(optimizer, learning_rate, matrix_lr, weight_decay, (beta1, beta2),
                                     env['device_type'])
    if ckpt is not None:
        opt.load_state_dict(ckpt['optimizer'])
    if env['master']:
        arm = 'annotated' if annotated else 'plain'
        print(f"pretraining ({arm} stream) {model.num_params() / 1e6:.2f}M params on {env['device']}"
              f" x{env['world']}, {max_iters} iters of"
              f" {gradient_accumulation_steps * batch_size * block_size:,} tokens")
    extra = dict(stage='pretrain', model_args=model_args, config=config, annotated=annotated,
                 meta_fingerprint=meta['fingerprint'], data_dir=data_dir)
    get_batch = make_get_batch(data_dir, annotated, batch_size, block_size, gradient_accumulation_steps, env['device'])
    lr_at = partial(lr_multiplier, max_iters=max_iters, warmup_iters=warmup_iters, schedule=lr_schedule,
                    warmdown_frac=warmdown_frac, final_lr_frac=final_lr_frac)
    train(model, opt, get_batch, sampled_evals(get_batch, ('train', 'val'), eval_iters), env, state, extra,
          out_dir=out_dir, max_iters=max_iters, lr_at=lr_at, eval_interval=eval_interval, ckpt_interval=ckpt_interval,
          log_interval=log_interval, accum=gradient_accumulation_steps, grad_clip=grad_clip, seed=seed, dtype=dtype,
          compile=compile, peak_flops=peak_flops(env['device_type'], cpu_peak_flops), progress=progress,
          desc=f"pretrain {'annotated' if annotated else 'plain'}")
    if env['ddp']:
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main_guard(main)
