"""annotate.py: outputs, token streams, splits, meta.json, and one-line errors on bad input."""
import json
import os
import re

import numpy as np
import pytest

from conftest import annotate_args, make_corpus, one_error_line, run
from formats import ANN, BOS, SPECIALS, TEXT, load_tokenizer, parse_annotation

FILES = ['tokenizer.json', 'meta.json', 'plain_train.bin', 'plain_val.bin', 'annotated_train.bin',
         'annotated_val.bin', 'sft_train.jsonl', 'sft_val.jsonl', 'eval_prompts.jsonl', 'heldout.jsonl', 'words.txt']


def load(ddir):
    meta = json.load(open(os.path.join(ddir, 'meta.json')))
    streams = {f[:-4]: np.fromfile(os.path.join(ddir, f), dtype=np.uint16) for f in FILES if f.endswith('.bin')}
    rows = {f[:-6]: [json.loads(l) for l in open(os.path.join(ddir, f))] for f in FILES if f.endswith('.jsonl')}
    return meta, streams, rows


def test_outputs_and_meta(tiny_data):
    assert sorted(os.listdir(tiny_data)) == sorted(FILES)  # no temp files left behind
    meta, streams, rows = load(tiny_data)
    assert meta['name'] == 'tiny' and meta['tokenizer'] == 'bpe' and meta['annotator'] == 'fields'
    assert meta['vocab_size'] <= 400 and list(meta['special_tokens']) == list(SPECIALS)
    v = meta['vocab_size']
    assert sorted(meta['special_tokens'].values()) == list(range(v - len(SPECIALS), v))
    assert meta['annotation_keys'] == ['topic', 'entity', 'description']
    assert meta['categorical_keys'] == ['topic', 'description']  # 4 distinct values each; entity: 80
    assert meta['sft_key'] == 'topic' and meta['sft_values'] == ['Arts', 'Science']
    s = meta['stats']
    assert s['docs'] == {'train': s['docs']['train'], 'val': s['docs']['val'], 'sft_train': 12, 'sft_val': 4,
                         'heldout': 12}
    assert s['docs']['train'] + s['docs']['val'] == 80 - 12 - 4 - 12 and s['docs']['val'] >= 1
    for name, ids in streams.items():
        assert s[f'tokens_{name}'] == len(ids) > 0 and ids.max() < meta['vocab_size']
    assert 1.0 < s['bytes_per_token'] < 10 and 0 < s['annotation_fraction'] < 1
    assert meta['max_annotation_tokens'] > 2 and len(meta['fingerprint']) == 16
    assert meta['config']['sft_docs'] == 12 and meta['config']['vocab_size'] == 400


def test_streams_round_trip_and_format(tiny_data):
    meta, streams, rows = load(tiny_data)
    enc, sp = load_tokenizer(tiny_data, meta), meta['special_tokens']
    corpus = [json.loads(l) for l in open(os.path.join(os.path.dirname(tiny_data), 'corpus.jsonl'))]
    for split in ('train', 'val'):
        plain, ann = streams[f'plain_{split}'], streams[f'annotated_{split}']
        assert plain[0] == ann[0] == sp[BOS]
        assert (plain == sp[BOS]).sum() == (ann == sp[BOS]).sum() == meta['stats']['docs'][split]
        assert not np.isin(plain, [sp[ANN], sp[TEXT]]).any()
        assert (ann == sp[ANN]).sum() == (ann == sp[TEXT]).sum() > 0
        docs = enc.decode(plain.tolist()).split(BOS)[1:]
        assert all(d.strip() in {c['text'].strip() for c in corpus} for d in docs)  # decodes back
        first = enc.decode(ann.tolist()).split(BOS)[1]
        assert first.startswith(ANN + 'topic:') and TEXT in first
    # SFT rows: assistant style, annotated; the eval prompts include prompts SFT never saw
    for r in rows['sft_train'] + rows['sft_val']:
        assert r['response'].startswith(meta['assistant_opening'] + '\n')
        assert dict(parse_annotation(r['annotation']))['topic'] in ('Arts', 'Science')
    ev = rows['eval_prompts']
    assert [r['prompt_id'] for r in ev] == list(range(len(ev)))
    assert {r['prompt'] for r in rows['sft_train']} <= {r['prompt'] for r in ev if r['in_sft']}
    assert any(not r['in_sft'] for r in ev)
    assert len({dict(parse_annotation(r['annotation']))['topic'] for r in rows['heldout']}) > 1


