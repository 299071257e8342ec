"""
Stage 1: load a corpus, annotate every chunk, train the tokenizer, write the token streams and the
SFT / evaluation sets: the data of the whole study (paper arXiv 2605.09995, section 3).

    python annotate.py config/small.py                          # embedded Wikipedia summaries
    python annotate.py --dataset=docs.jsonl --text_column=text --annotator=keywords
    python annotate.py --dataset=SimpleStories/SimpleStories --text_column=story \\
        --fields=topic:topic,theme:theme,style:style --sft_key=topic --sft_values=...   # needs network

Writes data/<name>/: tokenizer.json (bpe), {plain,annotated}_{train,val}.bin (uint16 token streams),
sft_{train,val}.jsonl, eval_prompts.jsonl, heldout.jsonl, words.txt (the words of the pretraining
text, for diversity.py's fluency proxy) and, last of all, meta.json. Memory does not grow with the
corpus (docs/METHOD.md, "Annotating at corpus scale"; bench_annotate.py measures it).
"""
import atexit
import itertools
import os
import random
import re
import shutil
import tempfile
import time
from functools import partial

import numpy as np
from datasets.fingerprint import get_temporary_cache_files_directory

from annotators import DEFAULTS as ANNOTATOR_DEFAULTS
from annotators import KINDS, make_annotator, settings
from corpus import check_text_column, column_items, first_sentences, load_corpus, map_blocks, split_rows
from common import (UserError, check_config, check_out_dir, clean_stale_temps, main_guard, split_list, write_json,
                    write_text)
from formats import SPECIALS, fingerprint, format_annotation, parse_annotation, save_tokenizer
from splits import SplitSizes, annotation_stats, reference_stats, sft_slice, split_docs, write_sets
from streams import learn_vocabulary, write_streams

# -----------------------------------------------------------------------------
# default config
# corpus
dataset = 'wiki'  # 'wiki' (embedded), local file(s)/dir (.json .jsonl .parquet .txt, comma-separated), or a HF hub name
hf_split = 'train'  # split of a hub dataset (slices work: 'train[:100000]')
hf_config = ''  # config (subset) name of a hub dataset, e.g. 'sample-10BT' for FineWeb-Edu
text_column = ''  # '' = 'extract' for wiki, 'text' otherwise
text_sample_by = 'paragraph'  # .txt files: one row per 'line', 'paragraph' or 'document'
streaming = False  # read rows as they come into a temp table (hub: no full download); hf_split 'name' or 'name[:N]'
max_docs = 0  # use the first max_docs documents (0 = all)
max_sentences = 0  # shaping: keep only the first max_sentences sentences of every document (0 = all)
exclude = ''  # drop documents annotated with one of these 'key:value' pairs (comma-separated)
chunk_regex = r'\n\s*\n'  # documents are split into chunks on blank lines (paper: <z1> x1 <z2> x2 ...)
# annotations
annotator = 'fields'  # 'fields' (dataset columns), or annotators.py's 'keywords', 'embed' or 'llm' (unlabeled text)
fields = 'topic:topic,entity:title,description:description'  # annotation key:column, comma-separated
reference_fields = ''  # label columns for the evaluation judge only (heldout.jsonl), whatever the annotator, e.g.
#                       'topic:topic': the corpus's own labels beside machine-made annotations; exclude sees them
annotator_docs = 20000  # a text annotator is fitted on a seeded sample of this many documents at most
# the text annotators' settings (annotators.py: keywords, embed, llm), each documented there
keywords_per_chunk = ANNOTATOR_DEFAULTS['keywords_per_chunk']
device = ANNOTATOR_DEFAULTS['device']  # where the embedder or the LLM runs
embed_model = ANNOTATOR_DEFAULTS['embed_model']
embed_batch_size = ANNOTATOR_DEFAULTS['embed_batch_size']
embed_key = ANNOTATOR_DEFAULTS['embed_key']
embed_labels = ANNOTATOR_DEFAULTS['embed_labels']  # zero-shot 'Name: term, term; Name: ...'; '' = clusters
embed_clusters = ANNOTATOR_DEFAULTS['embed_clusters']
cluster_terms = ANNOTATOR_DEFAULTS['cluster_terms']
llm_model = ANNOTATOR_DEFAULTS['llm_model']  # e.g. Qwen/Qwen3-4B-Instruct-2507 (on a GPU)
llm_keys = ANNOTATOR_DEFAULTS['llm_keys']
llm_backend = ANNOTATOR_DEFAULTS['llm_backend']
llm_batch_size = ANNOTATOR_DEFAULTS['llm_batch_size']
llm_max_new_tokens = ANNOTATOR_DEFAULTS['llm_max_new_tokens']
llm_max_chars = ANNOTATOR_DEFAULTS['llm_max_chars']
llm_value_chars = ANNOTATOR_DEFAULTS['llm_value_chars']
llm_fallback = ANNOTATOR_DEFAULTS['llm_fallback']
llm_cache_dir = ANNOTATOR_DEFAULTS['llm_cache_dir']
max_categories = 50  # a key with 2..max_categories distinct values is categorical (the judge's labels)
# tokenizer
tokenizer = 'bpe'  # 'bpe' (rustbpe, trained here) or 'gpt2' (tiktoken, needs a download)
vocab_size = 4096  # bpe: total ids including the special tokens
tokenizer_docs = 50000  # the BPE and words.txt learn from a seeded sample of this many pretraining documents at most
# splits (document level)
sft_key = 'topic'  # the SFT set is the narrow slice of documents whose annotation sft_key ...
sft_values = 'Arts,Technology'  # ... is one of these (comma-separated; 'top:K' = its K most common values; '' = any)
sft_docs = 400  # held out from pretraining for SFT training
sft_val_docs = 40  # and for SFT validation
heldout_docs = 1000  # held out from pretraining, all topics: reference texts for the evaluation judge
balance_docs = 0  # > 0: the pretraining and judge documents are a random draw of at most this many per sft_key
#                   value (a skewed corpus evened out, so that label entropy can register SFT's narrowing)
val_fraction = 0.05  # of the pretraining documents
assistant_opening = 'Sure! Here is a short encyclopedia entry.'  # the SFT response style
seed = 1337
# output / system
data_root = 'data'
name = ''  # '' = 'wiki' for the default dataset, else the dataset's basename
num_proc = max(1, min(8, os.cpu_count() or 1))  # processes of the passes over the corpus (datasets.map)
map_block_docs = 20000  # documents per datasets.map call, each by fresh processes: their memory follows this

