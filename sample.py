"""
Sample from any checkpoint (pretrained base, sft or anchor) into a JSONL file, one row per sample:
{prompt_id, prompt, sample_id, annotation, text, tokens, finished} (tokens: of the text, with its stop).

    python sample.py --ckpt_dir=out/sft --num_samples=16
    python sample.py --ckpt_dir=out/anchored --annotation_temperature=1.0 --temperature=0.8
    python sample.py --ckpt_dir=out/anchored --annotation=topic:Arts    # pin fields, sample the rest
    python sample.py --ckpt_dir=out/anchored --no_annotation=True       # ablation: no anchor
    python sample.py --ckpt_dir=out/anchored --annotation_from=out/annotated   # z from the pretrained prior

What is sampled depends on the checkpoint:
- base (pretrained): the prompt is ignored and a document is sampled from <|bos|>; an annotated base
  model starts from <|bos|><|ann|>, samples an annotation, then the text of that chunk;
- sft: the chat format, the response until <|end|>; a chat response never contains a special
  token other than its stop (chat_bans);
- anchor: the chat format; the annotation is sampled first (until <|text|>, at
  annotation_temperature; paper: 1.0), then the response conditioned on it. The annotation goes in
  its own field and is never part of `text` (paper, inference).
Samples are generated in batches of sample_batch_size rows with the KV cache, the rows of all prompts
together (shorter prompts left-padded). With temperature > 0 the samples depend on the seed and on
sample_batch_size (how the random stream is shared out), not on anything else.
"""
import itertools
import os
import time
from collections import namedtuple

import torch
from tqdm import tqdm

from common import (UserError, check_config, check_device, check_out_file, clean_stale_temps, main_guard, read_jsonl,
                    write_jsonl)
from formats import (ANN, BOS, END, TEXT, chat_prefix, encode_annotation, load_meta, load_tokenizer,
                     parse_annotation)
from training import (DTYPES, autocast, check_meta, load_frozen_pretrained, load_checkpoint, model_from_checkpoint,
                      model_path, setup_device)

# -----------------------------------------------------------------------------
ckpt_dir = 'out/sft'  # the run to sample: its best.pt (SFT keeps the lowest val loss) or else ckpt.pt
data_dir = ''  # '' = the checkpoint's data dir
prompts = ''  # JSONL of {prompt_id, prompt}; '' = data_dir/eval_prompts.jsonl
out = ''  # '' = ckpt_dir/samples.jsonl
num_samples = 16  # per prompt
sample_batch_size = 256  # most sequences generated at once (all prompts' samples share batches)
max_new_tokens = 200  # of the text; an annotation sampled first has its own room on top
temperature = 1.0  # 0 = greedy
annotation_temperature = -1.0  # anchored: temperature of the annotation; < 0 = same as temperature
top_k = 0  # 0 = off
top_p = 1.0  # 1.0 = off
annotation = ''  # anchored: pin these fields, e.g. 'topic:Arts'; the model completes the rest
no_annotation = False  # anchored ablation: force an empty annotation
annotation_from = ''  # anchored: draw the annotation from this annotated *pretrained* checkpoint dir,
#                       i.e. from the prior R(z) that anchored SFT means to keep, then the response
seed = 1337
device = 'auto'
dtype = 'auto'
use_cache = True  # False: re-run the whole context per token (slow; for checks)
progress = True
threads = 0  # torch CPU threads (0: torch's default); the samples do not depend on it
from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------


def checkpoint_mode(ckpt):
    """'base', 'sft' or 'anchored': what the checkpoint was trained to do."""
    if ckpt.get('stage') == 'pretrain':
        return 'base'
    if ckpt.get('stage') == 'sft' and ckpt.get('method') in ('sft', 'anchored'):
        return ckpt['method']
    raise UserError(f"the checkpoint in {ckpt_dir} is of an unknown type (stage={ckpt.get('stage')!r})")


# What the model is given and how its generation is read, per prompt: the prefix ids, the ids that end
# the text, the id that ends an annotation sampled first (None: the text starts at once), and the ids
# never sampled in the text and in the annotation. The text is sampled at `temperature`, an annotation
# before it at annotation_temperature.
Plan = namedtuple('Plan', 'prefix stops annotation_end banned annotation_banned', defaults=((), ()))


def chat_bans(special, stops, annotation_end=None):
    """What a chat response (and an annotation before it) may never contain: every special token
    but the one that ends it. Decoding drops special tokens and keeps the words between them, so a
    response that wrote <|ann|> z <|text|> would show z's words as its own text; with those ids
    masked out of the distribution (not a stop: the response goes on as the model would write it
    without them) what is scored is a response and nothing else."""
    ids = sorted(special.values())
    return ([t for t in ids if t not in stops],
            [t for t in ids if t != annotation_end] if annotation_end is not None else [])


