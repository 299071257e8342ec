"""
Post-training of a pretrained checkpoint on sft_train.jsonl: standard SFT or annotation-anchored SFT.

    python anchor_sft.py config/small.py --method=sft    --init_dir=out/base      --out_dir=out/sft
    python anchor_sft.py config/small.py --method=anchored --init_dir=out/annotated --out_dir=out/anchored

method='sft':    <|bos|><|user|> x <|assistant|> y <|end|>                     loss on y <|end|>
method='anchored': <|bos|><|user|> x <|assistant|><|ann|> z <|text|> y <|end|>   loss on y <|end|>

Anchored SFT masks the annotation z, so the model learns the response style Q*(y|x,z) from the SFT
data but its annotation distribution R(z|x) stays the broad one of pretraining (paper, method).
In a small fraction of rows (paper: 0.3%) the keys and delimiters of z are supervised too, to keep
the annotation format stable; the values stay masked. Same loop, DDP and checkpoints as pretrain.py.

Keeping R(z|x) at small scale (docs/METHOD.md "Keeping the prior at small scale"): masking z removes
the SFT gradient that would pull R(z|x) toward the narrow SFT data, but the shared weights of a small
model still drift (the response style leaks into the annotation, the annotation format is forgotten).
anchor_prior='distill' adds prior distillation: lambda * KL(R_pre(. | z_<t) || R_theta(. | x, z_<t)) at the annotation
positions t, where R_pre is the frozen annotated-pretrained model (the SFT's starting point) reading
the same annotation after <|bos|><|ann|>, i.e. exactly the pretraining prior the paper wants kept.
The KL is read on prior rows: each SFT row's prompt followed by an annotation z drawn from the
annotated pretraining stream, i.e. from the prior itself. Summed over positions with z drawn from
R_pre, the per-position KLs are the forward KL of whole annotations, KL(R_pre(z) || R_theta(z | x));
on the SFT rows' own annotations (the narrow slice) they would keep R(entity | topic) only for the
SFT topics, and the text then follows the other topics' annotations less (RESULTS.md: fidelity 47%
against 53-57% on the corpus's annotations). A prior row has no response for its z, but the SFT
format's opening line (the tokens every SFT response starts with) holds whatever z: it is a target
there at opening_weight, or the response format is kept only after the SFT topics' annotations.
The SFT rows' own annotation values are never targets (that would pull R(z|x) to the narrow slice).
replay_rows > 0 adds replay: that many windows of the pretraining stream the model was trained on
(annotated for method='anchored': <|ann|> z <|text|> text; plain for method='sft') join every training
micro-batch, every token a target as in pretraining, so the SFT steps keep practising the documents of
every topic, not only the SFT set's (for the anchored arm: text that follows its annotation, i.e.
fidelity). replay_docs=True replays whole documents and leaves their boundaries (how a text starts,
how it ends) to the SFT format, which says otherwise there (replay_window). Standard SFT with the same
replay is the fair control of the anchored arm: whatever it gets besides the annotation, so does the
control. An arm that replays trains at replay_lr_frac: its steps also carry the replayed documents.

SFT length, the same rule for every method: with sft_patience = 0 (the default) SFT runs sft_iters
and the final checkpoint is the model; with sft_patience > 0 the checkpoint of the lowest SFT val loss
is kept as best.pt (sample.py uses it) and SFT stops after sft_patience evaluations without a val loss
lower by more than sft_min_delta. The val loss is over the whole SFT val set, the same rows every time.
"""
import os
import random
from collections import Counter
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from common import UserError, main_guard, read_jsonl, split_list, write_json
from formats import (ANN, BOS, IGNORE, TEXT, annotation_span, annotation_values, load_meta, load_tokenizer, sft_example,
                     token_stream)
from metrics import entropy_bits
from training import (check_meta, check_training_config, lm_loss, load_annotated_prior, load_checkpoint, lr_multiplier,
                      model_from_checkpoint, peak_flops, resume_state, setup_device, train)