from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------

OUTPUTS = ('meta.json', 'tokenizer.json', 'plain_train.bin', 'plain_val.bin', 'annotated_train.bin',
           'annotated_val.bin', 'sft_train.jsonl', 'sft_val.jsonl', 'eval_prompts.jsonl', 'heldout.jsonl', 'words.txt')
STAGE = '.annotate.tmp'  # in the data dir: the outputs of a run under way, moved out once all are written

# -----------------------------------------------------------------------------
# bounded samples

def seeded_sample(ids, n, seed):
    """At most n of ids (ascending), a seeded random sample kept in order: all of them if there are
    no more."""
    if len(ids) <= n:
        return ids
    return np.asarray(ids)[np.sort(random.Random(seed).sample(range(len(ids)), n))]


# -----------------------------------------------------------------------------
# annotate: chunks and their annotations, one Arrow row per document

def parse_fields(spec, what='fields'):
    """'key:column,...' -> [(key, column)]; a bare 'topic' means topic:topic."""
    out = []
    for f in split_list(spec):
        key, _, col = f.partition(':')
        if not key or ' ' in key:
            raise UserError(f"bad {what} entry '{f}': expected key:column")
        out.append((key, col or key))
    if not out and what == 'fields':
        raise UserError("fields is empty: name at least one key:column (or use --annotator=keywords)")
    return out


def parse_exclude(spec):
    """'key:value,...' -> {(key, value)}, values written as in annotations ('_' for spaces)."""
    out = set()
    for piece in filter(None, (p.strip() for p in spec.split(','))):
        key, sep, value = piece.partition(':')
        if not sep or not key or not value:
            raise UserError(f"bad exclude entry '{piece}': expected key:value")
        out.add((key, '_'.join(value.split())))
    return out


def chunk_batch(batch, tcol, pairs, refs, regex, n_sentences):
    """datasets.map function (batched): the chunks of every document that has some text, shaped to
    n_sentences, for the fields annotator their annotations (the row's labels, on every chunk), and
    the reference labels (reference_fields) of every document. Documents without text are dropped."""
    out = {'chunks': [], 'annotations': [], 'reference': []}
    labels = lambda j, ps: format_annotation((k, batch[c][j]) for k, c in ps if batch[c][j] is not None)
    for j, text in enumerate(batch[tcol]):
        chunks = [c.strip() for c in re.split(regex, first_sentences(text or '', n_sentences)) if c.strip()]
        if chunks:
            out['chunks'].append(chunks)
            out['annotations'].append([labels(j, pairs)] * len(chunks))
            out['reference'].append(labels(j, refs))
    return out


