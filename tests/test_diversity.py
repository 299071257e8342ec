"""metrics.py, diversity.py and its modules (judges, figures, numfmt, plots): metrics on hand-made
inputs with known answers, the collapse arithmetic, the competence figures, bad input, and one small
end-to-end run with the bundled all-MiniLM-L6-v2 (CPU, offline)."""
import json
import math
import random
import sys

import numpy as np
import pytest

from conftest import ROOT, run

sys.path.insert(0, ROOT)
import figures  # noqa: E402
import judges  # noqa: E402
import metrics as dv  # noqa: E402
import numfmt  # noqa: E402
import plots  # noqa: E402


OPENING = 'Here is a short article for you.'
WORDS = {
    'Cooking': 'recipe oven flour bake butter sugar dough kitchen simmer spice'.split(),
    'Astronomy': 'planet star orbit telescope galaxy comet nebula moon eclipse cosmic'.split(),
    'Football': 'goal striker match league referee penalty stadium keeper midfield tackle'.split(),
}


# -----------------------------------------------------------------------------
# metrics

def test_identical_samples_have_no_diversity():
    emb = np.tile(np.array([[0.3, -1.2, 2.0, 0.5]]), (5, 1))
    assert dv.dissimilarity(emb) == pytest.approx(0.0, abs=1e-9)
    assert dv.vendi(emb) == pytest.approx(1.0, abs=1e-6)
    assert dv.entropy_bits(['Arts'] * 5) == 0.0


def test_orthogonal_samples():
    emb = np.eye(4)  # cos = 0 for every pair: dissimilarity 1, vendi = n
    assert dv.dissimilarity(emb) == pytest.approx(1.0)
    assert dv.vendi(emb) == pytest.approx(4.0)


def test_dissimilarity_worked_example():
    # vectors at 0, 90 and 180 degrees: 1-cos = 1 (0,90), 2 (0,180), 1 (90,180) -> mean 4/3
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert dv.dissimilarity(emb) == pytest.approx(4 / 3)


@pytest.mark.parametrize('k', [1, 2, 3, 4, 8])
def test_entropy_of_k_equal_labels_is_log2_k(k):
    labels = [f'c{i}' for i in range(k)] * 3
    assert dv.entropy_bits(labels) == pytest.approx(math.log2(k))


def test_entropy_worked_example():
    # p = (1/2, 1/4, 1/4): 0.5*1 + 0.25*2 + 0.25*2 = 1.5 bits
    assert dv.entropy_bits(['a', 'a', 'b', 'c']) == pytest.approx(1.5)


def test_distinct2_worked_example():
    # "the cat sat" -> (the cat) (cat sat); "the cat ran" -> (the cat) (cat ran): 3 distinct of 4
    assert dv.distinct_n(['the cat sat', 'the cat ran']) == pytest.approx(3 / 4)
    assert dv.distinct_n(['a b', 'a b', 'a b']) == pytest.approx(1 / 3)
    assert dv.distinct_n(['one', '']) == 0.0  # no bigrams at all


def test_gzip_diversity_higher_for_varied_text():
    same = ['the quick brown fox jumps over the lazy dog'] * 20
    varied = [' '.join(random.Random(i).sample(WORDS['Cooking'] + WORDS['Astronomy'], 9)) for i in range(20)]
    assert dv.gzip_diversity(varied) > dv.gzip_diversity(same)
    assert dv.gzip_diversity(['']) == 0.0


def test_annotation_values_first_wins():
    from formats import annotation_values
    assert annotation_values('topic:Arts entity:Mona_Lisa topic:Other') == {'topic': 'Arts', 'entity': 'Mona_Lisa'}
    assert annotation_values(None) == {}


def test_expected_entropy_for_n_draws():
    rng = np.random.default_rng(0)
    assert dv.expected_entropy([10], 8, rng) == 0.0  # one value: always 0 bits
    # 2 equally likely values, n=2 draws: same value w.p. 1/2 (0 bits), different w.p. 1/2 (1 bit) -> 0.5
    assert dv.expected_entropy([5, 5], 2, rng, reps=20000) == pytest.approx(0.5, abs=0.02)


# -----------------------------------------------------------------------------
# collapse definitions (docs/METHOD.md), numbers worked by hand

def test_collapse_definitions():
    d_base, d_sft, d_anch = 2.0, 1.0, 1.8
    # collapse(sft) = (2.0 - 1.0) / 2.0 = 0.5; collapse(anchored) = (2.0 - 1.8) / 2.0 = 0.1
    assert dv.collapse(d_base, d_sft) == pytest.approx(0.5)
    assert dv.collapse(d_base, d_anch) == pytest.approx(0.1)
    # collapse_ratio = 0.5 / 0.1 = 5 ("5x less collapse")
    assert dv.collapse_ratio(0.5, 0.1) == pytest.approx(5.0)
    # gap_closed = (1.8 - 1.0) / (2.0 - 1.0) = 0.8
    assert dv.gap_closed(d_base, d_sft, d_anch) == pytest.approx(0.8)
    assert dv.collapse(d_base, d_base) == 0.0