# -----------------------------------------------------------------------------
# default config; keys shared with pretrain.py in one config file keep their meaning
# (device, dtype, seed, ...), keys whose value differs for SFT carry the sft_ prefix
init_dir = 'out/base'  # the pretrained checkpoint (init_dir/ckpt.pt)
out_dir = 'out/sft'
data_dir = ''  # '' = the data dir the pretrained checkpoint was trained on
method = 'sft'  # 'sft' (standard) or 'anchored' (annotation-anchored)
key_fraction = 0.003  # anchored: fraction of rows whose annotation keys are supervised (paper: 0.3%)
anchor_prior = 'mask'  # anchored: 'mask' (the paper: z is only masked) or 'distill' (+ prior distillation)
distill_weight = 1.0  # lambda of the prior-distillation KL (per annotation position, like the LM loss per token)
opening_weight = 0.0  # with distill: weight of the SFT format's opening line on the prior rows (0: not a target)
replay_rows = 0  # windows of the pretraining stream (annotated or plain, by method) added to every training micro-batch
replay_docs = False  # replayed windows start at a document and leave its boundaries to the SFT format (below)
replay_lr_frac = -1.0  # the learning-rate fraction of an arm that replays (< 0: sft_lr_frac)
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
sft_dropout = 0.0  # dropout during SFT (a few hundred rows for several epochs overfit; pretraining has its own)
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


def load_rows(path, enc, special, block_size, anchored, rng, what, sft_key):
    """Encoded SFT rows [(ids, targets)] and their sft_key values. Rows of other topics than
    sft_topics and rows longer than block_size are dropped (with a count), then at most
    sft_max_rows are kept."""
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
    allowed = {'_'.join(v.split()) for v in split_list(sft_topics)}
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
    if sft_max_rows and len(fits) > sft_max_rows:
        fits = random.Random(seed).sample(fits, sft_max_rows)
    # key rows: the paper's 0.3%, at least one row so the keys are seen at all on a small set
    n_key = max(1, round(len(fits) * key_fraction)) if anchored and key_fraction > 0 else 0
    key_rows = set(rng.sample(range(len(fits)), min(n_key, len(fits))))
    out = [sft_example(enc, special, r['prompt'], r['response'], r.get('annotation') if anchored else None,
                       key_row=i in key_rows) for i, r in enumerate(fits)]
    return out, [topic(r) for r in fits]


def sft_opening(rows, special):
    """The tokens every SFT response starts with after <|text|>: the format's opening line (none if
    the responses start differently). os.path.commonprefix compares any sequences, lists of ids too."""
    return os.path.commonprefix([ids[annotation_span(ids, special)[1] + 1:] for ids, _ in rows])


def prior_rows(seqs, zs, special, opening):
    """Prior distillation's rows: each SFT row's prompt up to its <|ann|>, then an annotation z drawn
    from the prior (a list of ids), <|text|> and the format's opening line. Returns the student's
    input and targets (the opening line only), the teacher's input <|bos|><|ann|> z, the student
    positions that predict z and <|text|>, and their mask; right-padded. Teacher position j + 1 and
    student position start + j predict the same token, so teacher logits [:, 1:] line up."""
    heads = [ids[:annotation_span(ids, special)[0] + 1] for ids in seqs]
    L = max(len(h) + len(z) + 1 + len(opening) for h, z in zip(heads, zs))
    P = max(len(z) + 1 for z in zs)
    x = torch.zeros(len(seqs), L, dtype=torch.long)
    y = torch.full((len(seqs), L), IGNORE, dtype=torch.long)
    t_in = torch.zeros(len(seqs), P + 1, dtype=torch.long)
    s_pos = torch.zeros(len(seqs), P, dtype=torch.long)
    mask = torch.zeros(len(seqs), P, dtype=torch.bool)
    for b, (h, z) in enumerate(zip(heads, zs)):
        ids = h + z + [special[TEXT]] + opening
        x[b, :len(ids)] = torch.tensor(ids)
        text = len(h) + len(z)  # the position of <|text|>, which predicts the opening's first token
        y[b, text:text + len(opening)] = torch.tensor(opening, dtype=torch.long)
        t_in[b, :len(z) + 2] = torch.tensor([special[BOS], special[ANN]] + z)
        s_pos[b, :len(z) + 1] = torch.arange(len(h) - 1, text)
        mask[b, :len(z) + 1] = True
    return x, y, t_in, s_pos, mask


