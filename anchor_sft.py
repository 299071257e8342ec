"""
Post-training of a pretrained checkpoint on sft_train.jsonl: standard SFT or annotation-anchored SFT.

    python anchor_sft.py config/small.py --method=anchored --init_dir=out/annotated --out_dir=out/anchored
    python anchor_sft.py config/small.py --method=sft --anchor_prior=mask --replay_rows=0 --out_dir=out/sft

method='sft':      <|bos|><|user|> x <|assistant|> y <|end|>                     loss on y <|end|>
method='anchored': <|bos|><|user|> x <|assistant|><|ann|> z <|text|> y <|end|>   loss on y <|end|>

The annotation z is masked (in key_fraction of the rows its keys stay in the loss), so SFT learns the
response style but not R(z|x) (paper, method). The defaults are the anchored recipe for a small model
(RECIPE): prior distillation (anchor_prior='distill', prior_rows; for method='sft' its plain
counterpart, the control's) and replay (replay_rows, replay_window); the paper's plain masking and
standard SFT: --anchor_prior=mask --replay_rows=0. Why each is built the way it is: docs/METHOD.md.
Same loop, DDP and checkpoints as pretrain.py; a fixed length by default (sft_patience = 0), or the
lowest SFT val loss kept as best.pt.
"""
import os
import random
from collections import Counter
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from common import UserError, main_guard, read_jsonl, split_list, write_json
from formats import ANN, BOS, IGNORE, TEXT, annotation_values, load_meta, load_tokenizer, sft_example, token_stream
from metrics import entropy_bits
from prior import load_prior, load_teacher, prior_distill_loss, prior_rows
from training import (check_meta, check_training_config, elastic_restart, lm_loss, load_checkpoint, lr_multiplier,
                      model_from_checkpoint, peak_flops, resume_state, setup_device, train)

# -----------------------------------------------------------------------------
# default config; keys shared with pretrain.py in one config file keep their meaning
# (device, dtype, seed, ...), keys whose value differs for SFT carry the sft_ prefix
init_dir = 'out/base'  # the pretrained checkpoint (init_dir/ckpt.pt)
out_dir = 'out/sft'
data_dir = ''  # '' = the data dir the pretrained checkpoint was trained on
method = 'sft'  # 'sft' (standard) or 'anchored' (annotation-anchored)
# The anchored recipe (the keys of RECIPE, below): these defaults are its values, measured on the laptop
# (config/small.py: 1.3M parameters, 3 seeds each, docs/LOG.md), and every config file inherits them; a
# config changes one only on purpose, with `# recipe: <why>` on its line (tests/test_configs.py). They
# apply to every arm that does not switch them off, whatever its method (study.py: sft-distill, the
# strongest control, gets their plain counterparts; sft-replay says --anchor_prior=mask; sft and the
# paper's plain masking, anchored-mask, also --replay_rows=0).
key_fraction = 0.2  # anchored: fraction of rows whose annotation keys are targets, values masked (paper: 0.3%,
#                     on the laptop 1 row of ~400, too few to keep the format; 20%, ~80 rows, holds it, and
#                     the text follows its sampled topic more often than at 10%)
anchor_prior = 'distill'  # 'distill': + prior distillation toward the pretrained model (for method='sft' its
#                           plain counterpart); 'mask': z only masked (anchored: the paper; sft: nothing more)
distill_weight = 1.0  # lambda of the prior-distillation KL (per annotation position, like the LM loss per token)
opening_weight = 0.05  # with distill: weight of the SFT format's opening line on the prior rows (laptop: 0 broke
#                        the format, quality 66%; 1 kept it, 99%, but the text followed its annotation less,
#                        fidelity 45%; 0.05: 79% and 53%)
replay_rows = 4  # windows of the pretraining stream (annotated or plain, by method) in every training
#                  micro-batch: 4 per 16 SFT rows (sft_batch_size), as on the laptop; scale it with the batch
replay_docs = True  # replayed windows start at a document and leave its boundaries to the SFT format (below)
replay_lr_frac = 0.2  # the learning-rate fraction of an arm that replays (< 0: sft_lr_frac): 2x sft_lr_frac, as
#                       on the laptop (an arm that replays learns the format less at SFT's rate; the anchored
#                       arm's format and quality rose from 0.2 to 0.4 at sft_lr_frac 0.2)
sft_topics = ''  # keep only rows whose annotation value of meta's sft_key is one of these ('' = all):
sft_max_rows = 0  # and at most this many (0 = all); together: SFT sets of chosen semantic entropy
init_from = 'pretrained'  # 'pretrained' (from init_dir) or 'resume' (from out_dir)
sft_iters = 300
sft_batch_size = 16
# the optimizer of the pretraining run (muon or adamw), at this fraction of its learning rates
sft_lr_frac = 0.1
sft_warmup_iters = 20
sft_warmdown_frac = 0.5  # then constant, then a linear warmdown over this last fraction ...
sft_final_lr_frac = 0.0  # ... to this fraction
sft_eval_interval = 100  # SFT val loss over the whole SFT val set every this many iterations
sft_patience = 0  # 0: run all sft_iters, keep the last; > 0: keep the best, stop this many evals after it
sft_min_delta = 0.0  # with sft_patience: a val loss counts as lower only if by more than this (nats)
gradient_accumulation_steps = 1
log_interval = 10
progress = True
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
sft_dropout = 0.1  # dropout during SFT, the recipe's (a few hundred rows for several epochs overfit without it;
#                   pretraining has its own)
device = 'auto'
backend = 'auto'
dtype = 'auto'
sft_compile = False  # SFT batches vary in length: compiling recompiles (measured: 2x slower on a CPU)
cpu_peak_flops = 0.0
seed = 1337
threads = 0
from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------
# the recipe's terms: every config file keeps these at the defaults above unless the line that sets one
# says `# recipe: <why>` (tests/test_configs.py)
RECIPE = ('key_fraction', 'anchor_prior', 'distill_weight', 'opening_weight', 'replay_rows', 'replay_docs',
          'replay_lr_frac', 'sft_dropout')


