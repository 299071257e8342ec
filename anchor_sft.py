"""
Post-training of a pretrained checkpoint on sft_train.jsonl: standard SFT or annotation-anchored SFT.

    python anchor_sft.py config/small.py --method=sft    --init_dir=out/base      --out_dir=out/sft
    python anchor_sft.py config/small.py --method=anchor --init_dir=out/annotated --out_dir=out/anchored

method='sft':    <|bos|><|user|> x <|assistant|> y <|end|>                     loss on y <|end|>
method='anchor': <|bos|><|user|> x <|assistant|><|ann|> z <|text|> y <|end|>   loss on y <|end|>

Anchored SFT masks the annotation z, so the model learns the response style Q*(y|x,z) from the SFT
data but its annotation distribution R(z|x) stays the broad one of pretraining (paper, method).
In a small fraction of rows (paper: 0.3%) the keys and delimiters of z are supervised too, to keep
the annotation format stable; the values stay masked. Same loop, DDP and checkpoints as pretrain.py.
"""
import math
import os
import random
from collections import Counter

import torch

from common import UserError, main_guard, read_jsonl, write_json
from formats import IGNORE, load_meta, load_tokenizer, parse_annotation, sft_example
from training import (check_meta, load_checkpoint, model_from_checkpoint, resume_state, setup_device,
                      train)

# -----------------------------------------------------------------------------
# default config; keys shared with pretrain.py in one config file keep their meaning
# (device, dtype, seed, ...), keys whose value differs for SFT carry the sft_ prefix
init_dir = 'out/base'  # the pretrained checkpoint (init_dir/ckpt.pt)
out_dir = 'out/sft'
data_dir = ''  # '' = the data dir the pretrained checkpoint was trained on
method = 'sft'  # 'sft' (standard) or 'anchor' (annotation-anchored)
key_fraction = 0.003  # anchored: fraction of rows whose annotation keys are supervised (paper: 0.3%)
sft_topics = ''  # keep only rows whose annotation value of meta's sft_key is one of these ('' = all):
sft_max_rows = 0  # and at most this many (0 = all); together: SFT sets of chosen semantic entropy
init_from = 'pretrained'  # 'pretrained' (from init_dir) or 'resume' (from out_dir)
sft_iters = 300
sft_batch_size = 16
sft_learning_rate = 3e-4
sft_min_lr = 3e-5
sft_warmup_iters = 20
sft_eval_interval = 100
gradient_accumulation_steps = 1
eval_iters = 20
log_interval = 10
progress = True
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
dropout = 0.0
device = 'auto'
backend = 'auto'
dtype = 'auto'
compile = False
cpu_peak_flops = 0.0
seed = 1337
threads = 0
from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------


def load_rows(path, enc, sp, block_size, anchored, rng, what, sft_key):
    """Encoded SFT rows [(ids, targets)] and their sft_key values. Rows of other topics than
    sft_topics and rows longer than block_size are dropped (with a count), then at most
    sft_max_rows are kept."""
    rows = read_jsonl(path, what)
    for i, r in enumerate(rows):
        missing = [k for k in ('prompt', 'response') + (('annotation',) if anchored else ()) if k not in r]
        if missing:
            raise UserError(f"{path}: row {i + 1} has no {', '.join(missing)} field")
    if anchored and not any(r.get('annotation') for r in rows):
        raise UserError(f"method='anchor' needs annotated SFT rows, but {path} has no annotations")
    topic = lambda r: dict(parse_annotation(r.get('annotation'))).get(sft_key)
    allowed = {'_'.join(v.split()) for v in sft_topics.split(',') if v.strip()}
    if allowed:
        rows = [r for r in rows if topic(r) in allowed]
        if not rows:
            raise UserError(f"no row of {path} has {sft_key} in {sorted(allowed)}")
    # a row must fit in its anchored form under both methods, so that the sft and the anchor arms
    # learn from exactly the same responses
    fits = [r for r in rows if len(sft_example(enc, sp, r['prompt'], r['response'], r.get('annotation'))[0])
            <= block_size]
    if not fits:
        raise UserError(f"all {len(rows)} rows of {path} are longer than block_size={block_size}")
    if len(fits) < len(rows):
        print(f"{path}: dropped {len(rows) - len(fits)} of {len(rows)} rows longer than block_size={block_size}")
    if sft_max_rows and len(fits) > sft_max_rows:
        fits = random.Random(seed).sample(fits, sft_max_rows)
    # key rows: the paper's 0.3%, at least one row so the keys are seen at all on a small set
    n_key = max(1, round(len(fits) * key_fraction)) if anchored and key_fraction > 0 else 0
    key_rows = set(rng.sample(range(len(fits)), min(n_key, len(fits))))
    out = [sft_example(enc, sp, r['prompt'], r['response'], r.get('annotation') if anchored else None,
                       key_row=i in key_rows) for i, r in enumerate(fits)]
    return out, [topic(r) for r in fits]