def replay_window(stream, i, T, special, annotated):
    """Inputs and targets of one replayed window of T tokens from stream position i, every token a
    target as in pretraining. With replay_docs the window starts at the first document start
    (<|bos|>) within T tokens of i, so its text is seen from its beginning (and with its annotation
    in the annotated stream), and the two transitions where the pretraining format and the SFT format
    disagree are not targets: the text's first token, after <|text|> (annotated) or <|bos|> (plain),
    where an SFT response has its opening line; and the end of a text, -> <|bos|> or a next <|ann|>,
    where a response has <|end|>. Replay then keeps the model writing documents of every topic
    without teaching it to drop the SFT format's first line or to run past <|end|>."""
    if replay_docs:
        j = np.flatnonzero(stream[i:i + T] == special[BOS])
        i = min(i + int(j[0]), len(stream) - T - 1) if len(j) else i  # near the stream's end: as drawn
    w = torch.from_numpy(stream[i:i + T + 1].astype(np.int64))
    x, y = w[:-1], w[1:].clone()
    if replay_docs:
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


def make_get_batch(rows, device, special, prior=None, replay=None, annotated=False):
    """Training batches of random rows. With prior (prior distillation: the annotated stream, the
    (start, end) of its annotations and the opening line) every batch also carries the prior_rows of
    its SFT rows, each with an annotation drawn from the stream. With replay (a token stream,
    annotated or plain), replay_rows windows of it, as long as the micro-batch, follow the SFT rows in
    every batch, all their tokens targets (the loss is one mean over all targets)."""
    longest = max(len(ids) for ids, _ in rows) + 1  # a window and its shifted targets
    n_rep = replay_rows if replay is not None else 0

    def get_batch(split, gen, micro_ids):
        n = gradient_accumulation_steps
        picks = torch.randint(len(rows), (n, sft_batch_size), generator=gen)
        # drawn for every micro-batch of every rank, like picks: each rank takes its own, in sync
        starts = torch.randint(len(replay) - longest, (n, n_rep), generator=gen) if n_rep else None
        zs = torch.randint(len(prior[1]), (n, sft_batch_size), generator=gen) if prior else None
        out = []
        for m in micro_ids:
            batch = [rows[i] for i in picks[m].tolist()]
            x, y = pad_rows(batch, n_rep)
            for r, i in enumerate(starts[m].tolist() if n_rep else ()):
                x[len(batch) + r], y[len(batch) + r] = replay_window(replay, i, x.size(1), special, annotated)
            extra = prior_rows([ids for ids, _ in batch], [prior[0][a:b].tolist() for a, b in prior[1][zs[m]]],
                               special, prior[2]) if prior else ()
            out.append(tuple(t.to(device) for t in (x, y, *extra)))
        return out
    return get_batch


def val_batches(rows, device):
    """The whole SFT val set in its file order, sft_batch_size rows a batch: every evaluation reads
    every row once, the same rows each time, so two val losses differ only by the model."""
    return [tuple(t.to(device) for t in pad_rows(rows[i:i + sft_batch_size]))
            for i in range(0, len(rows), sft_batch_size)]