def test_shaping_exclusion_and_annotation_tokens(tmp_path):
    """max_sentences keeps each document's first sentences (every split follows), exclude drops a
    label's documents, and the tokenizer, trained on annotations in their encoded pieces, makes keys
    and label values whole tokens."""
    from formats import encode_annotation
    corpus = make_corpus(tmp_path / 'c.jsonl', n_docs=60)
    run('annotate.py', *annotate_args(corpus, tmp_path), '--max_sentences=1', '--exclude=topic:Sport',
        '--heldout_docs=6')
    meta, streams, rows = load(tmp_path / 'tiny')
    texts = [r['text'] for r in rows['heldout']] + [r['response'].split('\n', 1)[1] for r in rows['sft_train']]
    assert all(re.fullmatch(r'Doc \d+ is about \w+\.', t) for t in texts), texts[:3]
    enc = load_tokenizer(tmp_path / 'tiny', meta)
    assert 'sport' not in enc.decode(streams['plain_train'].tolist()).lower()
    assert meta['stats']['docs']['train'] + meta['stats']['docs']['val'] == 60 - 15 - 12 - 4 - 6
    ids, is_value = encode_annotation(enc, 'topic:Arts')
    assert [enc.decode([i]) for i in ids] == ['topic', ':', 'Arts'] and is_value == [False, False, True]
    words = (tmp_path / 'tiny' / 'words.txt').read_text().split()
    assert words == sorted(words) and {'doc', 'is', 'about', 'arts'} <= set(words) and 'sport' not in words


def test_balance_docs_evens_out_pretraining_and_the_judge(tmp_path):
    """balance_docs: at most that many documents of each topic among the judge's and the pretraining
    documents, a random draw; the SFT slice is drawn first and stays what it is without it."""
    from splits import cap_per_value
    values = ['a', 'a', 'b', None, 'a', 'b', 'a']
    assert cap_per_value(np.array([6, 0, 3, 2, 1, 5, 4]), values, 2).tolist() == [6, 0, 3, 2, 5]
    corpus = make_corpus(tmp_path / 'c.jsonl', n_docs=60)
    run('annotate.py', *annotate_args(corpus, tmp_path), '--heldout_docs=6', '--name=even', '--balance_docs=6')
    run('annotate.py', *annotate_args(corpus, tmp_path), '--heldout_docs=6', '--name=all')
    (meta, _, rows), (_, _, whole) = load(tmp_path / 'even'), load(tmp_path / 'all')
    assert rows['sft_train'] == whole['sft_train'] and rows['sft_val'] == whole['sft_val']
    topics = {dict(parse_annotation(r['annotation']))['topic'] for r in whole['heldout']}
    n_topics = len({json.loads(line)['topic'] for line in open(corpus)})
    assert meta['stats']['docs']['train'] + meta['stats']['docs']['val'] + 6 <= 6 * n_topics
    assert len(topics) > 1 and meta['corpus_fingerprint'] != load(tmp_path / 'all')[0]['corpus_fingerprint']


def test_heldout_docs_not_in_pretraining(tiny_data):
    meta, streams, rows = load(tiny_data)
    enc = load_tokenizer(tiny_data, meta)
    pretrain = ''.join(enc.decode(ids.tolist()) for ids in streams.values())
    held = [r['response'].split('\n', 1)[1] for r in rows['sft_train'] + rows['sft_val']] + \
        [r['text'] for r in rows['heldout']]
    assert len(held) == 28 and not any(h in pretrain for h in held)


def test_parallel_tokenization_is_deterministic(tiny_data, tmp_path):
    corpus = os.path.join(os.path.dirname(tiny_data), 'corpus.jsonl')
    run('annotate.py', *annotate_args(corpus, tmp_path), '--num_proc=2')
    a, b = load(tiny_data), load(tmp_path / 'tiny')
    assert a[0]['fingerprint'] == b[0]['fingerprint'] and a[0]['corpus_fingerprint'] == b[0]['corpus_fingerprint']
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1]) and a[2] == b[2]


def test_keywords_annotator(tmp_path):
    corpus = make_corpus(tmp_path / 'c.jsonl', n_docs=40)
    run('annotate.py', *annotate_args(corpus, tmp_path), '--annotator=keywords', '--sft_key=keyword',
        '--sft_values=', '--heldout_docs=4')
    meta, streams, rows = load(tmp_path / 'tiny')
    assert meta['annotation_keys'] == ['keyword'] and meta['annotator'] == 'keywords'
    z = parse_annotation(rows['heldout'][0]['annotation'])
    assert 1 <= len(z) <= 3 and all(k == 'keyword' and v.isalpha() for k, v in z)