@dataclass(frozen=True)
class RowPick:
    """Which SFT rows train (load_rows): only those whose sft_key value is one of topics ('' = all),
    at most max_rows of them (0 = all, drawn with seed), and the key_fraction of them whose
    annotation keys are targets (method='anchored')."""
    topics: str  # sft_topics
    max_rows: int  # sft_max_rows
    key_fraction: float
    seed: int


@dataclass(frozen=True)
class Replay:
    """Replay (replay_window): windows of the pretraining stream of the model's kind that follow the
    SFT rows of every training micro-batch."""
    stream: np.ndarray
    rows: int  # replay_rows: windows a micro-batch
    docs: bool  # replay_docs: each window starts at a document, its boundaries left to the SFT format


def load_rows(path, enc, special, block_size, anchored, rng, what, sft_key, pick):
    """Encoded SFT rows [(ids, targets)] and their sft_key values. Rows of other topics than
    pick.topics and rows longer than block_size are dropped (with a count), then at most
    pick.max_rows are kept."""
    rows = read_jsonl(path, what)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise UserError(f"{path}: row {i + 1} is not a JSON object")
        missing = [k for k in ('prompt', 'response') + (('annotation',) if anchored else ()) if k not in r]
        if missing:
            raise UserError(f"{path}: row {i + 1} has no {', '.join(missing)} field")
        bad = [k for k in ('prompt', 'response', 'annotation') if k in r and not isinstance(r[k], str)
               and not (k == 'annotation' and r[k] is None)]
        if bad:
            raise UserError(f"{path}: row {i + 1}: field '{bad[0]}' is {type(r[bad[0]]).__name__}, not text")
        if anchored and r['annotation'] is None:
            raise UserError(f"{path}: row {i + 1}: method='anchored' needs an annotation, got null")
    if anchored and not any(r.get('annotation') for r in rows):
        raise UserError(f"method='anchored' needs annotated SFT rows, but {path} has no annotations")
    topic = lambda r: annotation_values(r.get('annotation')).get(sft_key)
    allowed = {'_'.join(v.split()) for v in split_list(pick.topics)}
    if allowed:
        rows = [r for r in rows if topic(r) in allowed]
        if not rows:
            raise UserError(f"no row of {path} has {sft_key} in {sorted(allowed)}")
    # a row must fit in its anchored form under both methods, so that the sft and the anchor arms
    # learn from exactly the same responses
    fits = [r for r in rows if len(sft_example(enc, special, r['prompt'], r['response'], r.get('annotation'))[0])
            <= block_size]
    if not fits:
        raise UserError(f"all {len(rows)} rows of {path} are longer than block_size={block_size}")
    if len(fits) < len(rows):
        print(f"{path}: dropped {len(rows) - len(fits)} of {len(rows)} rows longer than block_size={block_size}")
    if pick.max_rows and len(fits) > pick.max_rows:
        fits = random.Random(pick.seed).sample(fits, pick.max_rows)
    # key rows: at least one row so the keys are seen at all on a small set
    n_key = max(1, round(len(fits) * pick.key_fraction)) if anchored and pick.key_fraction > 0 else 0
    key_rows = set(rng.sample(range(len(fits)), min(n_key, len(fits))))
    out = [sft_example(enc, special, r['prompt'], r['response'], r.get('annotation') if anchored else None,
                       key_row=i in key_rows) for i, r in enumerate(fits)]
    return out, [topic(r) for r in fits]