def test_collapse_divisions_by_zero_do_not_crash():
    assert math.isnan(dv.collapse(0.0, 0.0))
    assert dv.collapse_ratio(0.5, 0.0) == math.inf
    assert math.isnan(dv.gap_closed(1.0, 1.0, 1.0))
    assert numfmt.fmt(math.nan) == 'n/a' and numfmt.fmt(math.inf) == 'inf'
    assert numfmt.jsonable({'a': [math.nan, -math.inf, np.float32(0.5)]}) == {'a': ['nan', '-inf', 0.5]}


def test_collapse_on_arrays_of_resamples():
    out = dv.collapse(np.array([2.0, 4.0]), np.array([1.0, 1.0]))
    assert np.allclose(out, [0.5, 0.75])


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(1)
    vals = rng.normal(3.0, 1.0, size=50)
    idx = rng.integers(0, 50, size=(1000, 50))
    lo, hi = dv.ci95(vals[idx].mean(axis=1))
    assert lo < vals.mean() < hi
    assert hi - lo < 1.5
    assert all(math.isnan(x) for x in dv.ci95([math.nan, math.nan]))


def fig(value, lo, hi):
    return dict(value=value, ci=[lo, hi], seeds=None)


def comparison(diff, gap, ratio, c_control, c_arm):
    return dict(diff=fig(*diff), gap=fig(*gap), ratio=fig(*ratio), control_collapse=fig(*c_control),
                arm_collapse=fig(*c_arm))


def test_headline_sentence_is_truthful():
    good = comparison((0.02, 0.01, 0.03), (0.8, 0.6, 0.9), (5.0, 3.0, 9.0), (0.05, 0.04, 0.06), (0.01, 0.005, 0.02))
    s = figures.headline_sentence('dissimilarity', 'anchored', 'sft', good)
    assert s == ('anchored vs sft on dissimilarity: difference +0.020 [+0.010, +0.030], gap closed 80% [60%, 90%], '
                 'collapse ratio 5.0x [3.0, 9.0].')
    weak = comparison((0.01, -0.01, 0.03), (0.5, -0.2, 1.0), (2.0, -1.0, 9.0), (0.05, 0.04, 0.06), (0.02, 0, 0.05))
    assert 'includes 0: no difference is resolved' in figures.headline_sentence('d', 'anchored', 'sft', weak)
    worse = comparison((-0.02, -0.03, -0.01), (-0.5, -1, -0.2), (0.5, 0.2, 0.9), (0.05, 0.04, 0.06), (0.1, 0.08, 0.12))
    assert 'Reversed: anchored is less diverse than sft' in figures.headline_sentence('d', 'anchored', 'sft', worse)
    flat = comparison((0.01, 0.0, 0.02), (2.0, -5, 9), (-1.0, -9, 9), (-0.01, -0.02, 0.0), (0.01, 0.0, 0.02))
    assert 'sft does not collapse on d' in figures.headline_sentence('d', 'anchored', 'sft', flat)
    # the anchored arm's collapse is near zero: the ratio is ill-conditioned, the difference is not
    near0 = comparison((0.03, 0.02, 0.04), (0.9, 0.8, 1.1), (9.0, -20, 30), (0.03, 0.02, 0.04), (0.003, -0.01, 0.01))
    assert 'ratio is ill-conditioned' in figures.headline_sentence('d', 'anchored', 'sft', near0)


# -----------------------------------------------------------------------------
# the two-level bootstrap (seeds, then prompts within each), on hand-made numbers

