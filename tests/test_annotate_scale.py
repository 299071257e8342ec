"""annotate.py at corpus scale: the way the passes are laid out (processes, blocks, streaming) never
changes the data, a run killed in the middle leaves nothing that changes the next one, the sample
bounds do what they say, the text annotators' fit/apply seam, and the scaling benchmark runs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from annotators import Keywords, make_annotator
from conftest import ROOT, annotate_args, make_corpus, run, snapshot



def outputs(ddir):
    """({file: bytes}, meta) of a data dir; meta without the run's own name and config."""
    out = {}
    for f in sorted(os.listdir(ddir)):
        with open(os.path.join(ddir, f), 'rb') as fh:
            out[f] = fh.read()
    meta = json.loads(out.pop('meta.json'))
    del meta['name'], meta['config']
    return out, meta


@pytest.fixture(scope='module')
def blocks_data(tiny_data, tmp_path_factory):
    """The fixture's corpus annotated in blocks of 25 documents (the last of 5) by 2 processes: (data dir,
    arguments)."""
    corpus = os.path.join(os.path.dirname(tiny_data), 'corpus.jsonl')
    root = tmp_path_factory.mktemp('blocks')
    args = [*annotate_args(corpus, root), '--num_proc=2', '--map_block_docs=25']
    run('annotate.py', *args, fresh=True)  # (tests compare their runs' data with it)
    return str(root / 'tiny'), args


def test_pass_layout_does_not_change_the_data(tiny_data, blocks_data, tmp_path):
    """The fixture ran in one process and one block; blocks of 25 documents in 2 processes, and a
    streamed corpus (its first 80 rows: all of them), give the same bytes."""
    corpus = os.path.join(os.path.dirname(tiny_data), 'corpus.jsonl')
    run('annotate.py', *annotate_args(corpus, tmp_path / 'stream'), '--streaming=True', '--max_docs=80')
    base = outputs(tiny_data)
    assert outputs(blocks_data[0]) == base
    files, meta = outputs(tmp_path / 'stream' / 'tiny')
    assert files == base[0] and meta.pop('corpus_fingerprint') != base[1].pop('corpus_fingerprint')  # max_docs
    assert meta == base[1]
    assert json.load(open(tmp_path / 'stream' / 'tiny' / 'meta.json'))['config']['streaming'] is True


def files_under(directory):
    """The relative paths of every file under directory, hidden ones and those in subdirs too."""
    return {os.path.relpath(os.path.join(r, f), directory) for r, _, fs in os.walk(directory) for f in fs}


def test_killed_run_then_rerun_gives_the_same_bytes(blocks_data, tmp_path):
    """annotate.py killed (SIGKILL, its worker processes too) in the middle of its passes, once a part
    of its output is written: the data dir still holds the previous run's complete outputs, and a
    rerun writes the same bytes and leaves no temp file behind, in the data dir or under TMPDIR."""
    ddir, args = blocks_data  # passes of several blocks, each by fresh processes: time to kill it in
    done = snapshot(ddir)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'annotate.py'), *args], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline and not files_under(ddir) - set(done):
        time.sleep(0.005)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, "annotate.py ended before a part of its output appeared"
    left = files_under(ddir) - set(done)
    assert left and os.listdir(tmp_path)  # the killed run left temp files: outputs and datasets' tables
    assert {f: b for f, b in snapshot(ddir).items() if f not in left} == done  # the previous outputs
    run('annotate.py', *args, env=env)
    assert snapshot(ddir) == done and os.listdir(os.path.dirname(ddir)) == ['tiny']
    assert os.listdir(tmp_path) == []


def test_sample_bounds(tmp_path):
    """annotator_docs and tokenizer_docs bound what the keywords annotator and the BPE / words.txt
    learn from; a bound that takes a sample is part of the corpus fingerprint, one above the corpus
    changes nothing."""
    corpus = make_corpus(tmp_path / 'c.jsonl', n_docs=40)
    args = [*annotate_args(corpus, tmp_path), '--annotator=keywords', '--sft_key=keyword', '--sft_values=',
            '--heldout_docs=4']
    run('annotate.py', *args, '--name=full')
    run('annotate.py', *args, '--name=above', '--annotator_docs=40', '--tokenizer_docs=1000', fresh=True)
    run('annotate.py', *args, '--name=bounded', '--annotator_docs=3', '--tokenizer_docs=2')
    full, above, bounded = (outputs(tmp_path / n) for n in ('full', 'above', 'bounded'))
    assert above == full
    words = lambda out: set(out[0]['words.txt'].decode().split())
    assert words(bounded) < words(full) and bounded[1]['stats']['words'] == len(words(bounded))
    assert bounded[0]['tokenizer.json'] != full[0]['tokenizer.json']
    assert bounded[1]['corpus_fingerprint'] != full[1]['corpus_fingerprint']
    rows = [json.loads(line) for line in bounded[0]['heldout.jsonl'].decode().splitlines()]
    assert all(r['annotation'].startswith('keyword:') for r in rows)


def test_text_annotator_seam():
    """A text annotator: fitted on a sample of chunk texts, then applied to batches of chunk texts,
    one annotation per chunk, whatever the batches."""
    assert isinstance(make_annotator('keywords', {}), Keywords)
    texts = ['The violin and the cello played the melody.', 'A comet crossed the orbit of the planet.',
             'The violin maker carved maple.', 'Planet and comet: the orbit of the night sky.']
    kw = Keywords({'keywords_per_chunk': 2}).fit(iter(texts[:3]))  # an iterator, as annotate.py hands it
    whole = kw(texts)
    assert whole == kw(texts[:1]) + kw(texts[1:]) and len(whole) == 4
    assert all(1 <= len(z.split()) <= 2 and all(p.startswith('keyword:') for p in z.split()) for z in whole)
    assert 'sky' not in ' '.join(whole)  # not in the fitted sample: never a keyword


def test_bench_annotate_runs(tmp_path):
    r = run('bench_annotate.py', '--sizes_mb=5', f'--corpus_dir={tmp_path}', '--num_proc=1')
    row = r.stdout.strip().splitlines()[-1].split()
    assert row[0] == '5MB', r.stdout
    assert float(row[3]) > 0 and float(row[5]) > 0 and float(row[6]) > 0  # wall s, max RSS, peak anon