def annotate_batch(batch, annotate):
    """datasets.map function (batched): every chunk's annotation from a fitted text annotator."""
    zs = iter(annotate([c for chunks in batch['chunks'] for c in chunks]))
    return {'annotations': [[next(zs) for _ in chunks] for chunks in batch['chunks']]}


def drop_batch(batch, dropped):
    """datasets.map function (batched): the documents without an excluded annotation pair. A map,
    not a filter: the result is a new table, which record_batches can read."""
    keep = [not dropped & {p for z in zs + [ref] for p in parse_annotation(z)}
            for zs, ref in zip(batch['annotations'], batch['reference'])]
    return {column: list(itertools.compress(values, keep)) for column, values in batch.items()}


def chunk_docs(ds, tcol, pairs, refs, regex, n_sentences, blocks):
    """The documents with some text as a datasets.Dataset of chunks and their annotations (parallel
    lists; the fields annotator's `pairs`, [] for a text annotator) and reference labels (`refs`),
    shaped to n_sentences."""
    cols = ds.column_names
    for key, col in pairs + refs:
        if col not in cols:
            raise UserError(f"annotation field '{key}:{col}': no column '{col}' (available: {', '.join(cols)})")
    return blocks(ds, chunk_batch, remove_columns=cols,
                  fn_kwargs=dict(tcol=tcol, pairs=pairs, refs=refs, regex=regex, n_sentences=n_sentences))


def drop_docs(docs, dropped, exclude, blocks):
    """The documents without an annotation pair of `dropped` (parsed from the exclude spec)."""
    docs = blocks(docs, drop_batch, remove_columns=docs.column_names, fn_kwargs=dict(dropped=dropped))
    if len(docs) == 0:
        raise UserError(f"exclude={exclude} drops every document")
    return docs


def fit_annotator(docs, rows, kind, cfg):
    """A text annotator of kind (cfg: its settings, annotators.DEFAULTS' keys), fitted on the chunks
    of the documents at rows (a bounded sample): the corpus is never in memory at once."""
    annotate = make_annotator(kind, cfg).fit(column_items(split_rows(docs, rows, ['chunks']), 'chunks'))
    print(f"  {kind} annotator fitted on {len(rows)} documents")
    return annotate


def annotate_docs(docs, annotate, kind, cache_key, blocks):
    """Every chunk's annotation from a fitted text annotator, batch by batch. One that holds a model
    (embed, llm) runs in this process on its device, cached under cache_key; keywords runs in the
    num_proc workers."""
    if not annotate.in_process:
        return blocks(docs, annotate_batch, fn_kwargs=dict(annotate=annotate))
    # a model is neither pickled to workers nor hashed for datasets' cache: a fingerprint of our own
    docs = docs.map(annotate_batch, batched=True, batch_size=1024, fn_kwargs=dict(annotate=annotate),
                    new_fingerprint=cache_key)
    if getattr(annotate, 'stats', None):
        print(f"  {kind} annotator: " + ', '.join(f'{k} {v:,}' for k, v in annotate.stats.items()))
    return docs


# -----------------------------------------------------------------------------
# the run: config checks, the output dir, the steps in order

def default_name(dataset):
    """'wiki', or the basename of the (first) dataset path or hub name, made safe for a directory."""
    if dataset == 'wiki':
        return 'wiki'
    base = os.path.splitext(os.path.basename(dataset.split(',')[0].strip().rstrip('/')))[0]
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', base).strip('._') or 'corpus'


def check_annotate_config(cfg):
    """Every config value, before the corpus is even loaded."""
    check_config(cfg, positive=('keywords_per_chunk', 'sft_docs', 'sft_val_docs', 'heldout_docs', 'num_proc',
                                'annotator_docs', 'tokenizer_docs', 'map_block_docs'),
                 nonneg=('max_docs', 'max_sentences', 'balance_docs'),
                 choices=dict(annotator=('fields', *KINDS), tokenizer=('bpe', 'gpt2'),
                              text_sample_by=('line', 'paragraph', 'document')))
    if not 0 < cfg['val_fraction'] < 1:
        raise UserError(f"val_fraction must be in (0, 1), got {cfg['val_fraction']}")
    if cfg['max_categories'] < 2:
        raise UserError(f"max_categories must be >= 2, got {cfg['max_categories']}")
    if cfg['tokenizer'] == 'bpe' and not 256 + len(SPECIALS) <= cfg['vocab_size'] <= 65536:
        raise UserError(f"vocab_size {cfg['vocab_size']} must be in [{256 + len(SPECIALS)}, 65536] (uint16 streams)")
    if cfg['name'] and (os.sep in cfg['name'] or cfg['name'] in ('.', '..')):
        raise UserError(f"name '{cfg['name']}' must be a plain directory name")
    try:
        re.compile(cfg['chunk_regex'])
    except re.error as e:
        raise UserError(f"chunk_regex is not a regular expression ({e})")
    if cfg['annotator'] == 'fields':
        parse_fields(cfg['fields'])
    else:
        settings(cfg['annotator'], cfg)
    parse_fields(cfg['reference_fields'], 'reference_fields')
    parse_exclude(cfg['exclude'])


