"""A study that survives its machine: an interrupted training stage resumes from its checkpoint (and a
checkpoint of another run is never trained on), study.py's stages end with it, one study holds an
out_root at a time, a rank killed under torchrun restarts from the last checkpoint, and a checkpoint
that cannot be written leaves the previous one."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY_MODEL, make_corpus, one_error_line, run

FAKE_TRAIN = """import os, sys, torch
resume = sys.argv[-1] == '--init_from=resume'
out, iters, fail_at = [a for a in sys.argv if a != '--init_from=resume'][-3:]
iters, fail_at = int(iters), int(fail_at)
ckpt = os.path.join(out, 'ckpt.pt')
it = torch.load(ckpt)['iter_num'] if resume else 0
print('from', it, flush=True)
os.makedirs(out, exist_ok=True)
while it < iters:
    it += 1
    torch.save({'iter_num': it, 'resumed': resume}, ckpt)
    if it == fail_at and not resume:
        sys.exit(3)  # stands for a kill: the checkpoint of iteration fail_at is on disk
"""


def fake_stage(tmp_path, name, fail_at):
    from stages import Stage
    out = tmp_path / name
    script = tmp_path / 'train.py'
    script.write_text(FAKE_TRAIN)
    return Stage(name, str(script), [str(out), 10, fail_at], [str(out / 'ckpt.pt')], checkpoint=str(out / 'ckpt.pt'))


def test_stage_resumes_its_own_checkpoint_and_sets_another_aside(tmp_path, capsys):
    from common import UserError
    from stages import Stages
    cfg = tmp_path / 'c.py'
    cfg.write_text('')
    runner = Stages(str(tmp_path / 'root'), [str(cfg)])
    with pytest.raises(UserError, match="stage 'a' failed"):
        runner.run([fake_stage(tmp_path, 'a', fail_at=4)])
    assert 'a' in runner.started and 'a' not in runner.stamps
    again = Stages(str(tmp_path / 'root'), [str(cfg)])  # the next study reads started.json
    again.run([fake_stage(tmp_path, 'a', fail_at=4)])
    out = capsys.readouterr().out
    assert '[a] resumes from iteration 4' in out and again.resumed == {'a': 4}
    assert torch.load(tmp_path / 'a' / 'ckpt.pt') == {'iter_num': 10, 'resumed': True}
    assert again.started == {} and 'a' in again.stamps
    # the same stage with another command: the checkpoint is another run's, set aside, not resumed
    changed = fake_stage(tmp_path, 'a', fail_at=0)  # (never fails)
    again.run([changed])
    out = capsys.readouterr().out
    assert 'set aside' in out and '] resumes from' not in out
    assert torch.load(tmp_path / 'a' / 'ckpt.pt') == {'iter_num': 10, 'resumed': False}
    assert torch.load(tmp_path / 'a' / 'ckpt.pt.set-aside')['resumed'] is True


def test_lock_refuses_a_second_study_and_takes_over_a_dead_ones(tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', 'import time; from stages import lock_out_root; '
                               f'lock = lock_out_root({str(tmp_path / "out")!r}); print("locked", flush=True); '
                               'time.sleep(60)'],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        r = run('study.py', 'config/small.py', f'--out_root={tmp_path / "out"}', check=False)
        one_error_line(r, f'in use by the study with pid {holder.pid}')
    finally:
        holder.kill()
        holder.wait()
    from stages import lock_out_root, unlock_out_root
    lock = lock_out_root(str(tmp_path / 'out'))  # the holder was killed: its lock file is taken over
    assert (tmp_path / 'out' / 'study.lock').read_text() == f'{os.getpid()}\n'
    unlock_out_root(lock)


STUDY_CONFIG = """
max_iters = 150
eval_interval = 50
ckpt_interval = 20
sft_iters = 60
sft_eval_interval = 20
gradient_accumulation_steps = 2
arms = 'base,sft'
nproc = 2
"""


def start_study(*args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'study.py'), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path, proc, timeout=300):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.02)


def processes_under(root):
    """Live processes whose command line names root (a study's stages do: their out_dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmd = f.read().decode(errors='replace')
            with open(f'/proc/{pid}/stat') as f:
                zombie = f.read().rsplit(')', 1)[1].split()[0] == 'Z'
        except OSError:
            continue
        if str(root) in cmd and not zombie:
            found.append(cmd.replace('\0', ' '))
    return found


def no_stage_left(root, timeout=30):
    t0 = time.time()
    while processes_under(root) and time.time() - t0 < timeout:
        time.sleep(0.1)
    assert processes_under(root) == []


@pytest.mark.slow
def test_study_killed_mid_training_resumes_to_the_same_report(tmp_path):
    """The study at scale-up form (its training stages under torchrun, 2 gloo processes): SIGKILL to
    study.py's process group in pretraining, then SIGINT to study.py in SFT: no stage or worker
    outlives the study, each rerun resumes the interrupted stage from its last checkpoint, and the
    report equals an uninterrupted study's."""
    from test_study import STUDY_KEYS, TINY_CONFIG
    corpus = make_corpus(tmp_path / 'corpus.jsonl', n_docs=120)
    cfgs = {}
    for name in ('whole', 'cut'):
        cfgs[name] = tmp_path / f'{name}.py'
        cfgs[name].write_text(TINY_CONFIG.format(corpus=str(corpus)) + STUDY_CONFIG + STUDY_KEYS.format(
            out=str(tmp_path / name), data=str(tmp_path / f'data-{name}')))
    assert 'on cpu x2' in run('study.py', cfgs['whole'], timeout=600).stdout  # pretraining and SFT on 2 processes
    cut = tmp_path / 'cut'
    p = start_study(cfgs['cut'])
    wait_for(cut / 'pretrain1337' / 'base' / 'ckpt.pt', p)
    os.killpg(p.pid, signal.SIGKILL)  # what a preempted machine does
    p.wait()
    no_stage_left(cut)
    p = start_study(cfgs['cut'])
    wait_for(cut / 'seed1337' / 'sft' / 'ckpt.pt', p)
    p.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = p.communicate(timeout=120)
    # (the stages' own output goes to the study's; the study's last word is one line)
    assert p.returncode == 2 and err.strip().splitlines()[-1].startswith('error: study interrupted'), err
    assert '[pretrain-plain/1337] resumes from iteration ' in out
    no_stage_left(cut)
    r = run('study.py', cfgs['cut'], timeout=600)
    assert '[sft/1337] resumes from iteration ' in r.stdout and 'resumed: sft/1337 from iteration' in r.stdout
    reps = {}
    for n in ('whole', 'cut'):  # the same figures; only the paths (and the study's times) differ
        rep = json.loads((tmp_path / n / 'report' / 'report.json').read_text())
        reps[n] = rep.pop('study')
        reps[n + ' figures'] = json.dumps(rep).replace(str(tmp_path / f'data-{n}'), 'D').replace(str(tmp_path / n), 'R')
    assert 'resumed_from_iter' in reps['cut'] and 'resumed_from_iter' not in reps['whole']
    assert reps['whole figures'] == reps['cut figures']
    for arm in ('base', 'sft'):
        a, b = ((tmp_path / n / 'samples' / 'seed1337' / f'{arm}.jsonl').read_bytes() for n in ('whole', 'cut'))
        assert a == b


def worker_pids(torchrun_pid):
    with open(f'/proc/{torchrun_pid}/task/{torchrun_pid}/children') as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.slow
def test_rank_killed_under_torchrun_restarts_from_the_checkpoint(tiny_data, tmp_path):
    """torchrun --max-restarts: a rank killed mid-run restarts the group, which continues from the
    checkpoint this run wrote and ends at the uninterrupted run's weights."""
    def pretrain(out):
        return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                '--max-restarts=1', '--monitor-interval=0.2', os.path.join(ROOT, 'pretrain.py'), *TINY_MODEL,
                f'--data_dir={tiny_data}', f'--out_dir={out}', '--max_iters=100', '--eval_interval=50',
                '--eval_iters=1', '--ckpt_interval=10', '--gradient_accumulation_steps=2', '--log_interval=100']
    from stages import TORCHRUN_ENV
    env = dict(os.environ, **TORCHRUN_ENV)  # as study.py launches it
    whole = subprocess.run(pretrain(tmp_path / 'whole'), cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=env)
    assert whole.returncode == 0, whole.stderr
    p = subprocess.Popen(pretrain(tmp_path / 'cut'), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env)
    wait_for(tmp_path / 'cut' / 'ckpt.pt', p)
    os.kill(worker_pids(p.pid)[-1], signal.SIGKILL)  # rank 1
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0 and 'resuming' in out, out
    a, b = (torch.load(tmp_path / n / 'ckpt.pt', weights_only=False) for n in ('whole', 'cut'))
    assert a['iter_num'] == b['iter_num'] == 100
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_checkpoint_write_that_fails_keeps_the_previous_one(tiny_data, tmp_path):
    """A full disk, simulated with a file size limit below a checkpoint's size: one error line, and
    the previous checkpoint loads as it was, no temp file left."""
    args = [*TINY_MODEL, f'--data_dir={tiny_data}', f'--out_dir={tmp_path}', '--eval_interval=5', '--eval_iters=1']
    run('pretrain.py', *args, '--max_iters=5')
    ckpt = tmp_path / 'ckpt.pt'
    before = ckpt.read_bytes()
    limit = len(before) // 2

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'pretrain.py'), *args, '--max_iters=10',
                        '--init_from=resume'], cwd=ROOT, capture_output=True, text=True, preexec_fn=small_disk)
    one_error_line(r, 'is the disk full?')
    assert ckpt.read_bytes() == before and torch.load(ckpt, weights_only=False)['iter_num'] == 5
    assert sorted(f.name for f in tmp_path.iterdir()) == ['ckpt.pt', 'log.json']
