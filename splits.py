"""
The data dir's sets, read from the annotated documents once annotate.py has made them: the statistics
of their annotations (meta.json's keys, the categorical keys, the documents of every sft_key value),
the SFT slice, the document-level splits (SFT train and validation, the judge's hold-out, pretraining
train and validation; balance_docs evens them out), and the small sets written from them: the SFT
rows in the assistant format, the eval prompts, the judge's references.
"""
import os
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np

from common import UserError, write_jsonl
from corpus import record_batches, split_rows
from formats import parse_annotation

# open-ended requests: the same prompt should get semantically different answers (paper, section 5)
SFT_PROMPTS = [
    "Tell me about something interesting.",
    "Write a short encyclopedia entry.",
    "Teach me something I might not know.",
    "Share a fact that surprised you.",
    "Describe something worth learning about.",
    "Give me a short article on any subject.",
    "What is something fascinating in the world?",
    "Explain a topic of your choice.",
]
EVAL_ONLY_PROMPTS = [  # never seen in SFT: does diversity carry over to new prompts?
    "Write a paragraph about anything you like.",
    "Tell me something I should know about.",
    "Surprise me with a short piece of knowledge.",
    "Pick a subject and describe it briefly.",
    "Inform me about a random thing.",
    "Give me an interesting summary of something.",
]


# -----------------------------------------------------------------------------
# the annotations' statistics: one pass each over the documents (corpus.py: reading tables in flat memory)

def doc_annotations(docs):
    """The annotations of every document, a list per document, a batch in memory."""
    for batch in record_batches(docs, ['annotations']):
        yield from batch.column('annotations').to_pylist()


def reference_stats(docs, max_categories):
    """The reference keys (reference_fields) and those of them that are categorical."""
    values = {}
    for batch in record_batches(docs, ['reference']):
        for ref in batch.column('reference').to_pylist():
            for k, v in parse_annotation(ref):
                seen = values.setdefault(k, set())
                if len(seen) <= max_categories:
                    seen.add(v)
    return list(values), [k for k, vs in values.items() if 2 <= len(vs) <= max_categories]


def annotation_stats(docs, sft_key, max_categories, key_order=None):
    """One pass over the annotations: the annotation keys in meta.json's order (key_order's, the
    fields annotator's config order, else of first appearance in the sorted distinct annotations),
    each key's distinct values up to max_categories + 1 (enough to tell a categorical key), the
    documents of every sft_key value, and the number of chunks."""
    first = {}  # key -> (smallest annotation that holds it, its place there)
    values = {}
    sft_counts = Counter()  # value -> documents; in order of first appearance (most_common's ties)
    chunks = 0
    for zs in doc_annotations(docs):
        chunks += len(zs)
        doc_sft = {}
        for z in dict.fromkeys(zs):
            for place, (k, v) in enumerate(parse_annotation(z)):
                if k not in first or z < first[k][0]:
                    first[k] = (z, place)
                seen = values.setdefault(k, set())
                if len(seen) <= max_categories:
                    seen.add(v)
                if k == sft_key:
                    doc_sft[v] = None
        sft_counts.update(list(doc_sft))  # once per document
    keys = sorted(first, key=first.get)
    if key_order is not None:
        keys = [k for k in key_order if k in first]
    return {'keys': keys, 'categorical': [k for k in keys if 2 <= len(values[k]) <= max_categories],
            'sft_counts': sft_counts, 'chunks': chunks}


# -----------------------------------------------------------------------------
# split: document level, as index lists

def sft_slice(counts, sft_values, sft_key, max_categories):
    """The sft_key values of the SFT slice ([] = any document), from sft_values and the corpus's
    sft_key values with their document counts."""
    norm = lambda v: '_'.join(v.split())  # annotation values have '_' for spaces
    if sft_values.startswith('top:'):  # for a corpus whose label values you do not know by heart
        if not sft_values[4:].isdigit():
            raise UserError(f"sft_values '{sft_values}': expected top:K with a whole number K")
        wanted = [v for v, _ in counts.most_common(int(sft_values[4:]))]
    else:
        wanted = [norm(v) for v in sft_values.split(',') if v.strip()]
    if wanted:
        if not counts:
            raise UserError(f"sft_key '{sft_key}' is not an annotation key of this corpus")
        missing = [v for v in wanted if v not in counts]
        if missing:
            shown = ', '.join(sorted(counts)) if len(counts) <= max_categories else f"{len(counts)} values"
            raise UserError(f"sft_values {missing} not found under '{sft_key}' (available: {shown})")
    return wanted


def docs_with(docs, wanted, sft_key):
    """Indices of the documents with one of the wanted sft_key values in an annotation."""
    wanted = set(wanted)
    return np.fromiter((i for i, zs in enumerate(doc_annotations(docs)) if any(
        k == sft_key and v in wanted for z in dict.fromkeys(zs) for k, v in parse_annotation(z))), dtype=np.int64)


