"""
Benchmark of annotate.py at corpus scale: synthetic labeled JSONL corpora of growing size,
annotate.py run on each as a subprocess, its wall time and peak memory side by side (bench.py's
idea: time one thing at a time, print a small table). The target: memory flat in the corpus size,
time about linear.

    python bench_annotate.py                                   # 25, 100 and 400 MB (a few minutes)
    python bench_annotate.py --sizes_mb=5,20,80 --annotator=keywords

The corpora are kept in corpus_dir (made once per size and seed) with annotate.py's log next to
each; the data dirs go to a temp dir. What a synthetic corpus holds and what the two memory figures
('max RSS', 'peak anon') count: docs/METHOD.md, "Annotating at corpus scale".
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import UserError, check_config, main_guard

# -----------------------------------------------------------------------------
sizes_mb = '25,100,400'  # corpus sizes to time, MB of JSONL (comma-separated, growing)
annotator = 'fields'  # annotate.py's annotator: 'fields' (the corpus's labels) or 'keywords'
num_proc = 2  # annotate.py's worker processes
vocab_words = 30000  # distinct words of the synthetic language
corpus_dir = 'data/bench_corpus'  # where the synthetic corpora are kept between runs
seed = 1337
from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------

TOPICS = ['Arts', 'Biology', 'Economics', 'Geography', 'History', 'Law', 'Mathematics', 'Medicine', 'Music',
          'Philosophy', 'Sport', 'Technology']  # default sft_values Arts,Technology are among them
FUNCTION_WORDS = 'the of and in to a is was for on as by with that from at it an which are or be his its'.split()
SYLLABLES = [c + v for c in 'bcdfghklmnprstvwz' for v in ('a', 'e', 'i', 'o', 'u', 'ai', 'ou', 'er', 'an')]


def vocabulary(rng, n_words):
    """n_words distinct pseudo-words of 1 to 4 syllables, most frequent first."""
    words = dict.fromkeys(FUNCTION_WORDS)
    while len(words) < n_words:
        words[''.join(rng.choice(SYLLABLES, rng.integers(1, 5)))] = None
    return np.array(list(words))


def make_corpus(path, mb, rng, n_words):
    """A JSONL corpus of about mb MB: text (paragraphs of sentences), title, topic, description, in
    a language of n_words pseudo-words."""
    vocab = vocabulary(rng, n_words)
    cdf = np.cumsum(1 / np.arange(1, len(vocab) + 1) ** 1.1)  # Zipf: word k about as frequent as 1/k
    cdf /= cdf[-1]
    topic_words = {t: vocab[rng.choice(np.arange(len(FUNCTION_WORDS), len(vocab)), 300, replace=False)]
                   for t in TOPICS}
    target, size, i = mb * 1e6, 0, 0
    with open(path + '.tmp', 'w') as f:
        while size < target:
            topic = TOPICS[rng.integers(len(TOPICS))]
            paragraphs = []
            for _ in range(rng.integers(2, 6)):
                n = rng.integers(8, 20, size=rng.integers(3, 8))  # words per sentence
                words = vocab[np.searchsorted(cdf, rng.random(n.sum()))]
                topical = rng.random(len(words)) < 0.15  # the topic shows in about one word in seven
                words[topical] = rng.choice(topic_words[topic], topical.sum())
                ends = np.cumsum(n)
                paragraphs.append(' '.join(' '.join(s).capitalize() + '.' for s in np.split(words, ends[:-1])))
            title = ' '.join(w.capitalize() for w in rng.choice(topic_words[topic], rng.integers(1, 4)))
            row = {'title': f'{title} {i}', 'topic': topic, 'description': f'{rng.choice(topic_words[topic])} of '
                   f'{topic.lower()}', 'text': '\n\n'.join(paragraphs)}
            line = json.dumps(row) + '\n'
            f.write(line)
            size, i = size + len(line), i + 1
    os.replace(path + '.tmp', path)


def tree_anon_kb(root):
    """Anonymous memory (KB) of process root and all its descendants, from /proc: proportional set
    sizes, so that the pages a forked worker shares with its parent count once."""
    parent = {}
    for p in os.listdir('/proc'):
        if p.isdigit():
            try:
                with open(f'/proc/{p}/stat') as f:
                    parent[int(p)] = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    tree, total = {root}, 0
    for _ in range(4):  # annotate.py -> datasets workers (-> their helpers)
        tree |= {p for p, pp in parent.items() if pp in tree}
    for p in tree:
        try:
            with open(f'/proc/{p}/smaps_rollup') as f:
                total += next((int(line.split()[1]) for line in f if line.startswith('Pss_Anon:')), 0)
        except OSError:
            pass
    return total


def run_annotate(corpus, out_root, log, annotator, num_proc):
    """annotate.py with this annotator and num_proc worker processes: (wall seconds, max RSS MB of
    the largest process, peak anon MB of the tree, meta.json)."""
    cmd = [sys.executable, 'annotate.py', f'--dataset={corpus}', f'--data_root={out_root}', '--name=bench',
           f'--annotator={annotator}', f'--num_proc={num_proc}']
    if annotator == 'keywords':
        cmd += ['--sft_key=keyword', '--sft_values=']  # SFT slice: any document (keywords are many)
    here = os.path.dirname(os.path.abspath(__file__))
    # its own empty datasets cache: each run parses its JSONL
    env = dict(os.environ, HF_DATASETS_CACHE=os.path.join(out_root, 'hf_cache'))
    t0, peak = time.time(), 0
    with open(log, 'w') as out:
        p = subprocess.Popen(cmd, cwd=here, env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:  # wait4: this child's own rusage (its workers included), not all children's so far
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_anon_kb(p.pid))
            time.sleep(0.1)
    wall = time.time() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        last = (open(log).read().strip().splitlines() or [''])[-1]
        raise UserError(f"annotate.py failed on {corpus} (log: {log}): {last}")
    with open(os.path.join(out_root, 'bench', 'meta.json')) as f:
        meta = json.load(f)
    return wall, usage.ru_maxrss / 1024, peak / 1024, meta


def main():
    check_config(config, positive=('num_proc', 'vocab_words'), choices=dict(annotator=('fields', 'keywords')))
    try:
        sizes = [float(s) for s in sizes_mb.split(',') if s.strip()]
    except ValueError:
        raise UserError(f"sizes_mb must be comma-separated numbers, got '{sizes_mb}'")
    if not sizes or min(sizes) <= 0:
        raise UserError(f"sizes_mb needs at least one size > 0, got '{sizes_mb}'")
    os.makedirs(corpus_dir, exist_ok=True)
    rows = []
    print(f"annotate.py --annotator={annotator} --num_proc={num_proc} on synthetic labeled JSONL, one run each")
    print(f"{'corpus':>9s} {'docs':>8s} {'tokens':>11s} {'wall s':>8s} {'s/MB':>6s} {'max RSS MB':>11s} "
          f"{'peak anon MB':>13s}")
    with tempfile.TemporaryDirectory() as tmp:
        for mb in sizes:
            corpus = os.path.join(corpus_dir, f'corpus_{mb:g}mb_seed{seed}.jsonl')
            if not os.path.exists(corpus):
                print(f"  (making {corpus} ...)", flush=True)
                make_corpus(corpus, mb, np.random.default_rng(seed), vocab_words)
            run_dir = os.path.join(tmp, f'{mb:g}')
            wall, rss, anon, meta = run_annotate(corpus, run_dir, corpus[:-len('.jsonl')] + '.log', annotator, num_proc)
            shutil.rmtree(run_dir)  # the data dir and the datasets cache: as large as the corpus
            s = meta['stats']
            docs, tokens = sum(s['docs'].values()), s['tokens_plain_train'] + s['tokens_plain_val']
            real_mb = os.path.getsize(corpus) / 1e6
            rows.append((real_mb, wall, rss, anon))
            print(f"{real_mb:7.0f}MB {docs:8,d} {tokens:11,d} {wall:8.1f} {wall / real_mb:6.2f} {rss:11.0f} "
                  f"{anon:13.0f}", flush=True)
    if len(rows) > 1:
        (m0, w0, r0, a0), (m1, w1, r1, a1) = rows[0], rows[-1]
        print(f"largest / smallest: corpus x{m1 / m0:.1f}, time x{w1 / w0:.1f}, max RSS x{r1 / r0:.2f}, "
              f"peak anon x{a1 / a0:.2f}")


if __name__ == '__main__':
    main_guard(main)