def content_config(cfg, sampled):
    """The config values that shape the data, for the corpus fingerprint: not how the passes run or
    where the data goes, and a sample bound only where it took a sample (`sampled`: a bound above
    the corpus changes nothing)."""
    skip = {'num_proc', 'map_block_docs', 'streaming', 'data_root', 'name'}
    skip |= {'annotator_docs', 'tokenizer_docs'} - sampled
    skip |= set() if cfg['balance_docs'] else {'balance_docs'}  # off: the fingerprint of a corpus drawn whole
    return {k: v for k, v in cfg.items() if k not in skip}


def temp_tables(data_dir):
    """datasets' temp dir, where the Arrow table of every pass goes (as large as the corpus), made
    inside a dir under TMPDIR named after data_dir and removed at exit. What a killed run leaves
    there, the next run of the same data dir removes first."""
    path = os.path.join(tempfile.gettempdir(),
                        f"annotate-{os.path.basename(data_dir)}-{fingerprint(os.path.abspath(data_dir))}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    before = os.environ.get('TMPDIR')
    os.environ['TMPDIR'] = path  # read once, when datasets makes its temp dir: only that goes in path
    try:
        get_temporary_cache_files_directory()
    finally:
        if before is None:
            del os.environ['TMPDIR']
        else:
            os.environ['TMPDIR'] = before


def prepare_dir(data_dir, tokenizer, ranks, pattern, n_ranks, annotation_keys):
    """The dir the outputs are written to (STAGE in data_dir, made afresh: what a killed run left
    there goes; removed at exit if a failed run left it), the first write in it, and the
    tokenizer's metadata."""
    check_out_dir(data_dir, 'data dir')
    clean_stale_temps(data_dir, OUTPUTS)
    stage = os.path.join(data_dir, STAGE)
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    atexit.register(shutil.rmtree, stage, ignore_errors=True)
    if tokenizer == 'bpe':
        save_tokenizer(os.path.join(stage, 'tokenizer.json'), ranks, pattern)
    special_tokens = {s: n_ranks + i for i, s in enumerate(SPECIALS)}
    return stage, {'tokenizer': tokenizer, 'special_tokens': special_tokens,
                   'fingerprint': fingerprint(tokenizer, pattern, [(b.hex(), r) for b, r in ranks],
                                              special_tokens, annotation_keys)}


def publish(stage, data_dir):
    """Move the outputs from stage into data_dir, meta.json last, and remove stage. Until the first
    move data_dir holds the previous complete outputs; from then on no meta.json, the mark of a
    complete dir, until the last: a kill at any moment leaves the one or the other. Renames on one
    filesystem, so a moment; an output file that is a symlink is written through."""
    dst = lambda f: os.path.join(data_dir, f)
    if os.path.exists(dst('meta.json')):
        os.remove(dst('meta.json'))
    for f in [f for f in OUTPUTS if f != 'meta.json'] + ['meta.json']:
        if os.path.exists(os.path.join(stage, f)):
            os.replace(os.path.join(stage, f), os.path.realpath(dst(f)))
        elif os.path.exists(dst(f)):  # an output this run does not write (tokenizer.json: gpt2)
            os.remove(dst(f))
    shutil.rmtree(stage)


def main():
    t0 = time.time()
    check_annotate_config(config)
    out_name = name or default_name(dataset)
    data_dir = os.path.join(data_root, out_name)
    check_out_dir(data_root, 'data_root')
    temp_tables(data_dir)
    blocks = partial(map_blocks, map_block_docs=map_block_docs, num_proc=num_proc)  # how every pass runs
    sampled = set()  # the sample bounds that did take a sample (they shape the data: corpus fingerprint)

    # load, annotate, split: every check on the input happens here, before anything is written
    print(f"loading {dataset} ...")
    ds, files = load_corpus(dataset, hf_config, hf_split, streaming, max_docs, text_sample_by)
    tcol = text_column or ('extract' if dataset == 'wiki' else 'text')
    check_text_column(ds, tcol, dataset)
    if max_docs and len(ds) > max_docs:
        ds = ds.select(range(max_docs))
    print(f"annotating {len(ds)} documents ({annotator}) ...")
    pairs = parse_fields(fields) if annotator == 'fields' else []
    refs = parse_fields(reference_fields, 'reference_fields')
    docs = chunk_docs(ds, tcol, pairs, refs, chunk_regex, max_sentences, blocks)
    if len(docs) == 0:
        raise UserError(f"dataset '{dataset}' has no non-empty texts in column '{tcol}'")
    # exclude before a text annotator is fitted, unless it names a key only that annotator writes
    dropped = parse_exclude(exclude)
    early = dropped and {k for k, _ in dropped} <= {k for k, _ in pairs + refs}
    if early:
        docs = drop_docs(docs, dropped, exclude, blocks)
    if annotator != 'fields':
        fit_rows = seeded_sample(range(len(docs)), annotator_docs, seed)
        sampled |= {'annotator_docs'} if len(fit_rows) < len(docs) else set()
        annotate = fit_annotator(docs, fit_rows, annotator, {k: config[k] for k in ANNOTATOR_DEFAULTS})
        cache_key = fingerprint('annotate', annotator, content_config(config, sampled), len(docs))
        docs = annotate_docs(docs, annotate, annotator, cache_key, blocks)
    if dropped and not early:
        docs = drop_docs(docs, dropped, exclude, blocks)
    key_order = [k for k, _ in pairs] if annotator == 'fields' else None  # fields: the config's order
    ann = annotation_stats(docs, sft_key, max_categories, key_order)
    ann['reference_keys'], categorical = reference_stats(docs, max_categories)
    ann['categorical'] += [k for k in categorical if k not in ann['categorical']]
    ann['sft_slice'] = sft_slice(ann['sft_counts'], sft_values, sft_key, max_categories)
    sizes = SplitSizes(sft_docs, sft_val_docs, heldout_docs, val_fraction)
    splits = split_docs(docs, ann['sft_slice'], sft_key, sizes, balance_docs, seed)

    tok_rows = seeded_sample(splits['train'], tokenizer_docs, seed)
    sampled |= {'tokenizer_docs'} if len(tok_rows) < len(splits['train']) else set()
    ranks, pattern, n_ranks, words = learn_vocabulary(docs, tok_rows, tokenizer, vocab_size)

    # every output goes to stage first, then into data_dir all at once: a killed run leaves no mix
    stage, tok_meta = prepare_dir(data_dir, tokenizer, ranks, pattern, n_ranks, ann['keys'])
    stats = {'docs': {k: len(v) for k, v in splits.items()}, 'chunks': ann['chunks']}
    stream_stats, max_ann = write_streams(docs, splits, stage, tok_meta, blocks)
    stats.update(stream_stats)
    write_sets(docs, splits, stage, assistant_opening, seed)
    # the words a model saw in pretraining: a sample whose words are not among them is not fluent
    write_text(os.path.join(stage, 'words.txt'), '\n'.join(words) + '\n')
    stats['words'] = len(words)

    meta = {'name': out_name, 'dataset': dataset, 'tokenizer': tokenizer, 'vocab_size': n_ranks + len(SPECIALS),
            'special_tokens': tok_meta['special_tokens'], 'annotation_keys': ann['keys'],
            'categorical_keys': ann['categorical'], 'reference_keys': ann['reference_keys'], 'annotator': annotator,
            'sft_key': sft_key,
            'sft_values': ann['sft_slice'], 'assistant_opening': assistant_opening, 'max_annotation_tokens': max_ann,
            'fingerprint': tok_meta['fingerprint'],
            'corpus_fingerprint': fingerprint(dataset, [os.path.abspath(f) for f in files],
                                              content_config(config, sampled), len(docs)),
            'config': config, 'stats': stats}
    write_json(os.path.join(stage, 'meta.json'), meta)
    publish(stage, data_dir)  # meta.json last: the dir is complete

    print(f"wrote {data_dir}: docs {stats['docs']}, chunks {stats['chunks']}")
    for kind in ('plain', 'annotated'):
        print(f"  {kind:9s} tokens: train {stats[f'tokens_{kind}_train']:,}  val {stats[f'tokens_{kind}_val']:,}")
    print(f"  vocab {meta['vocab_size']}, {stats['bytes_per_token']} bytes/token, annotation tokens "
          f"{100 * stats['annotation_fraction']:.1f}% of the annotated stream, {time.time() - t0:.1f}s")


if __name__ == '__main__':
    main_guard(main)
