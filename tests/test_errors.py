"""Bad input, class by class (issue: every bad input gets one clear line, checked before any work,
nothing touched): each case exits with code 2, prints exactly one line starting with 'error:' that
names the problem, and leaves every pre-existing output byte-identical."""
import json
import os
import shutil

import pytest

from conftest import TINY_MODEL, annotate_args, make_corpus, one_error_line, run, snapshot


PRE = ['--max_iters=2', '--eval_interval=2', '--eval_iters=1', *TINY_MODEL, '--block_size=256']
SFT = ['--sft_iters=2', '--sft_eval_interval=2', '--sft_batch_size=2', '--progress=False',
       '--device=cpu']


@pytest.fixture(scope='module')
def runs(tiny_data, tmp_path_factory):
    """A pretrained checkpoint, an SFT run and its samples: the outputs bad input must not touch."""
    root = tmp_path_factory.mktemp('runs')
    run('pretrain.py', f'--data_dir={tiny_data}', f'--out_dir={root / "base"}', *PRE)
    run('anchor_sft.py', f'--init_dir={root / "base"}', f'--out_dir={root / "sft"}', *SFT)
    run('sample.py', f'--ckpt_dir={root / "sft"}', '--num_samples=2', '--max_new_tokens=4', '--progress=False',
        '--device=cpu')
    return root


def untouched(root, fn):
    before = snapshot(root)
    fn()
    assert snapshot(root) == before


# -----------------------------------------------------------------------------
# encoding and types

