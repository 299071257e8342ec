"""Shared fixtures: a tiny corpus made in the test, and the data dir annotate.py builds from it; run(),
which runs a stage script as a user would."""
import atexit
import functools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

# two xdist workers on two cores, each starting stage scripts (some under torchrun with 2 ranks):
# with torch's default of a thread per core they oversubscribe the cores, and the tiny models gain
# nothing from a second thread; one thread per process, for the tests and every process they start
os.environ.setdefault('OMP_NUM_THREADS', '1')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPIC_WORDS = {
    'Arts': 'painting music sculpture artist gallery opera poem canvas melody theatre',
    'Science': 'atom energy physics chemistry molecule electron quantum gravity laser orbit',
    'Geography': 'river mountain city country valley desert island coast lake border',
    'Sport': 'football tennis stadium player coach league medal race goal team',
}
# the stage scripts whose heavy imports (torch, datasets) tests/forkserver.py makes once: run() forks them from it
FORKED = ('pretrain.py', 'anchor_sft.py', 'sample.py', 'annotate.py', 'diversity.py')
# tiny runs of every stage: small model, few iterations, no progress bars
TINY_MODEL = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=128', '--batch_size=4',
              '--progress=False', '--log_interval=1', '--device=cpu']


def pytest_collection_modifyitems(items):
    """The slow tests first (a stable sort): the longest jobs start at once, on both workers, instead
    of last on one."""
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)


def make_corpus(path, n_docs=80, seed=0):
    """JSONL docs with columns text/title/topic/description; some have blank-line chunks."""
    rng = random.Random(seed)
    topics = sorted(TOPIC_WORDS)
    with open(path, 'w') as f:
        for i in range(n_docs):
            topic = topics[i % len(topics)]
            words = TOPIC_WORDS[topic].split()
            sent = lambda: ' '.join(rng.choice(words) for _ in range(rng.randint(6, 12))).capitalize() + '.'
            chunks = [' '.join(sent() for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(1, 2))]
            f.write(json.dumps({'title': f'{topic} thing {i}', 'topic': topic, 'description': f'A {words[0]} item',
                                'text': f'Doc {i} is about {topic.lower()}. ' + '\n\n'.join(chunks)}) + '\n')
    return path


class ForkServer:
    """The client of tests/forkserver.py: a process of its own per test process, started on first use."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'forkserver.py')], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        atexit.register(self.proc.stdin.close)  # (its loop ends at the end of its input)

    def reply(self, key):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f'tests/forkserver.py ended (exit code {self.proc.wait()})')
        return json.loads(line)[key]

    def run(self, argv, env, timeout):
        """subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)"""
        with tempfile.TemporaryDirectory() as d:
            out, err = os.path.join(d, 'stdout'), os.path.join(d, 'stderr')
            self.proc.stdin.write(json.dumps(dict(argv=argv[1:], cwd=ROOT, env=env, stdout=out, stderr=err)) + '\n')
            self.proc.stdin.flush()
            pid = self.reply('pid')
            timer = threading.Timer(timeout, os.kill, (pid, signal.SIGKILL)) if timeout else None
            if timer:
                timer.start()
            code = self.reply('returncode')
            expired = timer and not timer.is_alive() and code == -signal.SIGKILL
            if timer:
                timer.cancel()
            with open(out) as f_out, open(err) as f_err:
                r = subprocess.CompletedProcess(argv, code, f_out.read(), f_err.read())
        if expired:
            raise subprocess.TimeoutExpired(argv, timeout, r.stdout, r.stderr)
        return r


@functools.cache
def fork_server():
    return ForkServer()


def run(script, *args, check=True, fresh=False, env=None, timeout=None):
    """Run a stage script as a user would; return the CompletedProcess. The scripts in FORKED run
    forked from tests/forkserver.py (its docstring says what that saves, and what it cannot give:
    fresh=True runs a fresh process, as a determinism check must for one of the runs it compares)."""
    argv = [sys.executable, os.path.join(ROOT, script), *map(str, args)]
    if fresh or os.path.basename(script) not in FORKED:
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    else:
        r = fork_server().run(argv, dict(os.environ if env is None else env), timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{script} failed:\n{r.stdout}\n{r.stderr}")
    return r


def annotate_args(corpus, root):
    return [f'--dataset={corpus}', '--text_column=text', '--fields=topic:topic,entity:title,description:description',
            '--sft_values=Arts,Science', '--sft_docs=12', '--sft_val_docs=4', '--heldout_docs=12',
            '--vocab_size=400', f'--data_root={root}', '--name=tiny', '--num_proc=1']


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """A data dir built by annotate.py from a tiny corpus (once per test session)."""
    root = tmp_path_factory.mktemp('data')
    corpus = make_corpus(root / 'corpus.jsonl')
    run('annotate.py', *annotate_args(corpus, root), fresh=True)  # (tests compare their runs' data with it)
    return str(root / 'tiny')


def one_error_line(r, needle):
    """Bad input: exit code 2 and exactly one line on stderr, which names the problem (so no
    traceback either)."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith('error:'), r.stderr
    assert needle in lines[0], lines[0]


def snapshot(directory):
    """{relative path: bytes} of every file under directory: to show that nothing was touched."""
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            path = os.path.join(root, f)
            with open(path, 'rb') as fh:
                out[os.path.relpath(path, directory)] = fh.read()
    return out
