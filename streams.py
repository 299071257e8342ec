"""
The tokenizer and the token streams that annotate.py writes: a BPE learned from a sample of the
pretraining documents (rustbpe, used through tiktoken) or GPT-2's, and every document as a plain and
an annotated uint16 sequence (nanoGPT's .bin format), written batch by batch so that memory does not
grow with the corpus. The sequences themselves are formats.py's pretrain_doc.
"""
import itertools
import os
from collections import Counter

import datasets
import numpy as np

from common import UserError, atomic_write
from corpus import column_items, record_batches, split_rows
from formats import (SPECIALS, DEFAULT_PATTERN, WORD, annotation_pieces, encode_annotation, load_tokenizer,
                     pretrain_doc)


def train_tokenizer(kind, vocab_size, texts):
    """(mergeable ranks, pattern, first free id for the specials) of tokenizer `kind`: 'gpt2', or
    'bpe' learned from texts with vocab_size ids in all."""
    if kind == 'gpt2':
        import tiktoken
        try:
            base = tiktoken.get_encoding('gpt2')
        except Exception as e:
            raise UserError(f"could not load tiktoken's gpt2 (needs a download): {type(e).__name__}")
        # specials from 50257: <|endoftext|> (50256) stays unused, so GPT-2's own ids keep their meaning
        return sorted(base._mergeable_ranks.items(), key=lambda kv: kv[1]), base._pat_str, base.n_vocab
    import rustbpe
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size - len(SPECIALS), pattern=DEFAULT_PATTERN)
    ranks = sorted(((bytes(b), r) for b, r in tok.get_mergeable_ranks()), key=lambda kv: kv[1])
    return ranks, tok.get_pattern(), ranks[-1][1] + 1  # on a tiny corpus rustbpe may learn fewer merges


def learn_vocabulary(docs, sample, kind, vocab_size):
    """The tokenizer and the pretraining words (words.txt), from the documents at rows `sample`.
    The BPE reads their texts and then the annotations it will have to write, in the pieces that
    formats.encode_annotation encodes them in."""
    print(f"tokenizer ({kind}) on {len(sample)} documents ...")
    texts = lambda: column_items(split_rows(docs, sample, ['chunks']), 'chunks')
    ranks, pattern, n_ranks = train_tokenizer(kind, vocab_size, itertools.chain(texts(), (
        piece for z in column_items(split_rows(docs, sample, ['annotations']), 'annotations')
        for piece, _ in annotation_pieces(z))))
    words = sorted({w.lower() for c in texts() for w in WORD.findall(c)})
    return ranks, pattern, n_ranks, words


_encodings = {}  # per worker process: tiktoken Encodings are built once, not pickled


def tokenize_batch(batch, data_dir, tok_meta):
    """datasets.map function (batched): the plain and the annotated pretraining sequence of every
    document, its annotation tokens (all, and the longest annotation) and its text's UTF-8 bytes."""
    key = (data_dir, tok_meta['fingerprint'])
    if key not in _encodings:
        _encodings[key] = load_tokenizer(data_dir, tok_meta)
    enc, special = _encodings[key], tok_meta['special_tokens']
    out = {'plain': [], 'annotated': [], 'n_ann': [], 'max_ann': [], 'n_bytes': []}
    for chunks, zs in zip(batch['chunks'], batch['annotations']):
        n_ann = [len(encode_annotation(enc, z)[0]) + 2 for z in zs]  # + <|ann|> <|text|>
        out['plain'].append(np.array(pretrain_doc(enc, special, chunks), dtype=np.uint16))
        out['annotated'].append(np.array(pretrain_doc(enc, special, chunks, zs), dtype=np.uint16))
        out['n_ann'].append(sum(n_ann))
        out['max_ann'].append(max(n_ann))
        out['n_bytes'].append(len('\n\n'.join(chunks).encode()))
    return out


def write_stream(path, batches, column):
    """Concatenated uint16 token ids, written batch by batch to a temp file, then renamed; the count."""
    n = 0
    def write(f):
        nonlocal n
        for batch in batches:
            ids = batch.column(column).flatten().to_numpy()
            ids.tofile(f)
            n += len(ids)
    atomic_write(path, write, mode='wb')
    return n


def write_streams(docs, splits, data_dir, tok_meta, blocks):
    """The four token streams, tokenized in parallel by `blocks` (annotate.py's batched map); uint16
    like nanoGPT. Their statistics and the longest annotation in tokens (of every split)."""
    datasets.enable_progress_bars()  # every input check has passed: a bar can no longer bury an error
    features = datasets.Features({'plain': datasets.List(datasets.Value('uint16')),
                                  'annotated': datasets.List(datasets.Value('uint16')),
                                  'n_ann': datasets.Value('int64'), 'max_ann': datasets.Value('int64'),
                                  'n_bytes': datasets.Value('int64')})
    tok = blocks(docs, tokenize_batch, fn_kwargs={'data_dir': data_dir, 'tok_meta': tok_meta},
                 remove_columns=docs.column_names, features=features, desc="tokenizing")
    stats, total = {}, Counter()
    for split in ('train', 'val'):
        for kind in ('plain', 'annotated'):
            stats[f"tokens_{kind}_{split}"] = write_stream(os.path.join(data_dir, f"{kind}_{split}.bin"),
                                                           split_rows(tok, splits[split], [kind]), kind)
        for batch in split_rows(tok, splits[split], ['n_ann', 'n_bytes']):
            total['n_ann'] += int(batch.column('n_ann').to_numpy().sum())
            total[f'n_bytes_{split}'] += int(batch.column('n_bytes').to_numpy().sum())
    stats['bytes_per_token'] = round(total['n_bytes_val'] / (stats['tokens_plain_val'] - len(splits['val'])), 3)
    stats['annotation_fraction'] = round(
        total['n_ann'] / (stats['tokens_annotated_train'] + stats['tokens_annotated_val']), 4)
    return stats, max(int(b.column('max_ann').to_numpy().max(initial=0)) for b in record_batches(tok, ['max_ann']))
