"""pretrain.py end to end on a tiny corpus: both arms, DDP equivalence, resume after SIGKILL, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY_MODEL, annotate_args, make_corpus, one_error_line, run


def losses(out_dir):
    return [h['loss'] for h in json.load(open(os.path.join(out_dir, 'log.json')))]


def final_val(out_dir):
    return [h['val_loss'] for h in json.load(open(os.path.join(out_dir, 'log.json'))) if 'val_loss' in h][-1]


@pytest.mark.parametrize('annotated', [False, True])
def test_pretrain_both_arms_learn(tiny_data, tmp_path, annotated):
    out = tmp_path / 'out'
    r = run('pretrain.py', f'--data_dir={tiny_data}', f'--out_dir={out}', f'--annotated={annotated}',
            '--max_iters=30', '--eval_interval=15', '--eval_iters=2', '--learning_rate=3e-3', *TINY_MODEL)
    assert 'done: 30 iters' in r.stdout
    hist = json.load(open(out / 'log.json'))
    vals = [h['val_loss'] for h in hist if 'val_loss' in h]
    assert len(vals) == 2 and vals[1] < vals[0]
    ckpt = torch.load(out / 'ckpt.pt', weights_only=False)
    assert ckpt['iter_num'] == 30 and ckpt['annotated'] == annotated and ckpt['stage'] == 'pretrain'
    assert {'model', 'optimizer', 'model_args', 'best_val_loss', 'config', 'data_rng', 'torch_rng',
            'meta_fingerprint'} <= set(ckpt)


def test_ddp_two_ranks_match_one_rank_with_double_accumulation(tiny_data, tmp_path):
    common = [f'--data_dir={tiny_data}', '--max_iters=4', '--eval_interval=4', '--eval_iters=1',
              '--gradient_accumulation_steps=4', *TINY_MODEL]
    run('pretrain.py', *common, f'--out_dir={tmp_path / "one"}')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for attempt in ('two', 'two-again'):
        r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                            os.path.join(ROOT, 'pretrain.py'), *common, f'--out_dir={tmp_path / attempt}'],
                           cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
        # Once in several suite runs on a loaded 2-core machine, a gloo rank has aborted in C++
        # ("terminate called without an active exception", SIGABRT) with no Python error: one retry
        # for that signature alone; any other failure, or the same one twice, fails the test.
        if not (r.returncode != 0 and 'terminate called without an active exception' in r.stderr):
            break
    assert r.returncode == 0, r.stderr
    assert 'x2' in r.stdout  # really two ranks (gloo)
    # Muon (the default) on both: each rank orthogonalizes the all-reduced gradient, the same matrix
    assert torch.load(tmp_path / attempt / 'ckpt.pt', weights_only=False)['config']['optimizer'] == 'muon'
    one, two = losses(tmp_path / 'one'), losses(tmp_path / attempt)
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, rel=1e-4, abs=1e-5)


def test_resume_after_sigkill_ends_at_same_loss(tiny_data, tmp_path):
    common = [f'--data_dir={tiny_data}', '--max_iters=60', '--eval_interval=10', '--eval_iters=1',
              '--dropout=0.1', *TINY_MODEL]  # dropout: the torch RNG state must be restored too
    run('pretrain.py', *common, f'--out_dir={tmp_path / "straight"}', fresh=True)  # (the resumed run is forked)
    out = tmp_path / 'killed'
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'pretrain.py'), *common, f'--out_dir={out}'],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / 'ckpt.pt').exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    ckpt = torch.load(out / 'ckpt.pt', weights_only=False)  # never half-written: it loads
    assert 0 < ckpt['iter_num'] < 60, 'the kill must land mid-run'
    assert ckpt['config']['optimizer'] == 'muon'  # the default: Muon's momentum resumes exactly too
    run('pretrain.py', *common, f'--out_dir={out}', '--init_from=resume')
    assert final_val(out) == pytest.approx(final_val(tmp_path / 'straight'), abs=1e-5)
    assert losses(out) == pytest.approx(losses(tmp_path / 'straight'), abs=1e-5)


def test_bad_input(tiny_data, tmp_path):
    base = [f'--data_dir={tiny_data}', '--max_iters=2', *TINY_MODEL]
    one_error_line(run('pretrain.py', *base, '--bogus=1', check=False), "unknown config key 'bogus'")
    one_error_line(run('pretrain.py', *base, '--max_iters=many', check=False), "'max_iters' expects int")
    one_error_line(run('pretrain.py', 'config/nope.py', check=False), 'config file not found')
    one_error_line(run('pretrain.py', *base, '--annotated=True', '--block_size=6', check=False),
                   'too small for one annotation')
    one_error_line(run('pretrain.py', *base, f'--data_dir={tmp_path}/none', check=False), 'data dir not found')
    one_error_line(run('pretrain.py', *base, f'--out_dir={tmp_path}/x', '--init_from=resume', check=False),
                   'checkpoint not found')


def test_resume_refuses_a_data_dir_with_another_tokenizer(tiny_data, tmp_path):
    out = tmp_path / 'out'
    run('pretrain.py', f'--data_dir={tiny_data}', f'--out_dir={out}', '--max_iters=2', '--eval_interval=2',
        '--eval_iters=1', *TINY_MODEL)
    other = make_corpus(tmp_path / 'other.jsonl', seed=1)
    args = annotate_args(other, tmp_path) + ['--vocab_size=300']
    run('annotate.py', *args)
    before = (out / 'ckpt.pt').read_bytes()
    r = run('pretrain.py', f'--data_dir={tmp_path / "tiny"}', f'--out_dir={out}', '--init_from=resume',
            '--max_iters=4', *TINY_MODEL, check=False)
    one_error_line(r, 'does not match')
    assert (out / 'ckpt.pt').read_bytes() == before  # nothing overwritten


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from common import atomic_write, write_text
    path = tmp_path / 'f.txt'
    write_text(path, 'old')

    def boom(f):
        f.write('half')
        raise RuntimeError('crash mid-write')
    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['f.txt']