def replay_window(stream, i, T, special, annotated, docs):
    """Inputs and targets of one replayed window of T tokens from stream position i, every token a
    target as in pretraining. With docs (replay_docs) the window starts at the first document start
    (<|bos|>) within T tokens of i, so its text is seen from its beginning (and with its annotation
    in the annotated stream), and the two transitions where the pretraining format and the SFT format
    disagree are not targets: the text's first token, after <|text|> (annotated) or <|bos|> (plain),
    where an SFT response has its opening line; and the end of a text, -> <|bos|> or a next <|ann|>,
    where a response has <|end|>. Replay then keeps the model writing documents of every topic
    without teaching it to drop the SFT format's first line or to run past <|end|>."""
    if docs:
        j = np.flatnonzero(stream[i:i + T] == special[BOS])
        i = min(i + int(j[0]), len(stream) - T - 1) if len(j) else i  # near the stream's end: as drawn
    w = torch.from_numpy(stream[i:i + T + 1].astype(np.int64))
    x, y = w[:-1], w[1:].clone()
    if docs:
        text_starts = x == special[TEXT] if annotated else x == special[BOS]
        text_ends = (y == special[BOS]) | ((y == special[ANN]) & (x != special[BOS]))
        y[text_starts | text_ends] = IGNORE
    return x, y


def pad_rows(rows, extra=0):
    """Rows (ids, targets) right-padded to the longest into (x, y), with `extra` empty rows after
    them for replayed windows; padding is never a target."""
    T = max(len(ids) for ids, _ in rows)
    x = torch.zeros(len(rows) + extra, T, dtype=torch.long)
    y = torch.full((len(rows) + extra, T), IGNORE, dtype=torch.long)
    for b, (ids, targets) in enumerate(rows):
        x[b, :len(ids)] = torch.tensor(ids)
        y[b, :len(targets)] = torch.tensor(targets)
    return x, y


def make_get_batch(rows, device, special, batch_size, accum, prior=None, replay=None, annotated=False):
    """The training loop's get_batch(split, gen, micro_ids) (sft_batches): accum micro-batches an
    iteration (over all ranks), each of batch_size random rows. With prior (prior distillation: a
    stream, the (start, end) of the spans it distills and the opening line, load_prior) every batch
    also carries the prior_rows of its SFT rows, each with a span drawn from the stream. With replay
    (Replay: a token stream, annotated or plain), replay.rows windows of it, as long as the
    micro-batch, follow the SFT rows in every batch, all their tokens targets (the loss is one mean
    over all targets)."""
    return partial(sft_batches, rows=rows, device=device, special=special, batch_size=batch_size, accum=accum,
                   prior=prior, replay=replay, annotated=annotated)


def sft_batches(split, gen, micro_ids, *, rows, device, special, batch_size, accum, prior, replay, annotated):
    """The micro-batches micro_ids of one training iteration (make_get_batch)."""
    longest = max(len(ids) for ids, _ in rows) + 1  # a window and its shifted targets
    n_rep = replay.rows if replay is not None else 0
    picks = torch.randint(len(rows), (accum, batch_size), generator=gen)
    # drawn for every micro-batch of every rank, like picks: each rank takes its own, in sync
    starts = torch.randint(len(replay.stream) - longest, (accum, n_rep), generator=gen) if n_rep else None
    zs = torch.randint(len(prior[1]), (accum, batch_size), generator=gen) if prior else None
    out = []
    for m in micro_ids:
        batch = [rows[i] for i in picks[m].tolist()]
        x, y = pad_rows(batch, n_rep)
        for r, i in enumerate(starts[m].tolist() if n_rep else ()):
            x[len(batch) + r], y[len(batch) + r] = replay_window(replay.stream, i, x.size(1), special, annotated,
                                                                 replay.docs)
        extra = prior_rows([ids for ids, _ in batch], [prior[0][a:b].tolist() for a, b in prior[1][zs[m]]],
                           special, prior[2], annotated) if prior else ()
        out.append(tuple(t.to(device) for t in (x, y, *extra)))
    return out


