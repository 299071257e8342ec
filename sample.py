"""
Sample from any checkpoint (pretrained base, sft or anchor) into a JSONL file, one row per sample:
{prompt_id, prompt, sample_id, annotation, text, tokens, finished} (tokens: of the text, with its stop).

    python sample.py --ckpt_dir=out/sft --num_samples=16
    python sample.py --ckpt_dir=out/anchored --annotation_temperature=1.0 --temperature=0.8
    python sample.py --ckpt_dir=out/anchored --annotation=topic:Arts    # pin fields, sample the rest
    python sample.py --ckpt_dir=out/anchored --no_annotation=True       # ablation: no anchor
    python sample.py --ckpt_dir=out/anchored --annotation_from=out/annotated   # z from the pretrained prior

A base model samples a document from <|bos|> (an annotated one: its annotation, then the text); sft
the chat response; anchor the annotation first, then the response, the annotation in its own field
and never in `text`. What is sampled per checkpoint, and why: docs/METHOD.md, "Sampling".
"""
import itertools
import os
import time
from collections import namedtuple
from dataclasses import dataclass

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


def checkpoint_mode(ckpt, ckpt_dir):
    """'base', 'sft' or 'anchored': what the checkpoint was trained to do."""
    if ckpt.get('stage') == 'pretrain':
        return 'base'
    if ckpt.get('stage') == 'sft' and ckpt.get('method') in ('sft', 'anchored'):
        return ckpt['method']
    raise UserError(f"the checkpoint in {ckpt_dir} is of an unknown type (stage={ckpt.get('stage')!r})")


@dataclass(frozen=True)
class Sampling:
    """How model.generate draws: the text at temperature (0 = greedy), an annotation sampled first at
    annotation_temperature (main gives it the text's where the config's is < 0), top_k (0 = off) and
    top_p (1.0 = off) for both; under autocast of dtype, with the KV cache or not (use_cache)."""
    temperature: float
    annotation_temperature: float
    top_k: int
    top_p: float
    dtype: str
    use_cache: bool


# What the model is given and how its generation is read, per prompt: the prefix ids, the ids that end
# the text, the id that ends an annotation sampled first (None: the text starts at once), the ids of
# the annotation that the prefix already holds (the pinned fields; None: the output has no
# annotation), and the ids never sampled in the text and in the annotation.
Plan = namedtuple('Plan', 'prefix stops annotation_end pinned banned annotation_banned', defaults=((), ()))


def chat_bans(special, stops, annotation_end=None):
    """What a chat response (and an annotation before it) may never contain: every special token
    but the one that ends it. Decoding drops special tokens and keeps the words between them, so a
    response that wrote <|ann|> z <|text|> would show z's words as its own text; with those ids
    masked out of the distribution (not a stop: the response goes on as the model would write it
    without them) what is scored is a response and nothing else."""
    ids = sorted(special.values())
    return ([t for t in ids if t not in stops],
            [t for t in ids if t != annotation_end] if annotation_end is not None else [])


def plan(mode, annotated, enc, special, prompt, annotation, no_annotation):
    """The Plan of one prompt for a checkpoint of this mode; an anchored one with the fields of
    annotation pinned, or with an empty annotation (no_annotation)."""
    if mode == 'base':  # the prompt is ignored: a document from the start
        if annotated:  # annotation, then the chunk's text, which ends at the next <|ann|> or <|bos|>
            return Plan([special[BOS], special[ANN]], [special[ANN], special[BOS]], special[TEXT], [])
        return Plan([special[BOS]], [special[BOS]], None, None)
    if mode == 'sft':
        return Plan(chat_prefix(enc, special, prompt, anchored=False), [special[END]], None, None,
                    *chat_bans(special, [special[END]]))
    prefix = chat_prefix(enc, special, prompt, anchored=True)
    if no_annotation:  # the ablation: an empty annotation, closed at once
        return Plan(prefix + [special[TEXT]], [special[END]], None, [], *chat_bans(special, [special[END]]))
    pinned = encode_annotation(enc, annotation)[0]
    return Plan(prefix + pinned, [special[END]], special[TEXT], pinned,
                *chat_bans(special, [special[END]], special[TEXT]))