def test_embed_annotator_with_reference_labels(tmp_path):
    """annotator='embed' (zero-shot labels) wired into annotate.py: the chunks get the embedder's
    labels under their own key; the corpus's own labels (reference_fields) reach only heldout.jsonl,
    the evaluation judge's documents, and exclude sees them."""
    corpus = make_corpus(tmp_path / 'c.jsonl', n_docs=60)
    labels = 'Art: painting, music; Physics: atom, energy; Land: river, mountain; Games: football, tennis'
    run('annotate.py', *annotate_args(corpus, tmp_path), '--annotator=embed', f'--embed_labels={labels}',
        '--embed_key=label', '--reference_fields=topic:topic', '--sft_key=label', '--sft_values=Art',
        '--exclude=topic:Sport', '--heldout_docs=6', '--sft_docs=6', '--sft_val_docs=2', '--device=cpu')
    meta, streams, rows = load(tmp_path / 'tiny')
    assert meta['annotation_keys'] == ['label'] and meta['reference_keys'] == ['topic']
    assert meta['categorical_keys'] == ['label', 'topic']
    enc = load_tokenizer(tmp_path / 'tiny', meta)
    text = enc.decode(streams['annotated_train'].tolist())
    assert 'label:' in text and 'topic:' not in text and 'sport' not in text.lower()
    for r in rows['heldout']:
        z = dict(parse_annotation(r['annotation']))
        assert set(z) == {'label', 'topic'} and z['topic'] != 'Sport'
    # the labels follow the topic words: most Arts documents are labelled Art
    arts = [dict(parse_annotation(r['annotation']))['label'] for r in rows['heldout']
            if 'topic:Arts' in r['annotation']]
    assert all(dict(parse_annotation(r['annotation']))['label'] == 'Art' for r in rows['sft_train'])
    assert arts and arts.count('Art') >= len(arts) / 2


def test_default_wiki_corpus(tmp_path):
    """The embedded corpus end to end (a few seconds)."""
    r = run('annotate.py', 'config/small.py', f'--data_root={tmp_path}')
    meta, streams, rows = load(tmp_path / 'wiki')
    assert meta['vocab_size'] == 4096 and meta['categorical_keys'] == ['topic']
    assert meta['stats']['docs']['heldout'] == 1000 and len(rows['sft_train']) == 400
    assert {dict(parse_annotation(r['annotation']))['topic'] for r in rows['sft_train']} == {'Arts', 'Technology'}
    assert 3 < meta['stats']['bytes_per_token'] < 5 and 'bytes/token' in r.stdout


@pytest.mark.parametrize('case,extra,needle', [
    ('missing', ['--dataset=/nonexistent/corpus.jsonl'], 'dataset file not found'),
    ('empty', [], 'has no'),
    ('blank', [], 'no non-empty texts'),
    ('corpus', ['--text_column=body'], "no text column 'body'"),
    ('corpus', ['--fields=topic:topic,mood:mood'], "no column 'mood' (available:"),
    ('corpus', ['--annotator=gpt'], "annotator must be one of fields, keywords, embed, llm; got 'gpt'"),
    ('corpus', ['--annotator=llm'], "annotator 'llm' needs llm_model"),
    ('corpus', ['--tokenizer=sp'], "tokenizer must be one of bpe, gpt2; got 'sp'"),
    ('corpus', ['--sft_values=Cooking'], "sft_values ['Cooking'] not found"),
    ('corpus', ['--sft_docs=50'], 'only 10 documents'),
    ('corpus', ['--dataset=someone/corpus', '--streaming=True', '--hf_split=train[10%:]'],
     "hf_split 'train[10%:]': streaming reads 'name' or 'name[:N]'"),
])
def test_bad_input_one_line_nothing_written(tmp_path, case, extra, needle):
    path = tmp_path / 'corpus.jsonl'
    if case == 'corpus':
        make_corpus(path, n_docs=40)
    elif case == 'empty':
        path.write_text('')
    elif case == 'blank':
        rows = [{'text': t, 'topic': 'Arts', 'title': 'x', 'description': 'y'} for t in ['', ' \n\n ']]
        path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    out = tmp_path / 'out'
    r = run('annotate.py', *annotate_args(path, out), '--sft_values=Arts', *extra, check=False)
    one_error_line(r, needle)
    assert not out.exists() or not any(out.iterdir())