def distill_kl(student_logits, teacher_logits, mask):
    """Mean over the masked positions of KL(teacher || student) of the next-token distributions
    (a mean, like the SFT loss it is added to, so distill_weight is a per-token weight):
    logits (B, P, V), mask (B, P). Forward KL (teacher-weighted) keeps every annotation the prior
    would write likely under the student, i.e. it keeps R(z) broad. Zero where they agree."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def prior_distill_loss(teacher, weight, opening_weight):
    """loss_fn for the training loop: the SFT loss, plus weight * the prior-distillation KL and
    opening_weight * the loss of the opening line on the prior rows (a second, short forward)."""
    def loss_fn(model, batch):
        x, y, p_x, p_y, t_in, s_pos, mask = batch
        _, loss = model(x, y, targets_only=True)
        logits = model(p_x, all_logits=True)[0]
        with torch.no_grad():
            t_logits = teacher(t_in, all_logits=True)[0][:, 1:]
        loss = loss + weight * distill_kl(logits.gather(1, s_pos[..., None].expand(-1, -1, logits.size(-1))),
                                          t_logits, mask)
        if opening_weight:  # load_prior checked that the SFT responses have an opening line
            loss = loss + opening_weight * F.cross_entropy(logits.flatten(0, 1).float(), p_y.flatten(),
                                                           ignore_index=IGNORE)
        return loss
    return loss_fn


def load_teacher(ckpt, device, meta):
    """The frozen annotated-pretrained model whose annotation prior distillation keeps: the SFT's
    own starting point (for a resumed run, the one it started from)."""
    if not ckpt.get('annotated'):
        raise UserError("anchor_prior='distill' needs an annotated pretrained init_dir (the prior to keep); "
                        "use anchor_prior='mask' on a plain pretrained model")
    teacher_dir = init_dir if init_from == 'pretrained' else ckpt['init_dir']
    return load_annotated_prior(teacher_dir, device, meta['fingerprint'], 'init_dir')


def check_resume(ckpt):
    """A resumed run continues the same post-training: the same method and remedy."""
    if ckpt.get('stage') != 'sft' or ckpt.get('method') != method:
        raise UserError(f"{out_dir}/ckpt.pt is not a method='{method}' SFT checkpoint")
    if ckpt.get('anchor_prior') != (anchor_prior if method == 'anchored' else None):
        raise UserError(f"{out_dir}/ckpt.pt was trained with anchor_prior={ckpt.get('anchor_prior')}, "
                        f"not {anchor_prior}")
    for key, default in (('replay_rows', 0), ('replay_docs', False)):
        if ckpt['config'].get(key, default) != config[key]:
            raise UserError(f"{out_dir}/ckpt.pt was trained with {key}={ckpt['config'].get(key, default)}, "
                            f"not {config[key]}")


def load_start():
    """The checkpoint post-training starts from: the pretrained one, or its own to resume."""
    if init_from == 'resume':
        ckpt = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
        check_resume(ckpt)
    else:
        ckpt = load_checkpoint(os.path.join(init_dir, 'ckpt.pt'))
        if ckpt.get('stage') != 'pretrain':
            raise UserError(f"{init_dir}/ckpt.pt is a '{ckpt.get('stage')}' checkpoint, not a pretrained one")
    return ckpt


def load_sft_data(ddir, meta, block_size):
    """The SFT rows of both splits, their topics, and the replay stream: the pretraining stream of the
    model's own kind (annotated for method='anchored', plain for 'sft'), checked before anything is
    written and longer than a window of the longest row (block_size + 1), so a start can be drawn."""
    anchored = method == 'anchored'
    if anchored and not meta.get('annotation_keys'):
        raise UserError(f"method='anchored' needs a data dir with annotations; {ddir} has none")
    replay = token_stream(ddir, 'annotated' if anchored else 'plain', 'train', block_size + 2) if replay_rows else None
    enc, special = load_tokenizer(ddir, meta), meta['special_tokens']
    rng = random.Random(seed)
    rows, topics = {}, {}
    for split in ('train', 'val'):
        rows[split], topics[split] = load_rows(os.path.join(ddir, f'sft_{split}.jsonl'), enc, special, block_size,
                                               anchored, rng, f'SFT {split} set', meta.get('sft_key'))
    return rows, topics, replay


def load_prior(ddir, special, rows, block_size):
    """What prior distillation draws its prior rows from: the annotated pretraining stream, the
    (start, end) of every annotation z in it (<|ann|> z <|text|>) short enough that a prior row
    fits in block_size after any SFT row's prompt, and the SFT format's opening line."""
    stream = token_stream(ddir, 'annotated', 'train', 1)
    ann, txt = np.flatnonzero(stream == special[ANN]), np.flatnonzero(stream == special[TEXT])
    j = np.searchsorted(txt, ann)  # the first <|text|> after each <|ann|>
    ok = j < len(txt)
    spans = np.stack([ann[ok] + 1, txt[j[ok]]], 1)
    opening = sft_opening(rows, special)
    if opening_weight and not opening:
        raise UserError("opening_weight > 0 needs SFT responses that start alike (the format's opening line); "
                        "these have none in common: set opening_weight=0")
    room = block_size - max(annotation_span(ids, special)[0] + 1 for ids, _ in rows) - 1 - len(opening)
    spans = spans[spans[:, 1] - spans[:, 0] <= room]
    if not len(spans):
        raise UserError(f"{ddir}/annotated_train.bin has no annotation that fits in block_size={block_size} "
                        "after an SFT prompt: nothing to distill the prior on")
    return stream, spans, opening


def write_sft_set(meta, rows, topics, env):
    """sft_set.json: the semantic entropy of the post-training data, what SFT's output entropy tracks
    (paper); and a line on what is about to run."""
    write_json(os.path.join(out_dir, 'sft_set.json'), dict(
        rows=len(rows['train']), sft_key=meta.get('sft_key'), counts=dict(Counter(topics['train'])),
        entropy_bits=entropy_bits(topics['train'])))
    epochs = sft_iters * sft_batch_size * gradient_accumulation_steps / len(rows['train'])
    print(f"{method} SFT of {init_dir if init_from == 'pretrained' else out_dir}: {len(rows['train'])} rows, "
          f"{sft_iters} iters ({epochs:.1f} epochs) on {env['device']} x{env['world']}"
          + (f", {replay_rows} replayed documents per batch" if replay_rows else ''))


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
    ckpt = load_start()
    ddir = data_dir or ckpt['data_dir']
    meta = load_meta(ddir)
    check_meta(ckpt, meta, ddir)
    distill = method == 'anchored' and anchor_prior == 'distill'
    teacher = load_teacher(ckpt, env['device'], meta) if distill else None
    model_args = dict(ckpt['model_args'], dropout=sft_dropout)
    rows, topics, replay = load_sft_data(ddir, meta, model_args['block_size'])
    prior = load_prior(ddir, meta['special_tokens'], rows['train'], model_args['block_size']) if distill else None
    torch.manual_seed(seed + env['rank'])
    ckpt['model_args'] = model_args
    model = model_from_checkpoint(ckpt, env['device'])
    pretrain_config = ckpt['config'] if init_from == 'pretrained' else ckpt['pretrain_config']
    lr_frac = replay_lr_frac if replay_rows and replay_lr_frac >= 0 else sft_lr_frac
    optimizer = model.configure_optimizers(pretrain_config['optimizer'], lr_frac * pretrain_config['learning_rate'],
                                           lr_frac * pretrain_config['matrix_lr'], weight_decay, (beta1, beta2),
                                           env['device_type'])
    state = resume_state(None)
    if init_from == 'resume':
        optimizer.load_state_dict(ckpt['optimizer'])
        state = resume_state(ckpt)
    if env['master']:
        write_sft_set(meta, rows, topics, env)
    extra = dict(stage='sft', method=method, model_args=model_args, config=config, data_dir=ddir,
                 meta_fingerprint=meta['fingerprint'], pretrain_config=pretrain_config,
                 init_dir=ckpt['init_dir'] if init_from == 'resume' else init_dir,
                 annotated=ckpt.get('annotated', False), anchor_prior=anchor_prior if method == 'anchored' else None)
    special = meta['special_tokens']
    get_batch = make_get_batch(rows['train'], env['device'], special, prior, replay, annotated=method == 'anchored')
    lr_at = partial(lr_multiplier, max_iters=sft_iters, warmup_iters=sft_warmup_iters, schedule='wsd',
                    warmdown_frac=sft_warmdown_frac, final_lr_frac=sft_final_lr_frac)
    train(model, optimizer, get_batch, {'val': lambda: val_batches(rows['val'], env['device'])}, env, state, extra,
          out_dir=out_dir, max_iters=sft_iters, lr_at=lr_at, eval_interval=sft_eval_interval,
          log_interval=log_interval, accum=gradient_accumulation_steps, grad_clip=grad_clip, seed=seed, dtype=dtype,
          compile=sft_compile, peak_flops=peak_flops(env['device_type'], cpu_peak_flops), progress=progress,
          loss_fn=prior_distill_loss(teacher, distill_weight, opening_weight) if distill
          else partial(lm_loss, targets_only=True),
          keep_best=sft_patience > 0, patience=sft_patience, min_delta=sft_min_delta, desc=f'{method} SFT')
    if env['ddp']:
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main_guard(main)
