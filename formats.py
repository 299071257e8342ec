"""
The data format, in one place: special tokens, the tokenizer file, annotations, and the token
sequences of every stage with their loss masks:

    pretrain, plain:      <|bos|> x
    pretrain, annotated:  <|bos|> <|ann|> z1 <|text|> x1 <|ann|> z2 <|text|> x2 ...
    sft, standard:        <|bos|> <|user|> x <|assistant|> y <|end|>                 loss on y <|end|>
    sft, anchored:        <|bos|> <|user|> x <|assistant|> <|ann|> z <|text|> y <|end|>
                          loss on y <|end|>; in key rows also on the keys and delimiters of z
"""
import base64
import hashlib
import json
import os
import re

import numpy as np
import tiktoken

from common import UserError, read_json, write_json

BOS, ANN, TEXT, USER, ASSISTANT, END = SPECIALS = (
    '<|bos|>', '<|ann|>', '<|text|>', '<|user|>', '<|assistant|>', '<|end|>')
IGNORE = -1  # target value that the loss skips (model.IGNORE_INDEX)
WORD = re.compile(r'[^\W\d_]+')  # a word of a text: a run of letters (words.txt, the fluency proxy)
# GPT-4's split pattern (tiktoken cl100k_base), the pre-tokenization of our BPE
DEFAULT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""  # noqa: E501


# -----------------------------------------------------------------------------
# annotations: `key:value key:value`, spaces inside a value replaced by '_' (paper, section 3)

def format_annotation(pairs):
    """[(key, value), ...] -> 'key:value key:value'; empty values are dropped."""
    out = []
    for k, v in pairs:
        v = '_'.join(str(v).split())
        if v:
            out.append(f"{k}:{v}")
    return ' '.join(out)


def parse_annotation(z):
    """'key:value key:value' -> [(key, value), ...]; a piece without ':' is skipped."""
    pairs = []
    for piece in (z or '').split():
        k, sep, v = piece.partition(':')
        if sep and k:
            pairs.append((k, v))
    return pairs


# -----------------------------------------------------------------------------
# tokenizer: a small BPE trained with rustbpe, used through tiktoken, specials appended at the end

def save_tokenizer(path, mergeable_ranks, pattern):
    ranks = {base64.b64encode(b).decode('ascii'): r for b, r in mergeable_ranks}
    write_json(path, {'pattern': pattern, 'mergeable_ranks': ranks})


def load_tokenizer(data_dir, meta):
    """The tiktoken Encoding of a data dir, with the special tokens of meta.json."""
    specials = meta['special_tokens']
    if meta['tokenizer'] == 'gpt2':
        base = tiktoken.get_encoding('gpt2')
        return tiktoken.Encoding('gpt2-anchor', pat_str=base._pat_str,
                                 mergeable_ranks=base._mergeable_ranks, special_tokens=specials)
    spec = read_json(os.path.join(data_dir, 'tokenizer.json'), 'tokenizer file')
    ranks = {base64.b64decode(b): r for b, r in spec['mergeable_ranks'].items()}
    return tiktoken.Encoding('bpe-anchor', pat_str=spec['pattern'], mergeable_ranks=ranks,
                             special_tokens=specials)


def encode(enc, text):
    """Ordinary text -> ids; special-token strings inside text are encoded as plain text."""
    return enc.encode_ordinary(text)


def token_stream(data_dir, kind, split, min_tokens):
    """The uint16 token stream {kind}_{split}.bin of annotate.py (kind: plain or annotated), memory
    mapped; at least min_tokens long (a window and its shifted targets)."""
    path = os.path.join(data_dir, f'{kind}_{split}.bin')
    if not os.path.isfile(path):
        raise UserError(f"token stream not found: {path} (run annotate.py)")
    data = np.memmap(path, dtype=np.uint16, mode='r')
    if len(data) < min_tokens:
        raise UserError(f"{path} has {len(data)} tokens, fewer than the {min_tokens} a window needs")
    return data


def load_meta(data_dir):
    if not os.path.isdir(data_dir):
        raise UserError(f"data dir not found: {data_dir} (run annotate.py first)")
    return read_json(os.path.join(data_dir, 'meta.json'), 'meta.json of the data dir')


def fingerprint(*parts):
    """A short stable hash of JSON-able parts (tokenizer, corpus, config)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# -----------------------------------------------------------------------------
# sequences

def annotation_pieces(z):
    """The strings an annotation is encoded from, each with True for a value: ' key:' and 'value'
    apart, so that the key/value boundary is a token boundary (the key rows of anchored SFT mask
    exactly the values). annotate.py trains the tokenizer on these same pieces, so that keys and
    frequent label values become whole tokens."""
    out = []
    for i, (k, v) in enumerate(parse_annotation(z)):
        out += [((' ' if i else '') + k + ':', False), (v, True)]
    return out


def encode_annotation(enc, z):
    """Token ids of an annotation and a parallel list: True where the token belongs to a value.
    Every stage tokenizes z this way."""
    ids, is_value = [], []
    for piece, value in annotation_pieces(z):
        t = encode(enc, piece)
        ids += t
        is_value += [value] * len(t)
    return ids, is_value


def pretrain_doc(enc, sp, chunks, annotations=None):
    """One document of the pretraining stream: plain, or with each chunk preceded by its annotation."""
    if annotations is None:
        return [sp[BOS]] + encode(enc, '\n\n'.join(chunks))
    ids = [sp[BOS]]
    for i, (x, z) in enumerate(zip(chunks, annotations)):
        ids += [sp[ANN]] + encode_annotation(enc, z)[0] + [sp[TEXT]] + encode(enc, ('\n\n' if i else '') + x)
    return ids


def chat_prefix(enc, sp, prompt, anchored):
    """What the model is given at inference: <|bos|><|user|> x <|assistant|> [<|ann|>]."""
    ids = [sp[BOS], sp[USER]] + encode(enc, prompt) + [sp[ASSISTANT]]
    return ids + [sp[ANN]] if anchored else ids


def sft_example(enc, sp, prompt, response, annotation=None, key_row=False):
    """Token ids and targets of one SFT row (targets[i] is the label of position i, i.e. ids[i+1],
    or IGNORE where the loss must not look).

    standard (annotation None): loss on y <|end|>.
    anchored: the annotation z sits between <|assistant|> and y and is masked, so SFT never pulls the
    annotation distribution R(z|x) toward its own narrow data (paper, method). In key rows (a small
    fraction, paper: 0.3%) the keys and delimiters of z are in the loss, only values are masked,
    which keeps the annotation format stable."""
    y = encode(enc, response) + [sp[END]]
    prefix = chat_prefix(enc, sp, prompt, anchored=annotation is not None)
    labels = [False] * len(prefix)  # which tokens are supervised (as targets)
    if annotation is not None:
        z, is_value = encode_annotation(enc, annotation)
        prefix += z + [sp[TEXT]]
        labels[-1] = key_row  # <|ann|> is a delimiter of z
        labels += [key_row and not v for v in is_value] + [key_row]
    ids = prefix + y
    labels += [True] * len(y)
    targets = [t if sup else IGNORE for t, sup in zip(ids[1:], labels[1:])] + [IGNORE]
    return ids, targets


def annotation_span(ids, sp):
    """(start, end) of the annotation in an anchored SFT sequence: ids[start] is <|ann|>, ids[end]
    is <|text|>, z lies between. Positions start..end-1 are where the model predicts z and its
    closing <|text|>, i.e. where it draws from its annotation distribution R(z|x)."""
    start = ids.index(sp[ANN])
    return start, ids.index(sp[TEXT], start)