def make_get_batch(rows, device):
    """Random rows, right-padded to the longest in the micro-batch; padding is never a target."""
    def get_batch(split, gen, micro_ids):
        data = rows[split]
        n = gradient_accumulation_steps if split == 'train' else 1
        picks = torch.randint(len(data), (n, sft_batch_size), generator=gen)
        out = []
        for m in micro_ids:
            batch = [data[i] for i in picks[m].tolist()]
            T = max(len(ids) for ids, _ in batch)
            x = torch.zeros(len(batch), T, dtype=torch.long)
            y = torch.full((len(batch), T), IGNORE, dtype=torch.long)
            for b, (ids, targets) in enumerate(batch):
                x[b, :len(ids)] = torch.tensor(ids)
                y[b, :len(targets)] = torch.tensor(targets)
            out.append((x.to(device), y.to(device)))
        return out
    return get_batch


def main():
    if method not in ('sft', 'anchor'):
        raise UserError(f"method must be 'sft' or 'anchor', got '{method}'")
    if threads:
        torch.set_num_threads(threads)
    env = setup_device(device, backend)
    if init_from == 'resume':
        ckpt = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
        if ckpt.get('stage') != 'sft' or ckpt.get('method') != method:
            raise UserError(f"{out_dir}/ckpt.pt is not a method='{method}' SFT checkpoint")
    elif init_from == 'pretrained':
        ckpt = load_checkpoint(os.path.join(init_dir, 'ckpt.pt'))
        if ckpt.get('stage') != 'pretrain':
            raise UserError(f"{init_dir}/ckpt.pt is a '{ckpt.get('stage')}' checkpoint, not a pretrained one")
    else:
        raise UserError(f"init_from must be 'pretrained' or 'resume', got '{init_from}'")
    ddir = data_dir or ckpt['data_dir']
    meta = load_meta(ddir)
    check_meta(ckpt, meta, ddir)
    anchored = method == 'anchor'
    if anchored and not meta.get('annotation_keys'):
        raise UserError(f"method='anchor' needs a data dir with annotations; {ddir} has none")
    enc, sp = load_tokenizer(ddir, meta), meta['special_tokens']
    model_args = dict(ckpt['model_args'], dropout=dropout)
    block_size = model_args['block_size']
    rng = random.Random(seed)
    rows, topics = {}, {}
    for split in ('train', 'val'):
        rows[split], topics[split] = load_rows(os.path.join(ddir, f'sft_{split}.jsonl'), enc, sp, block_size,
                                               anchored, rng, f'SFT {split} set', meta.get('sft_key'))
    torch.manual_seed(seed + env['rank'])
    ckpt['model_args'] = model_args
    model = model_from_checkpoint(ckpt, env['device'])
    optimizer = model.configure_optimizers(weight_decay, sft_learning_rate, (beta1, beta2), env['device_type'])
    state = resume_state(None)
    if init_from == 'resume':
        optimizer.load_state_dict(ckpt['optimizer'])
        state = resume_state(ckpt)
    if env['master']:
        os.makedirs(out_dir, exist_ok=True)
        # the semantic entropy of the post-training data: what SFT's output entropy tracks (paper)
        counts = Counter(topics['train'])
        write_json(os.path.join(out_dir, 'sft_set.json'), dict(
            rows=len(rows['train']), sft_key=meta.get('sft_key'), counts=dict(counts),
            entropy_bits=sum(-c / len(rows['train']) * math.log2(c / len(rows['train'])) for c in counts.values()) + 0.0))
        epochs = sft_iters * sft_batch_size * gradient_accumulation_steps / len(rows['train'])
        print(f"{method} SFT of {init_dir if init_from == 'pretrained' else out_dir}: {len(rows['train'])} rows, "
              f"{sft_iters} iters ({epochs:.1f} epochs) on {env['device']} x{env['world']}")
    cfg = dict(config, batch_size=sft_batch_size, block_size=block_size, max_iters=sft_iters,
               learning_rate=sft_learning_rate, min_lr=sft_min_lr, warmup_iters=sft_warmup_iters,
               lr_decay_iters=sft_iters, eval_interval=sft_eval_interval, desc=f'{method} SFT')
    extra = dict(stage='sft', method=method, model_args=model_args, config=config, data_dir=ddir,
                 meta_fingerprint=meta['fingerprint'], init_dir=init_dir,
                 annotated=ckpt.get('annotated', False))
    train(model, optimizer, make_get_batch(rows, env['device']), cfg, env, state, extra)
    if env['ddp']:
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main_guard(main)
