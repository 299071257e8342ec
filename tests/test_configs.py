"""The GPU and hub-dataset configs cannot download anything here: each runs for a couple of steps on
a tiny local fixture with the same columns (dataset path and model size overridden), so they cannot rot."""
import ast
import glob
import json
import os
import random
import re

import pytest

from conftest import ROOT, TOPIC_WORDS, run


SHRINK = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=256', '--batch_size=2',
          '--gradient_accumulation_steps=2', '--max_iters=2', '--eval_interval=2', '--eval_iters=1',
          '--device=cpu', '--dtype=float32', '--compile=False', '--progress=False']
SMALL_DATA = ['--sft_docs=6', '--sft_val_docs=2', '--heldout_docs=6', '--vocab_size=400', '--num_proc=1',
              '--val_fraction=0.2']


def fixture(path, columns, n=60, seed=0):
    """Rows with the dataset's columns: stories/web pages made of topic words, plus label columns."""
    rng = random.Random(seed)
    topics = sorted(TOPIC_WORDS)
    with open(path, 'w') as f:
        for i in range(n):
            words = TOPIC_WORDS[topics[i % 4]].split()
            text = '\n\n'.join(' '.join(rng.choice(words) for _ in range(25)) + '.' for _ in range(2))
            row = {c: (text if c in ('story', 'text') else f'{c} {rng.randint(0, 3)}') for c in columns}
            row['topic'] = topics[i % 4] if 'topic' in columns else None
            f.write(json.dumps({k: v for k, v in row.items() if v is not None}) + '\n')
    return path


@pytest.fixture(scope='module')
def stories(tmp_path_factory):
    root = tmp_path_factory.mktemp('ss')
    data = fixture(root / 'stories.jsonl', ['story', 'topic', 'theme', 'style', 'feature', 'grammar', 'persona',
                                            'word_count'])
    run('annotate.py', 'config/simplestories.py', f'--dataset={data}', f'--data_root={root}', *SMALL_DATA)
    return root / 'simplestories'


@pytest.mark.parametrize('size', ['gpt_l6', 'gpt_l8', 'gpt2_small'])
def test_gpu_size_configs_run_on_simplestories_fixture(stories, tmp_path, size):
    meta = json.load(open(stories / 'meta.json'))
    assert meta['categorical_keys'][:1] == ['topic'] and len(meta['sft_values']) == 2  # top:2
    r = run('pretrain.py', 'config/simplestories.py', f'config/{size}.py', f'--data_dir={stories}',
            f'--out_dir={tmp_path / "pre"}', '--annotated=True', *SHRINK)
    assert 'done: 2 iters' in r.stdout
    r = run('anchor_sft.py', 'config/simplestories.py', f'config/{size}.py', f'--data_dir={stories}',
            f'--init_dir={tmp_path / "pre"}', f'--out_dir={tmp_path / "sft"}', '--method=anchored', '--sft_iters=2',
            '--sft_eval_interval=2', '--sft_batch_size=2', '--device=cpu', '--dtype=float32',
            '--sft_compile=False', '--progress=False', '--gradient_accumulation_steps=1')
    assert 'done: 2 iters' in r.stdout


def test_fineweb_config_runs_on_web_fixture(tmp_path):
    data = fixture(tmp_path / 'web.jsonl', ['text', 'url', 'id'])
    run('annotate.py', 'config/fineweb_edu.py', f'--dataset={data}', f'--data_root={tmp_path}', *SMALL_DATA)
    meta = json.load(open(tmp_path / 'fineweb_edu' / 'meta.json'))
    assert meta['annotator'] == 'keywords' and meta['annotation_keys'] == ['keyword']
    r = run('pretrain.py', 'config/fineweb_edu.py', 'config/gpt2_small.py', f'--data_dir={tmp_path / "fineweb_edu"}',
            f'--out_dir={tmp_path / "pre"}', '--annotated=True', *SHRINK)
    assert 'done: 2 iters' in r.stdout


def recipe_lines(path, keys):
    """{key: [the source lines of each assignment of key]} of a config file, for the recipe's keys."""
    src = open(path).read().splitlines()
    lines = {}
    for node in ast.parse('\n'.join(src)).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in keys:
                    lines.setdefault(t.id, []).append('\n'.join(src[node.lineno - 1:node.end_lineno]))
    return lines


def test_every_config_keeps_the_anchored_recipe():
    """anchor_sft.py's defaults are the anchored recipe, and every config file inherits it: a recipe
    key resolves to its default unless the file sets it on purpose, on a line that says
    `# recipe: <why>` and to another value (a plain copy could drift unseen: one once trained the GPU
    sizes at opening_weight=0, which breaks the format)."""
    import anchor_sft
    from configurator import configure
    assert {'anchor_prior', 'distill_weight', 'opening_weight', 'replay_docs'} <= set(anchor_sft.RECIPE)
    default = {k: anchor_sft.config[k] for k in anchor_sft.RECIPE}
    paths = sorted(glob.glob(os.path.join(ROOT, 'config', '*.py')))
    assert len(paths) > 5
    for path in paths:
        resolved = configure(dict(anchor_sft.config), [path])
        marked = recipe_lines(path, anchor_sft.RECIPE)
        for key in anchor_sft.RECIPE:
            for line in marked.get(key, []):
                assert re.search(r'#\s*recipe:\s*\S', line), f"{path}: {key} set without '# recipe: <why>': {line}"
            if key in marked:
                assert resolved[key] != default[key], f"{path}: {key} = {default[key]} is the default: drop the line"
            else:
                assert resolved[key] == default[key], (path, key)