def split_sample(ids, p, special, enc, max_new_tokens):
    """Generated ids of Plan p -> (annotation or None, visible text, finished, tokens of the text with
    its stop). The text gets max_new_tokens whether or not an annotation came first: it is finished
    if it stops within them. Special tokens never reach text."""
    ann_ids = p.pinned
    if p.annotation_end is not None:  # an annotation was sampled first
        if p.annotation_end in ids:
            cut = ids.index(p.annotation_end)
            ann_ids, ids = p.pinned + ids[:cut], ids[cut + 1:]
        else:  # never closed its annotation: no response at all
            ann_ids, ids = p.pinned + ids, []
    ids, finished, length = ids[:max_new_tokens], False, min(len(ids), max_new_tokens)
    for i, t in enumerate(ids):
        if t in p.stops:
            ids, finished, length = ids[:i], True, i + 1
            break
    specials = set(special.values())
    decode = lambda xs: enc.decode([t for t in xs if t not in specials])
    ann = None if ann_ids is None else decode(ann_ids).strip()
    return ann, decode(ids), finished, length


def prior_annotations(prior, n, special, sampling, gen, meta, env):
    """n annotations sampled from <|bos|><|ann|> of the prior, each followed by <|text|>, as the
    (n, F) forced ids of model.generate (-1 pads rows with a shorter annotation)."""
    stops = [special[TEXT], special[BOS], special[ANN]]
    idx = torch.tensor([[special[BOS], special[ANN]]] * n, dtype=torch.long, device=env['device'])
    with autocast(env['device_type'], sampling.dtype, training=False):
        z, _ = prior.generate(idx, 2 * meta['max_annotation_tokens'], temperature=sampling.annotation_temperature,
                              top_k=sampling.top_k or None, top_p=sampling.top_p, stop_ids=stops, generator=gen,
                              vocab_limit=meta['vocab_size'])
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


def check_sample_config(config):
    """Every config value, before any work."""
    check_config(config, positive=('num_samples', 'sample_batch_size', 'max_new_tokens'),
                 nonneg=('temperature', 'top_k', 'threads'), choices=dict(dtype=DTYPES))
    if not 0 < config['top_p'] <= 1:
        raise UserError(f"top_p must be in (0, 1], got {config['top_p']}")
    check_device(config['device'])
    annotation = config['annotation']
    if sum(map(bool, (annotation, config['no_annotation'], config['annotation_from']))) > 1:
        raise UserError("--annotation, --no_annotation and --annotation_from exclude each other")
    if annotation and not parse_annotation(annotation):
        raise UserError(f"--annotation='{annotation}' has no key:value field")


def load_run(ckpt_dir, data_dir, env, anchored_only, annotation_from):
    """The checkpoint to sample, what it was trained to do, its data dir's meta and tokenizer, and
    the prior to draw annotations from (annotation_from). anchored_only: an option of the anchored
    arm was given (--annotation, --no_annotation or --annotation_from)."""
    ckpt = load_checkpoint(model_path(ckpt_dir), env['device'])
    mode = checkpoint_mode(ckpt, ckpt_dir)
    ddir = data_dir or ckpt['data_dir']
    meta = load_meta(ddir)
    check_meta(ckpt, meta, ddir)
    if anchored_only and mode != 'anchored':
        raise UserError(f"--annotation/--no_annotation/--annotation_from need an anchored checkpoint; "
                        f"{ckpt_dir} is '{mode}'")
    prior = (load_frozen_pretrained(annotation_from, env['device'], meta['fingerprint'], '--annotation_from')
             if annotation_from else None)
    return ckpt, mode, ddir, meta, load_tokenizer(ddir, meta), prior


def text_budget(plans, meta, block, max_new_tokens):
    """New tokens per row: the text gets max_new_tokens in every mode, and an arm that writes an
    annotation first gets room for it on top (twice the longest annotation of the corpus), so no
    arm's texts are cut sooner; all within block_size after the longest prompt."""
    ann_room = 2 * meta['max_annotation_tokens'] if plans[0].annotation_end is not None else 0
    new_tokens = min(max_new_tokens + ann_room, block - max(len(p.prefix) for p in plans))
    if new_tokens < max_new_tokens + ann_room:
        print(f"max_new_tokens={max_new_tokens} (+{ann_room} for the annotation) does not fit block_size={block} "
              f"after the longest prompt: every sample gets {new_tokens} in all")
    return new_tokens