def test_two_level_bootstrap_resamples_seeds():
    """Two seeds, no prompt variance: a resample's mean is 1 (both draws seed 0), 3 (both seed 1) or
    2, with probabilities 1/4, 1/4, 1/2; a bootstrap over prompts alone would give a zero-width CI."""
    values = np.array([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    draws = dv.bootstrap_draws([2], 3, 20000, np.random.default_rng(0))
    boot = dv.bootstrap_means(values, draws)
    assert set(np.round(boot, 9)) == {1.0, 2.0, 3.0}
    assert np.mean(boot == 1.0) == pytest.approx(0.25, abs=0.01)
    assert np.mean(boot == 2.0) == pytest.approx(0.5, abs=0.01)
    assert dv.ci95(boot) == [1.0, 3.0]


def test_two_level_bootstrap_resamples_prompts_within_seeds():
    """The nested design (test_report_stats.py: the crossed one). One seed: the ordinary bootstrap over
    prompts. Two prompts 0 and 2: the mean of a resample is 0, 1 or 2 with probabilities 1/4, 1/2,
    1/4; the variance of the mean is 1/2 of the prompts' (1)."""
    draws = dv.bootstrap_draws([1], 2, 20000, np.random.default_rng(1), 'nested')
    boot = dv.bootstrap_means(np.array([[0.0, 2.0]]), draws)
    assert np.mean(boot == 1.0) == pytest.approx(0.5, abs=0.01) and np.var(boot) == pytest.approx(0.5, abs=0.02)
    # two seeds x two prompts, values seed + prompt (each 0 or 1): both levels add their variance, the
    # seeds' Var((s1 + s2) / 2) = 1/8 and the prompts' within them Var of the mean of 4 draws = 1/16
    values = np.array([[0.0, 1.0], [1.0, 2.0]])
    boot = dv.bootstrap_means(values, dv.bootstrap_draws([2], 2, 40000, np.random.default_rng(2), 'nested'))
    assert boot.mean() == pytest.approx(1.0, abs=0.01) and np.var(boot) == pytest.approx(3 / 16, abs=0.01)


def test_two_level_bootstrap_pairs_arms():
    """Arms with the same number of seeds share the draws: an arm that is another plus a constant
    differs from it by exactly that constant in every resample (a zero-width CI of the difference);
    an arm with one seed takes the prompt draws of the first slot."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 14))
    draws = dv.bootstrap_draws([3, 3, 1], 14, 500, rng)
    diff = dv.bootstrap_means(a + 0.25, draws) - dv.bootstrap_means(a, draws)
    assert np.allclose(diff, 0.25)
    one = dv.bootstrap_means(a[:1], draws)
    assert np.allclose(one, a[0][draws[3][1][:, 0]].mean(axis=1))
    d = dv.derived(lambda x, y: y - x, [a.mean(), (a + 0.25).mean()], [dv.bootstrap_means(a, draws),
                   dv.bootstrap_means(a + 0.25, draws)], [a.mean(axis=1), (a + 0.25).mean(axis=1)])
    assert d['value'] == pytest.approx(0.25) and d['ci'] == pytest.approx([0.25, 0.25])
    assert d['seeds'] == pytest.approx([0.25] * 3)


# -----------------------------------------------------------------------------
# the script: bad input and an end-to-end run

def doc(topic, rng, n=14):
    return ' '.join(rng.choice(WORDS[topic]) for _ in range(n)) + '.'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('data')
    rng = random.Random(0)
    meta = dict(annotation_keys=['topic', 'entity'], categorical_keys=['topic'], assistant_opening=OPENING,
                sft_key='topic', sft_values=['Cooking'])
    (d / 'meta.json').write_text(json.dumps(meta))
    (d / 'words.txt').write_text('\n'.join(sorted({w.lower() for ws in WORDS.values() for w in ws} | {'here', 'is'}))
                                 + '\n')
    rows = [dict(text=doc(t, rng), annotation=f'topic:{t} entity:Thing_{i}')
            for i in range(42) for t in [list(WORDS)[i % 3]]]
    (d / 'heldout.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    prompts = [dict(prompt_id=p, prompt=f'write about {p}', in_sft=p != 'p3') for p in ('p1', 'p2', 'p3')]
    (d / 'eval_prompts.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in prompts))
    return d


def write_samples(path, topics_per_prompt, annotated, opening=True, prompts=('p1', 'p2', 'p3')):
    rng = random.Random(str(path))
    rows = []
    for p in prompts:
        for j, t in enumerate(topics_per_prompt):
            text = (OPENING + '\n' if opening else '') + doc(t, rng)
            rows.append(dict(prompt_id=p, prompt=f'write about {p}', sample_id=j,
                             annotation=f'topic:{t} entity:X_{j}' if annotated else None,
                             text=text, tokens=len(text.split()), finished=True))
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return path


def report(tmp_path, data_dir, samples, *extra):
    return run('diversity.py', f'--samples={samples}', f'--data_dir={data_dir}', f'--out_dir={tmp_path / "report"}',
               *extra, check=False, timeout=120)


def assert_one_line_error(r, words):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:'), r.stderr
    assert words in lines[0]


def test_missing_field(tmp_path, data_dir):
    good = write_samples(tmp_path / 'a.jsonl', ['Cooking', 'Football'], False)
    rows = [json.loads(x) for x in good.read_text().splitlines()]
    del rows[2]['text']
    bad = tmp_path / 'b.jsonl'
    bad.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    r = report(tmp_path, data_dir, f'base={good},sft={bad}')
    assert_one_line_error(r, "no field 'text'")
    assert not (tmp_path / 'report').exists()


def test_empty_file(tmp_path, data_dir):
    good = write_samples(tmp_path / 'a.jsonl', ['Cooking', 'Football'], False)
    (tmp_path / 'empty.jsonl').write_text('')
    assert_one_line_error(report(tmp_path, data_dir, f'base={good},sft={tmp_path / "empty.jsonl"}'), 'empty')


def test_different_prompt_sets(tmp_path, data_dir):
    a = write_samples(tmp_path / 'a.jsonl', ['Cooking', 'Football'], False)
    b = write_samples(tmp_path / 'b.jsonl', ['Cooking', 'Football'], False, prompts=('p1', 'p2', 'p9'))
    assert_one_line_error(report(tmp_path, data_dir, f'base={a},sft={b}'), 'different prompt ids')


def test_bad_samples_spec(tmp_path, data_dir):
    assert_one_line_error(report(tmp_path, data_dir, 'out/x.jsonl'), 'arm=path')
    assert_one_line_error(report(tmp_path, data_dir, f'base={tmp_path}/nope.jsonl'), 'not found')


def test_end_to_end(tmp_path, data_dir):
    topics = list(WORDS)
    base = write_samples(tmp_path / 'base.jsonl', [topics[i % 3] for i in range(6)], False, opening=False)
    sft = write_samples(tmp_path / 'sft.jsonl', ['Cooking'] * 5 + ['Football'], False)
    sft2 = write_samples(tmp_path / 'sft2.jsonl', ['Cooking'] * 4 + ['Football', 'Astronomy'], False)
    anch = write_samples(tmp_path / 'anch.jsonl', [topics[i % 3] for i in range(5)] + ['Cooking'], True)
    t08 = write_samples(tmp_path / 't08.jsonl', ['Cooking'] * 6, False)
    noann = write_samples(tmp_path / 'noann.jsonl', ['Cooking'] * 6, False)
    rows = [json.loads(x) for x in noann.read_text().splitlines()]
    for r in rows[::3]:  # 2 samples of 6 per prompt write an annotation into the response
        r['text'] = r['text'].replace('\n', '\ntopic:Football ', 1)
    noann.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    # sft and anchored have two replicates (seeds), base one
    r = report(tmp_path, data_dir, f'base={base},sft={sft},sft={sft2},anchored={anch},anchored={anch},sft@t0.8={t08},'
               f'anchored-noann={noann}', '--bootstrap=200', '--control_arms=sft',
               '--ladder=sft,sft-x;anchored,anchored-x')
    assert r.returncode == 0, r.stderr
    out = tmp_path / 'report'
    md = (out / 'report.md').read_text()
    assert ('| arm | samples/prompt | entropy_topic | dissimilarity | vendi | distinct2 | gzip | bow_entropy_topic |'
            in md)
    assert 'anchored vs sft on entropy_topic: difference +' in md and 'replicates (training seeds) per arm' in md
    rep = json.loads((out / 'report.json').read_text())
    m = rep['arms']
    assert m['sft']['replicates'] == 2 and m['base']['replicates'] == 1 and len(m['sft']['paths']) == 2
    assert m['base']['metrics']['format_rate']['mean'] == 0.0 and m['sft']['metrics']['quality']['mean'] == 1.0
    # the mean over seeds, and the value of each seed
    sh = m['sft']['metrics']['sft_share']
    assert len(sh['seeds']) == 2 and sh['mean'] == pytest.approx(np.mean(sh['seeds']))
    # distinctive words: the judge should separate the 3 topics, and base is more diverse than sft
    assert rep['judge']['topic']['accuracy'] >= 0.8 and rep['bow_judge']['topic']['accuracy'] >= 0.8
    assert rep['bow_judge']['topic']['test_docs'] == rep['judge']['topic']['test_docs']  # the same split
    assert m['base']['metrics']['judges_agree_topic']['mean'] > 0.8
    assert m['anchored']['metrics']['bow_fidelity_topic']['mean'] > 0.8
    assert '| bag of words | topic |' in md and '| embedding | topic |' in md
    v = rep['headline']['judge_verdicts']
    assert [x['metric'] for x in v] == ['entropy_topic', 'sft_share'] and all(x['same'] for x in v)
    sd = rep['headline']['share_diff']['sft_share']['sft']
    assert sd['value'] == pytest.approx(m['anchored']['metrics']['sft_share']['mean']
                                        - m['sft']['metrics']['sft_share']['mean'])
    groups = rep['prompt_groups']['groups']
    assert {g: d['prompts'] for g, d in groups.items()} == {'all': 3, 'in_sft': 2, 'held_out': 1}
    assert groups['all']['narrowing']['sft_share']['sft']['value'] == rep['headline']['narrowing']['sft']['value']
    assert "| figure | all prompts (3) | the SFT set's prompts (2) | held-out prompts (1) |" in md
    assert rep['headline']['bow_narrowing']['sft']['value'] == pytest.approx(
        m['sft']['metrics']['bow_sft_share']['mean'] - m['base']['metrics']['bow_sft_share']['mean'])
    assert m['base']['metrics']['entropy_topic']['mean'] > m['sft']['metrics']['entropy_topic']['mean']
    assert 'fidelity_topic' in m['anchored']['metrics'] and 'ann_entropy_topic' not in m['sft']['metrics']
    c = rep['comparisons']['entropy_topic']['anchored']['sft']
    assert c['gap']['value'] > 0.5 and c['diff']['value'] > 0 and len(c['diff']['seeds']) == 2
    assert c['diff']['value'] == pytest.approx(m['anchored']['metrics']['entropy_topic']['mean']
                                               - m['sft']['metrics']['entropy_topic']['mean'])
    # competence: sft is judged to be mostly the SFT set's topic (Cooking), base a third of the time
    assert m['sft']['metrics']['sft_share']['mean'] > 0.6 > 0.4 > m['base']['metrics']['sft_share']['mean']
    narrow = rep['headline']['narrowing']
    assert narrow['sft']['value'] == pytest.approx(m['sft']['metrics']['sft_share']['mean']
                                                   - m['base']['metrics']['sft_share']['mean'])
    assert m['base']['metrics']['fluency']['mean'] == 1.0  # every word is a corpus word
    # the leaking samples are counted, not scored
    assert m['anchored-noann']['metrics']['leak_rate']['mean'] == pytest.approx(1 / 3)
    assert m['anchored-noann']['scored'] == 12 and m['anchored-noann']['samples'] == 18 and m['sft']['scored'] == 36
    assert m['anchored-noann']['labels']['topic'] == {'Cooking': 1.0}
    assert '| anchored-noann† | 12 of 18 | 33% |' in md
    lad = rep['ladder']['annotation']
    assert len(lad) == 1 and lad[0]['figures']['sft_share']['value'] == pytest.approx(
        m['anchored']['metrics']['sft_share']['mean'] - m['sft']['metrics']['sft_share']['mean'])
    assert '| annotation: anchored - sft | ' in md and rep['ladder']['steps'] == {'plain': [], 'annotated': []}
    assert '## Competence' in md and md.index('## Competence') < md.index('## Arms')
    # the headline: both of the paper's metrics, then topic narrowing
    assert len(rep['headline']['sentences']) == 3 and 'on dissimilarity' in rep['headline']['sentences'][1]
    assert 'topic narrowing' in rep['headline']['sentences'][2]
    assert rep['environment']['torch'] and rep['environment']['cores'] >= 1
    assert (out / 'diversity_quality.png').stat().st_size > 1000 and (out / 'topic_shares.png').stat().st_size > 1000
    assert '![topic shares per arm](topic_shares.png)' in md and '](diversity_quality.png)' in md
    assert list((out / 'cache').glob('heldout-*.npy'))


def test_embed_only_fills_the_cache_the_report_reads(tmp_path, data_dir):
    """embed_only (study.py runs it seed by seed beside training): the samples' embeddings go to the
    report's cache and nothing else is written; the report then reads them from there."""
    topics = list(WORDS)
    base = write_samples(tmp_path / 'base.jsonl', [topics[i % 3] for i in range(4)], False, opening=False)
    sft = write_samples(tmp_path / 'sft.jsonl', ['Cooking'] * 4, False)
    r = report(tmp_path, data_dir, f'base={base},sft={sft}', '--embed_only=True')
    assert r.returncode == 0, r.stderr
    out = tmp_path / 'report'
    cached = sorted(p.name for p in (out / 'cache').glob('samples-*.npy'))
    assert len(cached) == 2 and not (out / 'report.md').exists()
    before = {p: (out / 'cache' / p).stat().st_mtime_ns for p in cached}
    r = report(tmp_path, data_dir, f'base={base},sft={sft}', '--bootstrap=20')
    assert r.returncode == 0, r.stderr
    assert {p: (out / 'cache' / p).stat().st_mtime_ns for p in cached} == before  # read, not rewritten
    assert (out / 'report.md').exists()


def test_prompt_metrics_annotation_fields_worked_example():
    """4 anchored samples: sampled topics A, A, B, 'Zq' (malformed); the judge says A, B, B, B."""
    rows = [dict(text=f'Sure!\nt{i} word', finished=i < 3, tokens=5, annotation=a)
            for i, a in enumerate(['topic:A', 'topic:A', 'topic:B', 'topic:Zq'])]
    emb = np.eye(4)
    ref = dict(opening='Sure!', cat_keys=['topic'], known={'topic': {'A', 'B', 'C'}}, words={'sure', 'word'},
               sft_key='topic', sft_values={'A'}, prior_h=lambda k, n: 2.0)
    m = dv.prompt_metrics(rows, emb, {'': {'topic': ['A', 'B', 'B', 'B']}, 'bow_': {'topic': ['A', 'A', 'B', 'C']}},
                          ref, annotated=True)
    assert m['ann_entropy_topic'] == pytest.approx(1.5)  # (1/2, 1/4, 1/4)
    assert m['prior_kept_topic'] == pytest.approx(0.75)  # 1.5 / 2.0
    assert m['ann_valid_topic'] == pytest.approx(0.75)  # 'Zq' is no corpus label
    assert m['fidelity_topic'] == pytest.approx(0.5)  # A=A, A!=B, B=B, Zq!=B
    assert m['sft_share'] == pytest.approx(0.25)  # the judge puts one sample of four in the SFT set's {A}
    assert m['fluency'] == pytest.approx(4 / 8)  # the content's words: 't' (unknown) and 'word' per sample
    assert m['format_rate'] == 1.0 and m['finish_rate'] == pytest.approx(0.75)
    assert m['entropy_topic'] == pytest.approx(-(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75)))
    # the bag-of-words judge says A, A, B, C: its figures carry the prefix, the embedding judge's keep their names
    assert m['bow_fidelity_topic'] == pytest.approx(0.75)  # A=A, A=A, B=B, Zq!=C
    assert m['bow_sft_share'] == pytest.approx(0.5) and m['bow_entropy_topic'] == pytest.approx(1.5)
    assert m['judges_agree_topic'] == pytest.approx(0.5)  # A=A, B!=A, B=B, B!=C
    plain = dv.prompt_metrics(rows, emb, {'': {'topic': ['A', 'B', 'B', 'B']}}, ref, annotated=False)
    assert 'ann_valid_topic' not in plain and 'fidelity_topic' not in plain and 'judges_agree_topic' not in plain


def test_both_judges_learn_known_topics():
    """Three topics of distinctive words (WORDS): both judges, on one split, get every test document
    right, and a document of one topic's words alone is given that topic by each."""
    rng = random.Random(5)
    texts = [doc(t, rng) for t in WORDS for _ in range(12)]
    labels = [t for t in WORDS for _ in range(12)]
    split = judges.judge_split(len(texts), 0.25, np.random.default_rng(0))
    assert len(split[0]) == 9 and sorted(np.concatenate(split)) == list(range(36))
    inputs = np.array(texts, dtype=object)
    clf, stats = judges.train_judge(judges.bow_classifier, inputs, labels, split)
    assert stats['accuracy'] == 1.0 and stats['test_docs'] == 9 and stats['classes'] == 3
    assert list(clf.predict(np.array(['telescope orbit comet planet'], dtype=object))) == ['Astronomy']
    one_value = judges.train_judge(judges.bow_classifier, inputs, ['Cooking'] * 36, split)
    assert one_value[0] is None and 'accuracy' not in one_value[1]


def test_quality_conditioned_figures_worked_example():
    """4 samples, the judge says A, A, B, B; samples 0 and 2 are good (in format and finished), 1 is
    unfinished, 3 lacks the format line: on the good ones the labels are A, B (1 bit), the SFT set's {A}
    has half of them and the embeddings of 0 and 2 are orthogonal (dissimilarity 1)."""
    rows = [dict(text=('Sure!\n' if i != 3 else '') + f'w{i}', finished=i != 1, tokens=3, annotation=None)
            for i in range(4)]
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    ref = dict(opening='Sure!', cat_keys=['topic'], known={'topic': {'A', 'B'}}, words=set(), sft_key='topic',
               sft_values={'A'}, prior_h=lambda k, n: 1.0)
    judged = {'': {'topic': ['A', 'A', 'B', 'B']}, 'bow_': {'topic': ['A', 'B', 'A', 'A']}}
    m = dv.prompt_metrics(rows, emb, judged, ref, annotated=False)
    assert m['quality'] == 0.5 and m['sft_share'] == 0.5
    assert m['q_entropy_topic'] == pytest.approx(1.0) and m['q_sft_share'] == 0.5
    assert m['q_dissimilarity'] == pytest.approx(1.0)
    assert m['q_bow_entropy_topic'] == 0.0 and m['q_bow_sft_share'] == 1.0  # bow: A, A on the good ones
    # one good sample: a spread cannot be measured (NaN), a share can; none: neither
    one = dv.prompt_metrics([dict(r, finished=i == 0) for i, r in enumerate(rows)], emb, judged, ref, False)
    assert math.isnan(one['q_entropy_topic']) and math.isnan(one['q_dissimilarity']) and one['q_sft_share'] == 1.0
    none = dv.prompt_metrics([dict(r, finished=False) for r in rows], emb, judged, ref, False)
    assert math.isnan(none['q_sft_share']) and math.isnan(none['q_bow_entropy_topic'])
    assert none['entropy_topic'] == m['entropy_topic']  # the all-sample figures do not depend on quality


def test_nan_aware_means():
    """A NaN cell (a prompt with too few good samples) is left out of every mean; where there is no NaN
    the means are those of .mean() to the last digit."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 14))
    draws = dv.bootstrap_draws([3], 14, 300, rng)
    plain = x[draws[3][0][:, :, None], draws[3][1]].mean(axis=(1, 2))
    assert np.array_equal(dv.bootstrap_means(x, draws), plain)
    st = dv.summarize({'a': {'m': x}}, 300, 0)
    assert st.point['a']['m'] == x.mean() and np.array_equal(st.seeds['a']['m'], x.mean(axis=1))
    v = np.array([[1.0, math.nan], [3.0, 5.0]])
    st = dv.summarize({'a': {'m': v}}, 200, 0)
    assert st.point['a']['m'] == 3.0 and list(st.seeds['a']['m']) == [1.0, 4.0]
    assert not np.isnan(st.boot['a']['m']).all()
    assert math.isnan(dv.nan_mean(np.full(3, math.nan)))  # all NaN: NaN, without a warning


def test_prompt_groups_split_the_headline():
    """SFT narrows 80 points on the SFT set's prompts p0, p1 and 20 on the held-out p2; the anchored arm
    30 on every prompt: each group's figures are those of its own prompts, the whole its mean."""
    notes = []
    groups = figures.prompt_groups({'p0': True, 'p1': True, 'p2': False}, ['p0', 'p1', 'p2', 'p9'], notes)
    assert groups == {'in_sft': [0, 1], 'held_out': [2]} and 'p9' in notes[0]
    assert figures.prompt_groups('no in_sft field', ['p0'], notes) == {} and notes[-1] == 'no in_sft field'
    row = lambda *v: np.array([v, v])  # two identical seeds
    table = {'base': dict(sft_share=row(0.0, 0.0, 0.0), dissimilarity=row(0.5, 0.5, 0.5)),
             'sft': dict(sft_share=row(0.8, 0.8, 0.2), dissimilarity=row(0.2, 0.2, 0.4)),
             'anchored': dict(sft_share=row(0.3, 0.3, 0.3), dissimilarity=row(0.5, 0.5, 0.5))}
    hl = dict(arm='anchored', controls=['sft'])
    out = figures.prompt_group_figures(table, {'in_sft': [0, 1], 'held_out': [2]}, ['dissimilarity'], hl, 'base',
                                       (50, 0, 'crossed'))
    assert out['metrics'] == ['dissimilarity', 'sft_share']  # no bow judge in this table
    g = out['groups']
    assert g['in_sft']['narrowing']['sft_share']['sft']['value'] == pytest.approx(0.8)
    assert g['held_out']['narrowing']['sft_share']['sft']['value'] == pytest.approx(0.2)
    assert g['all']['narrowing']['sft_share']['sft']['value'] == pytest.approx(0.6)
    assert g['held_out']['diff']['dissimilarity']['sft']['value'] == pytest.approx(0.1)
    assert g['in_sft']['diff']['sft_share']['sft']['ci'] == pytest.approx([-0.5, -0.5])  # no spread in the group


def test_topic_bars_put_the_sft_topics_first():
    shares = {'base': {'Football': 0.5, 'Cooking': 0.2, 'Astronomy': 0.3}, 'sft': {'Cooking': 0.9, 'Football': 0.1}}
    assert plots.topic_order(shares, {'Cooking'}) == ['Cooking', 'Football', 'Astronomy']
    assert plots.topic_shares_png(shares, {'Cooking'}, 'topic')[:4] == b'\x89PNG'


def test_leak_pattern():
    pat = dv.leak_pattern(['topic', 'entity'])
    leaky = ['topic:Arts A river.', 'A river (entity:Mona_Lisa).', 'Sure! <|ann|> x', 'text\ntopic:Arts']
    clean = ['The topic: arts.', 'subtopic:x is one word', 'Topic:Arts', 'a < | b', 'entity :x']
    assert dv.leaks(leaky, pat).all() and not dv.leaks(clean, pat).any()
    assert not dv.leaks(leaky, None).any()  # no pattern: nothing leaks
    assert dv.leaks(['<|end|>', 'topic:x'], dv.leak_pattern([])).tolist() == [True, False]


def test_leaking_samples_are_not_scored():
    """4 samples, the second writes its annotation into the text: every figure is that of the other
    three, beside a leak rate of 1/4; with one left a spread is NaN, with none every figure is."""
    rows = [dict(text=f'Sure!\n{t} word', finished=True, tokens=4, annotation=None)
            for t in ('a', 'topic:A b', 'c', 'd')]
    emb = np.eye(4)
    ref = dict(opening='Sure!', cat_keys=['topic'], known={'topic': {'A', 'B'}}, words={'word'}, sft_key='topic',
               sft_values={'A'}, prior_h=lambda k, n: 1.0, leak=dv.leak_pattern(['topic']))
    judged = {'': {'topic': ['A', 'A', 'B', 'B']}}
    m = dv.prompt_metrics(rows, emb, judged, ref, annotated=False)
    keep = [0, 2, 3]
    clean = dv.prompt_metrics([rows[i] for i in keep], emb[keep], {'': {'topic': ['A', 'B', 'B']}},
                              dict(ref, leak=None), annotated=False)
    assert m['leak_rate'] == 0.25 and m['scored'] == 3 and clean['leak_rate'] == 0.0
    assert {k: v for k, v in m.items() if k not in ('leak_rate', 'scored')} == \
        {k: v for k, v in clean.items() if k not in ('leak_rate', 'scored')}
    assert m['sft_share'] == pytest.approx(1 / 3) and m['entropy_topic'] == pytest.approx(dv.entropy_bits('ABB'))
    one = dv.prompt_metrics([dict(r, text='topic:A') for r in rows[:3]] + rows[3:], emb, judged, ref, False)
    assert one['scored'] == 1 and one['sft_share'] == 0.0 and math.isnan(one['entropy_topic'])
    assert math.isnan(one['dissimilarity']) and one['quality'] == 1.0
    none = dv.prompt_metrics([dict(r, text='<|x') for r in rows], emb, judged, ref, False)
    assert none['leak_rate'] == 1.0 and none['scored'] == 0
    assert all(math.isnan(v) for k, v in none.items() if k not in ('leak_rate', 'scored'))


def test_ladder_differences_worked_example():
    """sft_share per arm, the same at every seed and prompt: plain sft 0.5, sft-replay 0.45, annotated
    anchored-mask 0.3, anchored-replay 0.25, anchored 0.1; sft-distill not sampled."""
    import diversity
    from common import UserError
    rungs = diversity.parse_ladder('sft,sft-replay,sft-distill; anchored-mask,anchored-replay,anchored')
    assert rungs == (['sft', 'sft-replay', 'sft-distill'], ['anchored-mask', 'anchored-replay', 'anchored'])
    assert diversity.parse_ladder('  ') is None
    for bad in ('sft,sft-replay;anchored', 'sft;anchored;x', 'sft,sft-replay'):
        with pytest.raises(UserError, match='ladder must be two'):
            diversity.parse_ladder(bad)
    shares = {'sft': 0.5, 'sft-replay': 0.45, 'anchored-mask': 0.3, 'anchored-replay': 0.25, 'anchored': 0.1}
    st = dv.summarize({a: {'sft_share': np.full((2, 3), v)} for a, v in shares.items()}, 50, 0)
    lad = figures.ladder_figures(st, rungs, ['sft_share'])
    steps = {side: [(s['upper'], s['lower'], s['figures']['sft_share']['value']) for s in v]
             for side, v in lad['steps'].items()}
    assert steps['plain'] == [('sft-replay', 'sft', pytest.approx(-0.05))]
    assert steps['annotated'] == [('anchored-replay', 'anchored-mask', pytest.approx(-0.05)),
                                  ('anchored', 'anchored-replay', pytest.approx(-0.15))]
    ann = [(r['annotated'], r['plain'], r['figures']['sft_share']) for r in lad['annotation']]
    assert [(a, p, f['value']) for a, p, f in ann] == [('anchored-mask', 'sft', pytest.approx(-0.2)),
                                                       ('anchored-replay', 'sft-replay', pytest.approx(-0.2))]
    assert ann[0][2]['seeds'] == pytest.approx([-0.2, -0.2]) and ann[0][2]['ci'] == pytest.approx([-0.2, -0.2])


def test_content_drops_only_the_format_line():
    assert dv.content('Sure! Here.\nA cat sat.', 'Sure! Here.') == 'A cat sat.'
    assert dv.content('  Sure! Here. A cat.', 'Sure! Here.') == 'A cat.'
    assert dv.content('A cat. Sure! Here.', 'Sure! Here.') == 'A cat. Sure! Here.'  # only at the start
    assert dv.content('Sure!', '') == 'Sure!'


def test_fluency_worked_example():
    words = {'the', 'cat', 'sat'}
    assert dv.fluency(['The cat sat.', 'the dog'], words) == pytest.approx(4 / 5)  # 'dog' is unknown
    assert dv.fluency(['42 !!', ''], words) == 0.0  # no words at all
    assert dv.fluency(["cat's"], words) == pytest.approx(1 / 2)  # 'cat' and 's'