def plan(mode, annotated, enc, special, prompt):
    """The Plan of one prompt for a checkpoint of this mode."""
    if mode == 'base':  # the prompt is ignored: a document from the start
        if annotated:  # annotation, then the chunk's text, which ends at the next <|ann|> or <|bos|>
            return Plan([special[BOS], special[ANN]], [special[ANN], special[BOS]], special[TEXT])
        return Plan([special[BOS]], [special[BOS]], None)
    if mode == 'sft':
        return Plan(chat_prefix(enc, special, prompt, anchored=False), [special[END]], None,
                    *chat_bans(special, [special[END]]))
    prefix = chat_prefix(enc, special, prompt, anchored=True)
    if no_annotation:  # the ablation: an empty annotation, closed at once
        return Plan(prefix + [special[TEXT]], [special[END]], None, *chat_bans(special, [special[END]]))
    return Plan(prefix + encode_annotation(enc, annotation)[0], [special[END]], special[TEXT],
                *chat_bans(special, [special[END]], special[TEXT]))


def split_sample(ids, mode, annotated, special, enc, stops):
    """Generated ids -> (annotation or None, visible text, finished, tokens of the text with its stop).
    The text gets max_new_tokens whether or not an annotation came first: it is finished if it
    stops within them. Special tokens never reach text."""
    ann_ids = None
    if mode == 'anchored' and no_annotation:
        ann_ids = []
    elif mode == 'anchored' or (mode == 'base' and annotated):
        pinned = encode_annotation(enc, annotation)[0] if mode == 'anchored' else []
        if special[TEXT] in ids:
            cut = ids.index(special[TEXT])
            ann_ids, ids = pinned + ids[:cut], ids[cut + 1:]
        else:  # never closed its annotation: no response at all
            ann_ids, ids = pinned + ids, []
    ids, finished, length = ids[:max_new_tokens], False, min(len(ids), max_new_tokens)
    for i, t in enumerate(ids):
        if t in stops:
            ids, finished, length = ids[:i], True, i + 1
            break
    specials = set(special.values())
    decode = lambda xs: enc.decode([t for t in xs if t not in specials])
    ann = None if ann_ids is None else decode(ann_ids).strip()
    return ann, decode(ids), finished, length


def prior_annotations(prior, n, special, temp, gen, meta, env):
    """n annotations sampled from <|bos|><|ann|> of the prior, each followed by <|text|>, as the
    (n, F) forced ids of model.generate (-1 pads rows with a shorter annotation)."""
    stops = [special[TEXT], special[BOS], special[ANN]]
    idx = torch.tensor([[special[BOS], special[ANN]]] * n, dtype=torch.long, device=env['device'])
    with autocast(env['device_type'], dtype, training=False):
        z, _ = prior.generate(idx, 2 * meta['max_annotation_tokens'], temperature=temp, top_k=top_k or None,
                              top_p=top_p, stop_ids=stops, generator=gen, vocab_limit=meta['vocab_size'])
    rows = [[t for t in itertools.takewhile(lambda t: t not in stops, row)] + [special[TEXT]] for row in z.tolist()]
    width = max(map(len, rows))
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long, device=env['device'])


def load_prompts(path):
    """The prompts file: rows {prompt_id, prompt}, prompt a string, prompt ids unique (the row
    number where a row has none)."""
    rows = read_jsonl(path, 'prompts file')
    seen = set()
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get('prompt'), str):
            raise UserError(f"{path}: row {i + 1} needs a 'prompt' field with text")
        pid = r.setdefault('prompt_id', i)
        if isinstance(pid, bool) or not isinstance(pid, (int, str)):
            raise UserError(f"{path}: row {i + 1}: prompt_id must be a number or a string, got {pid!r}")
        if pid in seen:
            raise UserError(f"{path}: prompt_id {pid!r} is used by two prompts")
        seen.add(pid)
    return rows


def check_sample_config():
    """Every config value, before any work."""
    check_config(config, positive=('num_samples', 'sample_batch_size', 'max_new_tokens'),
                 nonneg=('temperature', 'top_k', 'threads'), choices=dict(dtype=DTYPES))
    if not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    check_device(device)
    if sum(map(bool, (annotation, no_annotation, annotation_from))) > 1:
        raise UserError("--annotation, --no_annotation and --annotation_from exclude each other")
    if annotation and not parse_annotation(annotation):
        raise UserError(f"--annotation='{annotation}' has no key:value field")


def load_run(env):
    """The checkpoint to sample, what it was trained to do, its data dir's meta and tokenizer, and
    the prior to draw annotations from (annotation_from)."""
    ckpt = load_checkpoint(model_path(ckpt_dir), env['device'])
    mode = checkpoint_mode(ckpt)
    ddir = data_dir or ckpt['data_dir']
    meta = load_meta(ddir)
    check_meta(ckpt, meta, ddir)
    if (annotation or no_annotation or annotation_from) and mode != 'anchored':
        raise UserError(f"--annotation/--no_annotation/--annotation_from need an anchored checkpoint; "
                        f"{ckpt_dir} is '{mode}'")
    prior = (load_frozen_pretrained(annotation_from, env['device'], meta['fingerprint'], '--annotation_from')
             if annotation_from else None)
    return ckpt, mode, ddir, meta, load_tokenizer(ddir, meta), prior