def generate_batch(model, batch, new_tokens, gen, prior, meta, special, env, sampling):
    """Generated ids of a batch of (prompt row, sample id, Plan): prompts of different lengths
    left-padded, the annotation (if any) at sampling.annotation_temperature, then the text at
    sampling.temperature."""
    prefixes = [p.prefix for _, _, p in batch]
    width = max(map(len, prefixes))
    idx = torch.tensor([[0] * (width - len(p)) + p for p in prefixes], dtype=torch.long, device=env['device'])
    pad = torch.tensor([width - len(p) for p in prefixes], device=env['device'])
    forced = None if prior is None else prior_annotations(prior, len(batch), special, sampling, gen, meta, env)
    p = batch[0][2]  # the stops and the annotation's end are the same for every prompt of a checkpoint
    with autocast(env['device_type'], sampling.dtype, training=False):
        new, _ = model.generate(idx, new_tokens, temperature=sampling.temperature, top_k=sampling.top_k or None,
                                top_p=sampling.top_p, stop_ids=p.stops, annotation_end=p.annotation_end,
                                annotation_temperature=sampling.annotation_temperature, generator=gen,
                                use_cache=sampling.use_cache, vocab_limit=meta['vocab_size'], forced=forced,
                                pad=pad if bool(pad.any()) else None, banned=p.banned,
                                annotation_banned=p.annotation_banned)
    return new.tolist()


def main():
    check_sample_config(config)
    if threads:
        torch.set_num_threads(threads)
    out_path = out or os.path.join(ckpt_dir, 'samples.jsonl')
    env = setup_device(device)
    ckpt, mode, ddir, meta, enc, prior = load_run(ckpt_dir, data_dir, env,
                                                  bool(annotation or no_annotation or annotation_from), annotation_from)
    special, annotated = meta['special_tokens'], bool(ckpt.get('annotated'))
    rows = load_prompts(prompts or os.path.join(ddir, 'eval_prompts.jsonl'))
    model = model_from_checkpoint(ckpt, env['device']).eval()
    plans = [plan(mode, annotated, enc, special, r['prompt'], annotation, no_annotation) for r in rows]
    for r, p in zip(rows, plans):  # every prompt is checked before any work
        if len(p.prefix) >= model.config.block_size:
            raise UserError(f"prompt {r['prompt_id']} is {len(p.prefix)} tokens, "
                            f"it does not fit block_size={model.config.block_size}")
    check_out_file(out_path, 'out')
    clean_stale_temps(os.path.dirname(os.path.realpath(out_path)), [os.path.basename(os.path.realpath(out_path))])
    # every (prompt, sample) pair is one row; rows of all prompts are generated together,
    # sample_batch_size at a time, from one generator: the samples depend on seed and batch size only
    todo = [(r, j, p) for r, p in zip(rows, plans) for j in range(num_samples)]
    new_tokens = text_budget(plans, meta, model.config.block_size, max_new_tokens)
    sampling = Sampling(temperature, temperature if annotation_temperature < 0 else annotation_temperature,
                        top_k, top_p, dtype, use_cache)
    gen = torch.Generator(env['device']).manual_seed(seed)
    samples, n_tokens, t0 = [], 0, time.time()
    for start in tqdm(range(0, len(todo), sample_batch_size), desc=f'sample {mode}', disable=not progress,
                      dynamic_ncols=True):
        batch = todo[start:start + sample_batch_size]
        for (r, j, p), ids in zip(batch, generate_batch(model, batch, new_tokens, gen, prior, meta, special, env,
                                                        sampling)):
            ann, text, finished, length = split_sample(ids, p, special, enc, max_new_tokens)
            n_tokens += length
            samples.append(dict(prompt_id=r['prompt_id'], prompt=r['prompt'], sample_id=j, annotation=ann,
                                text=text, tokens=length, finished=finished))
    write_jsonl(out_path, samples)
    dt = time.time() - t0
    print(f"{len(samples)} samples ({mode}) in {dt:.1f}s, {n_tokens / dt:,.0f} tok/s -> {out_path}")


if __name__ == '__main__':
    main_guard(main)