def val_batches(rows, device, batch_size):
    """The whole SFT val set in its file order, batch_size rows a batch: every evaluation reads
    every row once, the same rows each time, so two val losses differ only by the model."""
    return [tuple(t.to(device) for t in pad_rows(rows[i:i + batch_size]))
            for i in range(0, len(rows), batch_size)]


def check_resume(ckpt, out_dir, method, anchor_prior, replay_rows, replay_docs):
    """A resumed run continues the same post-training: the same method and remedy."""
    if ckpt.get('stage') != 'sft' or ckpt.get('method') != method:
        raise UserError(f"{out_dir}/ckpt.pt is not a method='{method}' SFT checkpoint")
    if ckpt.get('anchor_prior') != anchor_prior:
        raise UserError(f"{out_dir}/ckpt.pt was trained with anchor_prior={ckpt.get('anchor_prior')}, "
                        f"not {anchor_prior}")
    for key, default, now in (('replay_rows', 0, replay_rows), ('replay_docs', False, replay_docs)):
        if ckpt['config'].get(key, default) != now:
            raise UserError(f"{out_dir}/ckpt.pt was trained with {key}={ckpt['config'].get(key, default)}, "
                            f"not {now}")


def load_start(init_from, init_dir, out_dir):
    """The checkpoint post-training starts from: the pretrained one, or its own to resume (which
    check_resume checks)."""
    if init_from == 'resume':
        ckpt = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
    else:
        ckpt = load_checkpoint(os.path.join(init_dir, 'ckpt.pt'))
        if ckpt.get('stage') != 'pretrain':
            raise UserError(f"{init_dir}/ckpt.pt is a '{ckpt.get('stage')}' checkpoint, not a pretrained one")
    return ckpt


def load_sft_data(ddir, meta, block_size, anchored, replay_rows, pick):
    """The SFT rows of both splits (RowPick), their topics, and with replay_rows the replay stream:
    the pretraining stream of the model's own kind (annotated for method='anchored', plain for
    'sft'), checked before anything is written and longer than a window of the longest row
    (block_size + 1), so a start can be drawn."""
    if anchored and not meta.get('annotation_keys'):
        raise UserError(f"method='anchored' needs a data dir with annotations; {ddir} has none")
    replay = token_stream(ddir, 'annotated' if anchored else 'plain', 'train', block_size + 2) if replay_rows else None
    enc, special = load_tokenizer(ddir, meta), meta['special_tokens']
    rng = random.Random(pick.seed)
    rows, topics = {}, {}
    for split in ('train', 'val'):
        rows[split], topics[split] = load_rows(os.path.join(ddir, f'sft_{split}.jsonl'), enc, special, block_size,
                                               anchored, rng, f'SFT {split} set', meta.get('sft_key'), pick)
    return rows, topics, replay


def write_sft_set(out_dir, meta, rows, topics):
    """sft_set.json: the semantic entropy of the post-training data (its training rows and their
    topics), what SFT's output entropy tracks (paper)."""
    write_json(os.path.join(out_dir, 'sft_set.json'), dict(
        rows=len(rows), sft_key=meta.get('sft_key'), counts=dict(Counter(topics)), entropy_bits=entropy_bits(topics)))