def test_encoding_and_types(tiny_data, runs, tmp_path):
    bad_utf8 = tmp_path / 'prompts.jsonl'
    bad_utf8.write_bytes(b'{"prompt_id": 0, "prompt": "hi"}\n{"prompt_id": 1, "prompt": "caf\xe9"}\n')
    number = tmp_path / 'number.jsonl'
    number.write_text('{"prompt_id": 0, "prompt": 42}\n')
    broken = tmp_path / 'broken.jsonl'
    broken.write_text('{"prompt_id": 0, "prompt": "ok"}\n{"prompt_id": 1, "prompt": \n')
    sample = lambda p: run('sample.py', f'--ckpt_dir={runs / "sft"}', f'--prompts={p}', '--device=cpu', check=False)
    untouched(runs, lambda: one_error_line(sample(bad_utf8), f'{bad_utf8}:2: not UTF-8 text'))
    untouched(runs, lambda: one_error_line(sample(number), "row 1 needs a 'prompt' field with text"))
    untouched(runs, lambda: one_error_line(sample(broken), f'{broken}:2: not valid JSON'))
    corpus = tmp_path / 'numbers.jsonl'
    corpus.write_text(''.join(json.dumps({'text': i, 'topic': 'Arts'}) + '\n' for i in range(20)))
    r = run('annotate.py', f'--dataset={corpus}', '--fields=topic:topic', f'--data_root={tmp_path / "d"}', check=False)
    one_error_line(r, "text column 'text' holds int values, not text")
    assert not (tmp_path / 'd').exists() or not any((tmp_path / 'd').iterdir())
    data = tmp_path / 'data'  # an anchored SFT row without its annotation
    shutil.copytree(tiny_data, data)
    rows = [json.loads(line) for line in open(data / 'sft_train.jsonl')]
    rows[0]['annotation'] = None
    (data / 'sft_train.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
    r = run('anchor_sft.py', '--method=anchored', '--anchor_prior=mask', '--replay_rows=0', f'--data_dir={data}',
            f'--init_dir={runs / "base"}', f'--out_dir={tmp_path / "anchored"}', *SFT, check=False)
    one_error_line(r, "row 1: method='anchored' needs an annotation, got null")


MIXED = ''.join(json.dumps({'text': {'a': 1} if i == 5 else f'doc {i}', 'topic': 'Arts'}) + '\n' for i in range(9))


@pytest.mark.parametrize('name,content,needle', [
    ('corpus.jsonl', b'{"text": "ok", "topic": "Arts"}\n{"text": "caf\xe9", "topic": "Arts"}\n', ':2: not UTF-8 text'),
    ('corpus.txt', b'first paragraph\n\nsecond\n\xff\xfe third\n', ':4: not UTF-8 text'),
    ('corpus.jsonl', b'{"text": "ok", "topic": "Arts"}\n{"text": "cut\n', ':2: not valid JSON ('),
    ('corpus.jsonl', b'{"text": "ok"}\n["text", "topic"]\n', ':2: not a JSON object'),
    ('corpus.json', b'[\n{"text": "a", "topic": "x"},\n{"text": "b", "topic": \n]\n', ':4: not valid JSON'),
    ('corpus.jsonl', MIXED.encode(), "text column 'text' holds mixed JSON values, not text"),
])
def test_unreadable_corpus_files(tmp_path, name, content, needle):
    """A corpus file that cannot be read: one line naming the file, the line and the problem (the
    loader would say 'An error occurred while generating the dataset'), before anything is written."""
    path = tmp_path / name
    path.write_bytes(content)
    r = run('annotate.py', f'--dataset={path}', '--fields=topic:topic', f'--data_root={tmp_path / "d"}', check=False)
    one_error_line(r, f'{path}{needle}' if needle.startswith(':') else needle)
    assert not any((tmp_path / 'd').iterdir())


# -----------------------------------------------------------------------------
# output paths

def test_output_paths(tiny_data, runs, tmp_path):
    a_file = tmp_path / 'file'
    a_file.write_text('keep me')
    one_error_line(run('pretrain.py', f'--data_dir={tiny_data}', f'--out_dir={a_file}', *PRE, check=False),
                   f'out_dir {a_file} exists and is not a directory')
    one_error_line(run('sample.py', f'--ckpt_dir={runs / "sft"}', f'--out={tmp_path}', '--device=cpu', check=False),
                   'is a directory')
    one_error_line(run('annotate.py', *annotate_args(make_corpus(tmp_path / 'c.jsonl'), '/proc/nope'), check=False),
                   'data_root /proc/nope cannot be written')
    one_error_line(run('diversity.py', f'--samples=base={runs / "sft" / "samples.jsonl"}', f'--data_dir={tiny_data}',
                       f'--out_dir={a_file}/report', check=False), 'cannot be written')
    assert a_file.read_text() == 'keep me'


def test_symlinked_out_is_written_through(tiny_data, runs, tmp_path):
    target = tmp_path / 'real.jsonl'
    target.write_text('old\n')
    link = tmp_path / 'link.jsonl'
    link.symlink_to(target)
    run('sample.py', f'--ckpt_dir={runs / "sft"}', f'--out={link}', '--num_samples=2', '--max_new_tokens=4',
        '--progress=False', '--device=cpu')
    assert link.is_symlink() and os.readlink(link) == str(target)
    prompts = open(os.path.join(tiny_data, 'eval_prompts.jsonl')).read().splitlines()
    assert len(target.read_text().splitlines()) == 2 * len(prompts)  # 2 samples per prompt


# -----------------------------------------------------------------------------
# numbers: one shared check, one line, in every stage

@pytest.mark.parametrize('script,args,needle', [
    ('pretrain.py', ['--batch_size=0'], 'batch_size must be > 0, got 0'),
    ('pretrain.py', ['--n_embd=30', '--n_head=4'], 'n_embd=30 is not divisible by n_head=4'),
    ('pretrain.py', ['--max_iters=-5'], 'max_iters must be > 0, got -5'),
    ('anchor_sft.py', ['--gradient_accumulation_steps=0'], 'gradient_accumulation_steps must be > 0'),
    ('sample.py', ['--top_p=1.5'], 'top_p must be in (0, 1], got 1.5'),
    ('sample.py', ['--temperature=-1'], 'temperature must be >= 0, got -1.0'),
    ('diversity.py', ['--bootstrap=-1'], 'need bootstrap >= 0'),
])
def test_numbers(tiny_data, runs, script, args, needle):
    where = {'pretrain.py': [f'--data_dir={tiny_data}', f'--out_dir={runs / "base"}', *PRE],
             'anchor_sft.py': [f'--init_dir={runs / "base"}', f'--out_dir={runs / "sft"}', *SFT],
             'sample.py': [f'--ckpt_dir={runs / "sft"}', '--device=cpu'],
             'diversity.py': [f'--samples=a={runs / "sft" / "samples.jsonl"}', f'--data_dir={tiny_data}',
                              f'--out_dir={runs / "report"}']}[script]
    untouched(runs, lambda: one_error_line(run(script, *where, *args, check=False), needle))


# -----------------------------------------------------------------------------
# resume with another shape; nothing touched before validation

def test_resume_with_another_shape_is_refused(tiny_data, runs):
    r = run('pretrain.py', f'--data_dir={tiny_data}', f'--out_dir={runs / "base"}', *PRE, '--init_from=resume',
            '--max_iters=4', '--n_layer=2', '--n_embd=64', check=False)
    untouched(runs, lambda: one_error_line(r, 'cannot resume'))
    assert 'n_layer (1 in the checkpoint, 2 now)' in r.stderr and 'n_embd (32 in the checkpoint, 64 now)' in r.stderr


def test_nothing_touched_before_validation(tiny_data, runs, tmp_path):
    data = tmp_path / 'data'
    corpus = make_corpus(tmp_path / 'c.jsonl')
    run('annotate.py', *annotate_args(corpus, data))
    # gpt2 needs a download, which this machine cannot make: the existing data dir stays as it was
    untouched(data, lambda: one_error_line(run('annotate.py', *annotate_args(corpus, data), '--tokenizer=gpt2',
                                                check=False), "could not load tiktoken's gpt2"))
    untouched(runs, lambda: one_error_line(
        run('anchor_sft.py', f'--init_dir={runs / "base"}', f'--out_dir={runs / "sft"}', *SFT, '--dtype=float8',
            check=False), 'dtype must be one of'))
    untouched(runs, lambda: one_error_line(run('sample.py', f'--ckpt_dir={runs / "sft"}', '--num_samples=0',
                                               '--device=cpu', check=False), 'num_samples must be > 0'))


# -----------------------------------------------------------------------------
# silent nonsense

def test_silent_nonsense_is_refused(tiny_data, runs, tmp_path):
    rows = [json.loads(line) for line in open(runs / 'sft' / 'samples.jsonl')]
    other = tmp_path / 'other.jsonl'
    other.write_text(''.join(json.dumps(dict(r, prompt=r['prompt'] + ' Now!')) + '\n' for r in rows))
    r = run('diversity.py', f'--samples=a={runs / "sft" / "samples.jsonl"},b={other}', f'--data_dir={tiny_data}',
            f'--out_dir={tmp_path / "report"}', check=False)
    one_error_line(r, "has another prompt text in arm 'b'")
    twice = tmp_path / 'twice.jsonl'
    twice.write_text('{"prompt_id": 3, "prompt": "a"}\n{"prompt_id": 3, "prompt": "b"}\n')
    untouched(runs, lambda: one_error_line(run('sample.py', f'--ckpt_dir={runs / "sft"}', f'--prompts={twice}',
                                               '--device=cpu', check=False), 'prompt_id 3 is used by two prompts'))


# -----------------------------------------------------------------------------
# housekeeping

def test_stale_temp_files_are_removed_at_start(tiny_data, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    stale = out / '.ckpt.pt.abcd1234.tmp'  # what a kill during torch.save leaves behind
    stale.write_bytes(b'x' * 1000)
    mine = out / '.notes.tmp'  # not ours: kept
    mine.write_text('keep')
    (out / 'best.pt').write_bytes(b'another run')  # sample.py would prefer it over the new ckpt.pt
    run('pretrain.py', f'--data_dir={tiny_data}', f'--out_dir={out}', *PRE)
    assert not stale.exists() and mine.exists()
    assert sorted(os.listdir(out)) == ['.notes.tmp', 'ckpt.pt', 'log.json']
