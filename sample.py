"""
Sample from any checkpoint (pretrained base, sft or anchor) into a JSONL file, one row per sample:
{prompt_id, prompt, sample_id, annotation, text, tokens, finished}.

    python sample.py --ckpt_dir=out/sft --num_samples=16
    python sample.py --ckpt_dir=out/anchored --annotation_temperature=1.0 --temperature=0.8
    python sample.py --ckpt_dir=out/anchored --annotation=topic:Arts    # pin fields, sample the rest
    python sample.py --ckpt_dir=out/anchored --no_annotation=True       # ablation: no anchor
    python sample.py --ckpt_dir=out/anchored --annotation_from=out/annotated   # z from the pretrained prior

What is sampled depends on the checkpoint:
- base (pretrained): the prompt is ignored and a document is sampled from <|bos|>; an annotated base
  model starts from <|bos|><|ann|>, samples an annotation, then the text of that chunk;
- sft: the chat format, the response until <|end|>;
- anchor: the chat format; the annotation is sampled first (until <|text|>, at
  annotation_temperature; paper: 1.0), then the response conditioned on it. The annotation goes in
  its own field and is never part of `text` (paper, inference).
All samples of a prompt are generated at once, batched, with the KV cache.
"""
import itertools
import os
import time

import torch
from tqdm import tqdm

from common import UserError, main_guard, read_jsonl, write_jsonl
from formats import (ANN, BOS, END, TEXT, chat_prefix, encode_annotation, load_meta, load_tokenizer,
                     parse_annotation)
from training import autocast, check_meta, load_checkpoint, model_from_checkpoint, setup_device

# -----------------------------------------------------------------------------
ckpt_dir = 'out/sft'
data_dir = ''  # '' = the checkpoint's data dir
prompts = ''  # JSONL of {prompt_id, prompt}; '' = data_dir/eval_prompts.jsonl
out = ''  # '' = ckpt_dir/samples.jsonl
num_samples = 16  # per prompt
batch_size = 64  # most sequences generated at once
max_new_tokens = 200
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
from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------


def checkpoint_mode(ckpt):
    """'base', 'sft' or 'anchor': what the checkpoint was trained to do."""
    if ckpt.get('stage') == 'pretrain':
        return 'base'
    if ckpt.get('stage') == 'sft' and ckpt.get('method') in ('sft', 'anchor'):
        return ckpt['method']
    raise UserError(f"{ckpt_dir}/ckpt.pt is of an unknown type (stage={ckpt.get('stage')!r})")


def plan(mode, annotated, enc, sp, prompt):
    """Prefix ids, stop ids and the id after which the response phase starts, for one prompt."""
    if mode == 'base':  # the prompt is ignored: a document from the start
        if annotated:  # annotation, then the chunk's text, which ends at the next <|ann|> or <|bos|>
            return [sp[BOS], sp[ANN]], [sp[ANN], sp[BOS]], sp[TEXT]
        return [sp[BOS]], [sp[BOS]], None
    if mode == 'sft':
        return chat_prefix(enc, sp, prompt, anchored=False), [sp[END]], None
    prefix = chat_prefix(enc, sp, prompt, anchored=True)
    if no_annotation:
        return prefix + [sp[TEXT]], [sp[END]], None
    return prefix + encode_annotation(enc, annotation)[0], [sp[END]], sp[TEXT]


def split_sample(ids, mode, annotated, sp, enc, stops):
    """Generated ids -> (annotation or None, visible text, finished). Special tokens never reach text."""
    ann_ids = None
    if mode == 'anchor' and no_annotation:
        ann_ids = []
    elif mode == 'anchor' or (mode == 'base' and annotated):
        pinned = encode_annotation(enc, annotation)[0] if mode == 'anchor' else []
        if sp[TEXT] in ids:
            cut = ids.index(sp[TEXT])
            ann_ids, ids = pinned + ids[:cut], ids[cut + 1:]
        else:  # never closed its annotation: no response at all
            ann_ids, ids = pinned + ids, []
    finished = False
    for i, t in enumerate(ids):
        if t in stops:
            ids, finished = ids[:i], True
            break
    special = set(sp.values())
    decode = lambda xs: enc.decode([t for t in xs if t not in special])
    ann = None if ann_ids is None else decode(ann_ids).strip()
    return ann, decode(ids), finished


def load_prior(ckpt, meta, device):
    """The annotated pretrained model whose annotation distribution R(z) anchored SFT means to keep."""
    prior = load_checkpoint(os.path.join(annotation_from, 'ckpt.pt'), device)
    if prior.get('stage') != 'pretrain' or not prior.get('annotated'):
        raise UserError(f"--annotation_from={annotation_from} is not an annotated pretrained checkpoint")
    if prior.get('meta_fingerprint') != ckpt.get('meta_fingerprint'):
        raise UserError(f"--annotation_from={annotation_from} was trained on another tokenizer/format")
    return model_from_checkpoint(prior, device).eval()