def first_values(docs, sft_key):
    """The first sft_key value of every document's annotations (None where it has none)."""
    return [next((v for z in zs for k, v in parse_annotation(z) if k == sft_key), None)
            for zs in doc_annotations(docs)]


def cap_per_value(ids, values, cap):
    """The ids (in their order) of which at most `cap` share an sft_key value; ids without one stay."""
    seen, keep = Counter(), []
    for i in ids.tolist():
        v = values[i]
        seen[v] += 1
        if v is None or seen[v] <= cap:
            keep.append(i)
    return np.array(keep, dtype=np.int64)


@dataclass(frozen=True)
class SplitSizes:
    """The documents held out of pretraining (SFT train and validation, the judge's), and the
    fraction of the pretraining documents that validates."""
    sft_docs: int
    sft_val_docs: int
    heldout_docs: int
    val_fraction: float


def split_docs(docs, wanted, sft_key, sizes, balance_docs, seed):
    """Document-level splits: SFT (the documents with a wanted sft_key value, [] = any), judge
    hold-out (all topics), pretraining. Index arrays, 8 bytes a document: random.shuffle swaps the
    items of a numpy array as it does a list's, the same permutation for the same length. With
    balance_docs the hold-out and pretraining documents are the first of each sft_key value in the
    shuffled order (a random draw), shuffled again so that the hold-out is drawn from the evened
    corpus; the SFT slice is drawn first, as without it."""
    rng = random.Random(seed)
    n_sft = sizes.sft_docs + sizes.sft_val_docs
    pool = docs_with(docs, wanted, sft_key) if wanted else np.arange(len(docs))
    if len(pool) < n_sft:
        raise UserError(f"only {len(pool)} documents have {sft_key} in {wanted or 'any'}, "
                        f"need sft_docs + sft_val_docs = {n_sft}")
    rng.shuffle(pool)
    sft, sft_val = pool[:sizes.sft_docs], pool[sizes.sft_docs:n_sft]
    free = np.ones(len(docs), dtype=bool)
    free[pool[:n_sft]] = False
    rest = np.flatnonzero(free)  # in order, as the SFT slice leaves them
    rng.shuffle(rest)
    if balance_docs:  # a random draw of at most balance_docs per value, then in random order again
        rest = cap_per_value(rest, first_values(docs, sft_key), balance_docs)
        rng.shuffle(rest)
    heldout, pre = rest[:sizes.heldout_docs], rest[sizes.heldout_docs:]
    n_val = max(1, round(sizes.val_fraction * len(pre)))
    if len(pre) - n_val < 1:
        raise UserError(f"too few documents ({len(docs)}) for sft_docs={sizes.sft_docs}, "
                        f"sft_val_docs={sizes.sft_val_docs}, heldout_docs={sizes.heldout_docs} "
                        f"and a pretraining train/val split")
    return {'train': np.sort(pre[n_val:]), 'val': np.sort(pre[:n_val]), 'sft_train': sft.tolist(),
            'sft_val': sft_val.tolist(), 'heldout': heldout.tolist()}


# -----------------------------------------------------------------------------
# the small outputs: SFT rows, eval prompts, judge references

def first_chunks(docs, rows):
    """{row: (first chunk, its annotation)} of some documents (a small set)."""
    rows = sorted(rows)
    out, it = {}, iter(rows)
    for batch in split_rows(docs, rows, ['chunks', 'annotations', 'reference']):
        for chunks, zs, ref in zip(*(batch.column(c).to_pylist() for c in ('chunks', 'annotations', 'reference'))):
            out[next(it)] = (chunks[0], zs[0], ref)
    return out


def write_sets(docs, splits, data_dir, assistant_opening, seed):
    """SFT rows (assistant style, annotation of the first chunk), eval prompts, judge references."""
    first = first_chunks(docs, splits['sft_train'] + splits['sft_val'] + splits['heldout'])
    rng = random.Random(seed + 1)
    for split in ('sft_train', 'sft_val'):
        write_jsonl(os.path.join(data_dir, f"{split}.jsonl"), [
            {'prompt': rng.choice(SFT_PROMPTS), 'annotation': first[i][1],
             'response': assistant_opening + '\n' + first[i][0]} for i in splits[split]])
    write_jsonl(os.path.join(data_dir, 'eval_prompts.jsonl'), [
        {'prompt_id': j, 'prompt': p, 'in_sft': p in SFT_PROMPTS}
        for j, p in enumerate(SFT_PROMPTS + EVAL_ONLY_PROMPTS)])
    # the judge's documents carry the reference labels too: it never sees the models' annotations
    write_jsonl(os.path.join(data_dir, 'heldout.jsonl'), [
        {'text': first[i][0], 'annotation': ' '.join(filter(None, first[i][1:]))} for i in splits['heldout']])