def main():
    check_training_config(config, positive=('sft_iters', 'sft_batch_size', 'sft_eval_interval'),
                          nonneg=('sft_lr_frac', 'sft_warmup_iters', 'distill_weight', 'opening_weight', 'sft_max_rows',
                                  'sft_patience', 'sft_min_delta', 'replay_rows'),
                          fractions=('key_fraction', 'sft_warmdown_frac', 'sft_final_lr_frac'),
                          choices=dict(method=('sft', 'anchored'), anchor_prior=('mask', 'distill'),
                                       init_from=('pretrained', 'resume')), dropout_key='sft_dropout')
    if threads:
        torch.set_num_threads(threads)
    env = setup_device(device, backend)
    start = 'resume' if elastic_restart(out_dir) else init_from  # (torchrun restarted the group)
    ckpt = load_start(start, init_dir, out_dir)
    if start == 'resume':
        check_resume(ckpt, out_dir, method, anchor_prior, replay_rows, replay_docs)
    start_dir = init_dir if start == 'pretrained' else ckpt['init_dir']  # the pretrained model SFT began at
    ddir = data_dir or ckpt['data_dir']
    meta = load_meta(ddir)
    check_meta(ckpt, meta, ddir)
    distill, annotated = anchor_prior == 'distill', method == 'anchored'
    teacher = load_teacher(ckpt, env['device'], meta, annotated, start_dir) if distill else None
    model_args = dict(ckpt['model_args'], dropout=sft_dropout)
    pick = RowPick(sft_topics, sft_max_rows, key_fraction, seed)
    rows, topics, stream = load_sft_data(ddir, meta, model_args['block_size'], annotated, replay_rows, pick)
    replay = Replay(stream, replay_rows, replay_docs) if stream is not None else None
    prior = (load_prior(ddir, meta['special_tokens'], rows['train'], model_args['block_size'], annotated, seed,
                        opening_weight) if distill else None)
    torch.manual_seed(seed + env['rank'])
    ckpt['model_args'] = model_args
    model = model_from_checkpoint(ckpt, env['device'])
    pretrain_config = ckpt['config'] if start == 'pretrained' else ckpt['pretrain_config']
    lr_frac = replay_lr_frac if replay_rows and replay_lr_frac >= 0 else sft_lr_frac
    optimizer = model.configure_optimizers(pretrain_config['optimizer'], lr_frac * pretrain_config['learning_rate'],
                                           lr_frac * pretrain_config['matrix_lr'], weight_decay, (beta1, beta2),
                                           env['device_type'])
    state = resume_state(None)
    if start == 'resume':
        optimizer.load_state_dict(ckpt['optimizer'])
        state = resume_state(ckpt)
    if env['master']:
        write_sft_set(out_dir, meta, rows['train'], topics['train'])
        epochs = sft_iters * sft_batch_size * gradient_accumulation_steps / len(rows['train'])
        print(f"{method} SFT of {init_dir if start == 'pretrained' else out_dir}: {len(rows['train'])} rows, "
              f"{sft_iters} iters ({epochs:.1f} epochs) on {env['device']} x{env['world']}"
              + (f", {replay_rows} replayed documents per batch" if replay_rows else ''))
    extra = dict(stage='sft', method=method, model_args=model_args, config=config, data_dir=ddir,
                 meta_fingerprint=meta['fingerprint'], pretrain_config=pretrain_config, init_dir=start_dir,
                 annotated=ckpt.get('annotated', False), anchor_prior=anchor_prior)
    get_batch = make_get_batch(rows['train'], env['device'], meta['special_tokens'], sft_batch_size,
                               gradient_accumulation_steps, prior, replay, annotated)
    lr_at = partial(lr_multiplier, max_iters=sft_iters, warmup_iters=sft_warmup_iters, schedule='wsd',
                    warmdown_frac=sft_warmdown_frac, final_lr_frac=sft_final_lr_frac)
    loss_fn = (partial(prior_distill_loss, teacher=teacher, weight=distill_weight, opening_weight=opening_weight)
               if distill else partial(lm_loss, targets_only=True))
    train(model, optimizer, get_batch, {'val': lambda: val_batches(rows['val'], env['device'], sft_batch_size)},
          env, state, extra, out_dir=out_dir, max_iters=sft_iters, lr_at=lr_at, eval_interval=sft_eval_interval,
          log_interval=log_interval, accum=gradient_accumulation_steps, grad_clip=grad_clip, seed=seed, dtype=dtype,
          compile=sft_compile, peak_flops=peak_flops(env['device_type'], cpu_peak_flops), progress=progress,
          loss_fn=loss_fn, keep_best=sft_patience > 0, patience=sft_patience, min_delta=sft_min_delta,
          desc=f'{method} SFT')
    if env['ddp']:
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main_guard(main)
