"""The whole pipeline end to end on a tiny corpus: study.py runs every stage and arm, writes the
report with every metric and the headline, and a re-run skips everything."""
import json
import os

import pytest

from conftest import make_corpus, run

TINY_DATA = """
dataset = {corpus!r}
text_column = 'text'
fields = 'topic:topic,entity:title,description:description'
sft_values = 'Arts,Science'
sft_docs = 12
sft_val_docs = 4
heldout_docs = 40
val_fraction = 0.2
vocab_size = 400
num_proc = 1
"""
TINY_MODEL = """
n_layer = 1
n_head = 2
n_embd = 32
block_size = 256
batch_size = 4
max_iters = 20
warmup_iters = 2
learning_rate = 3e-3
eval_interval = 20
eval_iters = 2
log_interval = 10
sft_iters = 6
sft_batch_size = 4
sft_eval_interval = 6
sft_warmup_iters = 1
progress = False
device = 'cpu'
bootstrap = 50
anchor_prior = 'distill'
replay_rows = 2
replay_docs = True
replay_lr_frac = 0.3
sft_dropout = 0.1
"""
TINY_CONFIG = TINY_DATA + TINY_MODEL
# study.py's own keys can live in the same config file as every stage's
STUDY_KEYS = """
out_root = {out!r}
data_root = {data!r}
data_name = 'tiny'
num_samples = 3
max_new_tokens = 24
"""


@pytest.mark.slow
def test_study_end_to_end_and_rerun_skips(tmp_path):
    """The scale-up form of the study on a CPU: a data config, then a model config, passed through to
    every stage (under torchrun with --nproc: tests/test_resume.py). Two seeds: every arm of the
    headline and the decomposition but the two ablations post-trained and sampled at each, from one
    pretrained pair; the report's figures are means over the seeds with the value of each."""
    corpus = make_corpus(tmp_path / 'corpus.jsonl', n_docs=120)
    data, model = tmp_path / 'tiny_data.py', tmp_path / 'tiny_model.py'
    data.write_text(TINY_DATA.format(corpus=str(corpus))
                    + STUDY_KEYS.format(out=str(tmp_path / 'out'), data=str(tmp_path / 'data')))
    model.write_text(TINY_MODEL)
    args = [str(data), str(model), '--decomposition=True', '--seeds=2']
    run('study.py', *args, timeout=900)
    out = tmp_path / 'out'
    report = out / 'report'
    md = (report / 'report.md').read_text()
    seeded = ['base', 'annotated-base', 'sft', 'sft-replay', 'sft-distill', 'anchored', 'anchored-mask',
              'anchored-replay', 'anchored-noann']
    arms = seeded + ['anchored-prior', 'anchored-plain']
    for arm in arms:  # an arm at one seed is marked: its CIs hold no training variance
        assert f'| {arm} |' in md or f'| {arm}\u2020 |' in md, arm
    for metric in ('entropy_topic', 'dissimilarity', 'vendi', 'distinct2', 'gzip', 'quality'):
        assert metric in md
    for control in ('sft', 'sft-replay', 'sft-distill'):  # the headline: against each control
        assert f'anchored vs {control} on entropy_topic: difference' in md
    assert 'topic narrowing' in md and '## How this study ran' in md and 'accuracy' in md.lower()
    assert '## Competence' in md
    rep = json.loads((report / 'report.json').read_text())
    assert set(rep['arms']) == set(arms) and rep['prompts'] == 14
    assert all(rep['arms'][a]['replicates'] == 2 for a in seeded)
    assert all(rep['arms'][a]['replicates'] == 1 for a in arms if a not in seeded) and rep['study']['seeds'] == 2
    assert rep['study']['environment']['torch'] and rep['study']['stage_seconds']
    assert (report / 'diversity_quality.png').stat().st_size > 0
    # one pretrained pair; the post-trainings and samples of each seed in their own directories
    assert sorted(p.name for p in out.glob('pretrain*')) == ['pretrain1337']
    for s in (1337, 1338):
        for run_name in ('sft', 'sft-replay', 'sft-distill', 'anchored', 'anchored-mask', 'anchored-replay'):
            ck = json.load(open(out / f'seed{s}' / run_name / 'log.json'))
            assert ck[-1]['iter'] == 6  # the fixed SFT length
        rows = [json.loads(l) for l in open(out / 'samples' / f'seed{s}' / 'anchored.jsonl')]
        assert all(r['annotation'] is not None and '<|' not in r['text'] for r in rows)
        noann = [json.loads(l) for l in open(out / 'samples' / f'seed{s}' / 'anchored-noann.jsonl')]
        assert all(r['annotation'] == '' for r in noann)
    assert not (out / 'seed1338' / 'anchored-plain').exists()  # the ablations at ablation_seeds = 1
    a, b = (open(out / 'samples' / f'seed{s}' / 'sft.jsonl').read() for s in (1337, 1338))
    assert a != b
    # a re-run finds every stage up to date
    r2 = run('study.py', *args, timeout=600)
    assert 'ran: nothing (all up to date)' in r2.stdout
    # annotate, 2 pretrainings, 6 SFTs a seed, 1 ablation SFT, 9 samplings a seed, 2 ablation samplings,
    # the report (one stage at a time: no embed stages, the report stage embeds every sample)
    assert r2.stdout.count('up to date, skipped') == 1 + 2 + 2 * 6 + 1 + 2 * 9 + 2 + 1
    assert json.load(open(out / 'seed1337' / 'anchored-plain' / 'sft_set.json'))['rows'] > 0


