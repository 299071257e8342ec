"""Shared fixtures: a tiny corpus made in the test, and the data dir annotate.py builds from it."""
import json
import os
import random
import subprocess
import sys

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
# tiny runs of every stage: small model, few iterations, no progress bars
TINY_MODEL = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=128', '--batch_size=4',
              '--progress=False', '--log_interval=1', '--device=cpu']


def pytest_collection_modifyitems(items):
    """The slow tests first (a stable sort): the longest jobs start at once instead of last."""
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


def run(script, *args, check=True, **kw):
    """Run a stage script as a user would; return the CompletedProcess."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, **kw)
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
    run('annotate.py', *annotate_args(corpus, root))
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