def prior_annotations(prior, n, sp, temp, gen, meta, env):
    """n annotations sampled from <|bos|><|ann|> of the prior, each followed by <|text|>, as the
    (n, F) forced ids of model.generate (-1 pads rows with a shorter annotation)."""
    stops = [sp[TEXT], sp[BOS], sp[ANN]]
    idx = torch.tensor([[sp[BOS], sp[ANN]]] * n, dtype=torch.long, device=env['device'])
    with autocast(env['device_type'], dtype):
        z, _ = prior.generate(idx, 2 * meta['max_annotation_tokens'], temperature=temp, top_k=top_k or None,
                              top_p=top_p, stop_ids=stops, generator=gen, vocab_limit=meta['vocab_size'])
    rows = [[t for t in itertools.takewhile(lambda t: t not in stops, row)] + [sp[TEXT]] for row in z.tolist()]
    width = max(map(len, rows))
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long, device=env['device'])


def main():
    env = setup_device(device)
    ckpt = load_checkpoint(os.path.join(ckpt_dir, 'ckpt.pt'), env['device'])
    mode = checkpoint_mode(ckpt)
    ddir = data_dir or ckpt['data_dir']
    meta = load_meta(ddir)
    check_meta(ckpt, meta, ddir)
    annotated = bool(ckpt.get('annotated'))
    if (annotation or no_annotation or annotation_from) and mode != 'anchor':
        raise UserError(f"--annotation/--no_annotation/--annotation_from need an anchor checkpoint; "
                        f"{ckpt_dir} is '{mode}'")
    if sum(map(bool, (annotation, no_annotation, annotation_from))) > 1:
        raise UserError("--annotation, --no_annotation and --annotation_from exclude each other")
    if annotation and not parse_annotation(annotation):
        raise UserError(f"--annotation='{annotation}' has no key:value field")
    prior = load_prior(ckpt, meta, env['device']) if annotation_from else None
    enc, sp = load_tokenizer(ddir, meta), meta['special_tokens']
    rows = read_jsonl(prompts or os.path.join(ddir, 'eval_prompts.jsonl'), 'prompts file')
    if any('prompt' not in r for r in rows):
        raise UserError("every row of the prompts file needs a 'prompt' field")
    model = model_from_checkpoint(ckpt, env['device']).eval()
    block = model.config.block_size
    ann_temp = temperature if annotation_temperature < 0 else annotation_temperature
    out_path = out or os.path.join(ckpt_dir, 'samples.jsonl')
    samples, n_tokens, t0 = [], 0, time.time()
    plans = [plan(mode, annotated, enc, sp, r['prompt']) for r in rows]
    for i, (prefix, _, _) in enumerate(plans):  # every prompt is checked before any work
        if len(prefix) >= block:
            raise UserError(f"prompt {rows[i].get('prompt_id', i)} is {len(prefix)} tokens, "
                            f"it does not fit block_size={block}")
    bar = tqdm(total=len(rows) * num_samples, desc=f'sample {mode}', disable=not progress, dynamic_ncols=True)
    for pid, (r, (prefix, stops, phase_id)) in enumerate(zip(rows, plans)):
        pid = r.get('prompt_id', pid)
        gen = torch.Generator(env['device']).manual_seed(seed + int(pid) if str(pid).isdigit() else seed)
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            idx = torch.tensor([prefix] * n, dtype=torch.long, device=env['device'])
            forced = None if prior is None else prior_annotations(prior, n, sp, ann_temp, gen, meta, env)
            with autocast(env['device_type'], dtype):
                new, _ = model.generate(idx, max_new_tokens, temperature=ann_temp if phase_id else temperature,
                                        top_k=top_k or None, top_p=top_p, stop_ids=stops, phase_id=phase_id,
                                        phase_temperature=temperature, generator=gen, use_cache=use_cache,
                                        vocab_limit=meta['vocab_size'], forced=forced)
            for j, ids in enumerate(new.tolist()):
                ann, text, finished = split_sample(ids, mode, annotated, sp, enc, stops)
                length = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
                n_tokens += length
                samples.append(dict(prompt_id=pid, prompt=r['prompt'], sample_id=start + j, annotation=ann,
                                    text=text, tokens=length, finished=finished))
            bar.update(n)
    bar.close()
    write_jsonl(out_path, samples)
    dt = time.time() - t0
    print(f"{len(samples)} samples ({mode}) in {dt:.1f}s, {n_tokens / dt:,.0f} tok/s -> {out_path}")


if __name__ == '__main__':
    main_guard(main)
