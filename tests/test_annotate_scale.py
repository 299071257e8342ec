"""annotate.py at corpus scale: the way the passes are laid out (processes, blocks, streaming) never
changes the data, the sample bounds do what they say, the text annotators' fit/apply seam, and the
scaling benchmark runs."""
import json
import os

from annotators import Keywords, make_annotator
from conftest import annotate_args, make_corpus, run


def outputs(ddir):
    """({file: bytes}, meta) of a data dir; meta without the run's own name and config."""
    out = {}
    for f in sorted(os.listdir(ddir)):
        with open(os.path.join(ddir, f), 'rb') as fh:
            out[f] = fh.read()
    meta = json.loads(out.pop('meta.json'))
    del meta['name'], meta['config']
    return out, meta


def test_pass_layout_does_not_change_the_data(tiny_data, tmp_path):
    """The fixture ran in one process and one block; blocks of 7 documents in 2 processes, and a
    streamed corpus (its first 80 rows: all of them), give the same bytes."""
    corpus = os.path.join(os.path.dirname(tiny_data), 'corpus.jsonl')
    run('annotate.py', *annotate_args(corpus, tmp_path / 'blocks'), '--num_proc=2', '--map_block_docs=7')
    run('annotate.py', *annotate_args(corpus, tmp_path / 'stream'), '--streaming=True', '--max_docs=80')
    base = outputs(tiny_data)
    assert outputs(tmp_path / 'blocks' / 'tiny') == base
    files, meta = outputs(tmp_path / 'stream' / 'tiny')
    assert files == base[0] and meta.pop('corpus_fingerprint') != base[1].pop('corpus_fingerprint')  # max_docs
    assert meta == base[1]
    assert json.load(open(tmp_path / 'stream' / 'tiny' / 'meta.json'))['config']['streaming'] is True


def test_sample_bounds(tmp_path):
    """annotator_docs and tokenizer_docs bound what the keywords annotator and the BPE / words.txt
    learn from; a bound that takes a sample is part of the corpus fingerprint, one above the corpus
    changes nothing."""
    corpus = make_corpus(tmp_path / 'c.jsonl', n_docs=40)
    args = [*annotate_args(corpus, tmp_path), '--annotator=keywords', '--sft_key=keyword', '--sft_values=',
            '--heldout_docs=4']
    run('annotate.py', *args, '--name=full')
    run('annotate.py', *args, '--name=above', '--annotator_docs=40', '--tokenizer_docs=1000')
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