def test_study_graph_the_arms_and_their_recipes(tmp_path):
    """The stages the laptop study runs, without running them: the headline arms at every seed, the
    temperature sweep of the controls and the anchored arm, and what each post-training changes of
    the config's recipe (one ingredient a rung; the strongest control distills toward the plain model)."""
    import study
    seeds, sampling = study.Seeds(seed=1337, seeds=2, pretrain_seeds=1, ablation_seeds=1), study.Sampling(32, 128, 1.0)
    st = study.Study(str(tmp_path / 'out'), str(tmp_path / 'data'), str(tmp_path / 'report'), seeds, sampling)
    anchored, controls, ladder = study.main_study(st, [0.7], arms='', decomposition=False, variants=[])
    assert anchored == ['anchored'] and controls == ['sft', 'sft-replay', 'sft-distill'] and ladder == ''
    names = set(st.stages)
    for s in (1337, 1338):
        for arm in study.HEADLINE + tuple(f'{a}@t0.7' for a in study.SWEPT):
            assert f'sample-{arm}/{s}' in names, arm
    assert not any('anchored-mask' in n or 'noann' in n for n in names)  # the decomposition is its own command
    args = {n.split('/')[0]: st.stages[n].args for n in names if st.stages[n].script == 'anchor_sft.py'}
    assert '--anchor_prior=mask' in args['sft'] and '--replay_rows=0' in args['sft']
    assert '--anchor_prior=mask' in args['sft-replay'] and not any('replay_rows' in a for a in args['sft-replay'])
    assert not any('anchor_prior' in a or 'replay_rows' in a for a in args['sft-distill'] + args['anchored'])
    assert all(f'--init_dir={tmp_path / "out" / "pretrain1337" / "base"}' in args[r]
               for r in ('sft', 'sft-replay', 'sft-distill'))
    # every training stage names the checkpoint it resumes from, in its own out_dir
    trains = [st.stages[n] for n in names if st.stages[n].script in ('pretrain.py', 'anchor_sft.py')]
    assert trains and all(t.checkpoint == t.outputs[0] and f'--out_dir={os.path.dirname(t.checkpoint)}' in t.args
                          for t in trains)
    assert '--temperature=0.7' in st.stages['sample-sft@t0.7/1337'].args
    assert '--temperature=1.0' in st.stages['sample-sft/1337'].args
    # a subset of arms runs only what it needs: base and sft, no annotated model at all
    sub = study.Study(str(tmp_path / 'out'), str(tmp_path / 'data'), str(tmp_path / 'report'), seeds, sampling)
    study.main_study(sub, [], arms='base,sft', decomposition=False, variants=[])
    assert sorted(n.split('/')[0] for n in sub.stages) == ['embed', 'embed', 'pretrain-plain', 'sample-base',
                                                           'sample-base', 'sample-sft', 'sample-sft', 'sft', 'sft']
    # one stage at a time (jobs 1) nothing runs beside an embed stage: the report stage embeds
    alone = study.Study(str(tmp_path / 'out'), str(tmp_path / 'data'), str(tmp_path / 'report'), seeds, sampling,
                        embed_beside=False)
    study.main_study(alone, [], arms='base,sft', decomposition=False, variants=[])
    assert set(alone.stages) == set(sub.stages) - {'embed/seed1337', 'embed/seed1338'}