def text_budget(plans, meta, block):
    """New tokens per row: the text gets max_new_tokens in every mode, and an arm that writes an
    annotation first gets room for it on top (twice the longest annotation of the corpus), so no
    arm's texts are cut sooner; all within block_size after the longest prompt."""
    ann_room = 2 * meta['max_annotation_tokens'] if plans[0].annotation_end is not None else 0
    new_tokens = min(max_new_tokens + ann_room, block - max(len(p.prefix) for p in plans))
    if new_tokens < max_new_tokens + ann_room:
        print(f"max_new_tokens={max_new_tokens} (+{ann_room} for the annotation) does not fit block_size={block} "
              f"after the longest prompt: every sample gets {new_tokens} in all")
    return new_tokens


def generate_batch(model, batch, new_tokens, gen, prior, meta, special, env):
    """Generated ids of a batch of (prompt row, sample id, Plan): prompts of different lengths
    left-padded, the annotation (if any) at annotation_temperature, then the text at temperature."""
    prefixes = [p.prefix for _, _, p in batch]
    width = max(map(len, prefixes))
    idx = torch.tensor([[0] * (width - len(p)) + p for p in prefixes], dtype=torch.long, device=env['device'])
    pad = torch.tensor([width - len(p) for p in prefixes], device=env['device'])
    ann_temp = temperature if annotation_temperature < 0 else annotation_temperature
    forced = None if prior is None else prior_annotations(prior, len(batch), special, ann_temp, gen, meta, env)
    p = batch[0][2]  # the stops and the annotation's end are the same for every prompt of a checkpoint
    with autocast(env['device_type'], dtype, training=False):
        new, _ = model.generate(idx, new_tokens, temperature=temperature, top_k=top_k or None, top_p=top_p,
                                stop_ids=p.stops, annotation_end=p.annotation_end, annotation_temperature=ann_temp,
                                generator=gen, use_cache=use_cache, vocab_limit=meta['vocab_size'], forced=forced,
                                pad=pad if bool(pad.any()) else None, banned=p.banned,
                                annotation_banned=p.annotation_banned)
    return new.tolist()


def main():
    check_sample_config()
    if threads:
        torch.set_num_threads(threads)
    out_path = out or os.path.join(ckpt_dir, 'samples.jsonl')
    env = setup_device(device)
    ckpt, mode, ddir, meta, enc, prior = load_run(env)
    special, annotated = meta['special_tokens'], bool(ckpt.get('annotated'))
    rows = load_prompts(prompts or os.path.join(ddir, 'eval_prompts.jsonl'))
    model = model_from_checkpoint(ckpt, env['device']).eval()
    plans = [plan(mode, annotated, enc, special, r['prompt']) for r in rows]
    for r, p in zip(rows, plans):  # every prompt is checked before any work
        if len(p.prefix) >= model.config.block_size:
            raise UserError(f"prompt {r['prompt_id']} is {len(p.prefix)} tokens, "
                            f"it does not fit block_size={model.config.block_size}")
    check_out_file(out_path, 'out')
    clean_stale_temps(os.path.dirname(os.path.realpath(out_path)), [os.path.basename(os.path.realpath(out_path))])
    # every (prompt, sample) pair is one row; rows of all prompts are generated together,
    # sample_batch_size at a time, from one generator: the samples depend on seed and batch size only
    todo = [(r, j, p) for r, p in zip(rows, plans) for j in range(num_samples)]
    new_tokens = text_budget(plans, meta, model.config.block_size)
    gen = torch.Generator(env['device']).manual_seed(seed)
    samples, n_tokens, t0 = [], 0, time.time()
    for start in tqdm(range(0, len(todo), sample_batch_size), desc=f'sample {mode}', disable=not progress,
                      dynamic_ncols=True):
        batch = todo[start:start + sample_batch_size]
        for (r, j, p), ids in zip(batch, generate_batch(model, batch, new_tokens, gen, prior, meta, special, env)):
            ann, text, finished, length = split_sample(ids, mode, annotated, special, enc, p.stops)
            n_tokens += length
            samples.append(dict(prompt_id=r['prompt_id'], prompt=r['prompt'], sample_id=j, annotation=ann,
                                text=text, tokens=length, finished=finished))
    write_jsonl(out_path, samples)
    dt = time.time() - t0
    print(f"{len(samples)} samples ({mode}) in {dt:.1f}s, {n_tokens / dt:,.0f} tok/s -> {out_path}")


if __name__ == '__main__':
    main_guard(main)