@pytest.mark.slow
def test_sft_entropy_sweep(tmp_path):
    """SFT sets of 1 and 2 topics of equal size: their entropy is recorded, and the report gets the
    collapse-against-entropy table and plot."""
    corpus = make_corpus(tmp_path / 'corpus.jsonl', n_docs=120)
    cfg = tmp_path / 'tiny.py'  # enough SFT val rows that one topic alone still has some
    cfg.write_text(TINY_CONFIG.format(corpus=str(corpus)).replace('sft_val_docs = 4', 'sft_val_docs = 12'))
    run('study.py', str(cfg), f'--out_root={tmp_path / "out"}', f'--data_root={tmp_path / "data"}',
        '--data_name=tiny', '--num_samples=3', '--max_new_tokens=16', '--sft_topic_counts=1,2',
        '--sweep_docs=36', '--sweep_rows=8', '--jobs=2', timeout=600)
    sets = {k: json.load(open(tmp_path / 'out' / 'seed1337' / f'sft-k{k}' / 'sft_set.json')) for k in (1, 2)}
    assert sets[1]['entropy_bits'] == 0 and len(sets[1]['counts']) == 1 and sets[1]['rows'] == 8
    assert sets[2]['entropy_bits'] > 0.5
    md = (tmp_path / 'out' / 'report' / 'report.md').read_text()
    assert "semantic entropy" in md and '| 1 | 0.00 |' in md
    for metric in ('entropy_topic', 'dissimilarity'):  # one table and plot per headline metric
        assert f'Collapse on {metric}:' in md
        assert (tmp_path / 'out' / 'report' / f'entropy_sweep_{metric}.png').exists()
    meta = json.load(open(tmp_path / 'data' / 'tiny-sweep' / 'meta.json'))
    assert len(meta['sft_values']) == 2  # sweep_topics '': the two most common topics (top:2)
    assert set(sets[2]['counts']) == set(meta['sft_values']) and set(sets[1]['counts']) == {meta['sft_values'][0]}
    # jobs=2: the training and sampling stages ran in pairs, 1 thread each, their output in logs/
    for name in ('pretrain-plain/1337', 'pretrain-annotated/1337', 'sft-k1/1337', 'anchored-k2/1337'):
        log = (tmp_path / 'out' / 'logs' / f'{name}.log').read_text()
        assert 'done:' in log
    assert 'samples (anchored)' in (tmp_path / 'out' / 'logs' / 'sample-anchored-k1' / '1337.log').read_text()


STAGE = """import sys, time
name, seconds, trace = sys.argv[2], float(sys.argv[3]), sys.argv[4]
open(trace, 'a').write(f'start {name}\\n')
time.sleep(seconds)
open(trace, 'a').write(f'end {name}\\n')
sys.exit(1 if name == 'bad' else 0)
"""


def test_stages_start_as_soon_as_their_deps_finish(tmp_path):
    """stages.Stages.run with jobs=2: a stage starts when the stages it depends on have finished,
    not when a whole batch has, so it runs beside a long independent one; a failed stage's dependents
    never start, and the error names it."""
    import pytest
    from common import UserError
    from stages import Stage, Stages
    script, trace = tmp_path / 'stage.py', tmp_path / 'trace.txt'
    script.write_text(STAGE)
    cfg = tmp_path / 'c.py'
    cfg.write_text('')
    stage = lambda name, seconds, deps=(): Stage(name, str(script), [name, seconds, trace], [], list(deps))
    st = Stages(str(tmp_path / 'out'), [str(cfg)], jobs=2)
    st.run([stage('long', 1.5), stage('short', 0.1), stage('after', 0.1, ['short'])])
    events = trace.read_text().split('\n')[:-1]
    at = events.index
    assert at('end short') < at('start after') < at('end after') < at('end long')  # beside 'long'
    assert (tmp_path / 'out' / 'logs' / 'after.log').exists() and set(st.stamps) == {'long', 'short', 'after'}
    trace.write_text('')
    with pytest.raises(UserError, match="stage 'bad' failed"):
        st.run([stage('bad', 0.1), stage('next', 0.1, ['bad'])])
    assert 'start next' not in trace.read_text() and 'bad' not in st.stamps
    # one at a time: of two ready stages, the one that heads the costlier chain starts first
    trace.write_text('')
    one = Stages(str(tmp_path / 'out1'), [str(cfg)], jobs=1)
    one.run([stage('a', 0.1), stage('b', 0.1), Stage('c', str(script), ['c', 0.1, trace], [], ['b'], cost=4),
             stage('d', 0.1, ['a'])])
    assert [e for e in trace.read_text().split('\n') if e.startswith('start')] == \
        ['start b', 'start c', 'start a', 'start d']


def test_a_stage_stamp_covers_every_module_it_imports():
    """A change in any module a stage script imports, however indirectly, reruns the stage."""
    from stages import code_files
    assert {'annotate.py', 'corpus.py', 'annotators.py', 'streams.py', 'formats.py'} <= set(code_files('annotate.py'))
    assert {'judges.py', 'plots.py', 'report.py', 'metrics.py'} <= set(code_files('diversity.py'))
    assert 'diversity.py' not in code_files('pretrain.py')
