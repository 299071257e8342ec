"""metrics.py and report.py: the crossed and the nested bootstrap, t-intervals over seeds and the
comparison of two reports' CIs, on hand-made numbers with known answers."""
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import metrics as dv  # noqa: E402
import report as rp  # noqa: E402


def test_crossed_bootstrap_draws_one_prompt_draw_for_every_seed():
    """Crossed: every seed slot and every arm read the same prompt draw; arms with the same number of
    seeds share their seed draws too, so differences stay paired."""
    draws = dv.bootstrap_draws([3, 3, 1], 5, 100, np.random.default_rng(0), 'crossed')
    assert draws[3][1] is draws[1][1] and draws[3][1].shape == (100, 1, 5)
    values = np.arange(15.0).reshape(3, 5)
    cells = values[draws[3][0][:, :, None], draws[3][1]]  # (B, R, P): the same prompt columns in each row
    assert all(np.array_equal(cells[b, i] - values[draws[3][0][b, i], 0], values[0, draws[3][1][b, 0]])
               for b in range(5) for i in range(3))
    diff = dv.bootstrap_means(values + 1.5, draws) - dv.bootstrap_means(values, draws)
    assert np.allclose(diff, 1.5)


def test_crossed_bootstrap_variance_worked_example():
    """Two seeds x two prompts, value = seed + prompt (each 0 or 1). Crossed: the seeds' Var((s1 +
    s2) / 2) = 1/8 and the prompts', drawn once for both seeds, Var((p1 + p2) / 2) = 1/8: 1/4 (nested:
    3/16, each seed's own prompt draws average the prompts' variance down)."""
    values = np.array([[0.0, 1.0], [1.0, 2.0]])
    rng = np.random.default_rng(2)
    crossed = dv.bootstrap_means(values, dv.bootstrap_draws([2], 2, 40000, rng, 'crossed'))
    nested = dv.bootstrap_means(values, dv.bootstrap_draws([2], 2, 40000, rng, 'nested'))
    assert crossed.mean() == pytest.approx(1.0, abs=0.01) and np.var(crossed) == pytest.approx(1 / 4, abs=0.01)
    assert np.var(nested) == pytest.approx(3 / 16, abs=0.01)


def test_crossed_ci_is_wider_where_prompts_dominate():
    """Three seeds that barely differ, prompts that differ a lot (every seed finds the same prompts hard):
    the nested design averages three independent prompt draws and understates the CI; the crossed one
    does not."""
    rng = np.random.default_rng(7)
    values = rng.normal(0, 1.0, size=14)[None, :] + rng.normal(0, 0.05, size=(3, 1))
    st = {d: dv.summarize({'a': {'m': values}}, 2000, 0, d) for d in dv.DESIGNS}
    w = {d: np.diff(dv.ci95(s.boot['a']['m']))[0] for d, s in st.items()}
    assert w['crossed'] > 1.4 * w['nested']  # about sqrt(3) where the seeds add nothing
    assert st['crossed'].point == st['nested'].point  # the design moves the CIs only


def test_t_interval_worked_example():
    # 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.303 -> 2 +- 4.303 / sqrt(3)
    lo, hi = dv.t_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 4.3027 / math.sqrt(3), abs=1e-3) and hi == pytest.approx(2 + 4.3027 / math.sqrt(3),
                                                                                           abs=1e-3)
    assert dv.t_interval([5.0]) is None and dv.t_interval(None) is None  # one replicate: no training variance
    scipy = pytest.importorskip('scipy.stats')
    assert [round(float(scipy.t.ppf(0.975, df)), 3) for df in range(1, 31)] == pytest.approx(list(dv.T975), abs=1e-3)


def test_derived_gives_a_t_interval_only_for_several_replicates():
    d = dv.derived(lambda x, y: y - x, [1.0, 2.0], [np.ones(3), np.ones(3) * 2], [[1.0, 1.0], [2.0, 4.0]])
    assert d['seeds'] == [1.0, 3.0] and d['t_ci'] == pytest.approx([2 - 12.706, 2 + 12.706], abs=1e-2)
    one = dv.derived(lambda x, y: y - x, [1.0, 2.0], [np.ones(3), np.ones(3) * 2], [[1.0], [2.0, 4.0]])
    assert one['seeds'] is None and one['t_ci'] is None


def fig(v, lo, hi):
    return dict(value=v, ci=[lo, hi], seeds=None, t_ci=None)


def report(w):
    """A report.json with one headline metric, one control and one narrowing, CIs of half-width w."""
    comp = {'dissimilarity': {'anchored': {'sft': dict(diff=fig(0.02, 0.02 - w, 0.02 + w), gap=fig(1.0, 1 - w, 'inf'),
                                                        ratio=fig(2.0, 2 - w, 2 + w))}}}
    hl = dict(arm='anchored', metrics=['dissimilarity'], controls=['sft'],
              narrowing={'sft': fig(0.3, 0.3 - w, 0.3 + w)},
              share_diff={'sft_share': {'sft': fig(-0.25, -0.25 - w, -0.25 + w)}})
    return dict(headline=hl, comparisons=comp)


def test_ci_comparison_of_two_reports():
    figs = rp.headline_cis(report(0.01))
    assert list(figs) == ['dissimilarity diff, anchored vs sft', 'dissimilarity gap, anchored vs sft',
                          'dissimilarity ratio, anchored vs sft', 'sft_share diff, anchored vs sft', 'narrowing sft']
    lines = rp.ci_comparison({'nested': report(0.01), 'crossed': report(0.02)})
    assert lines[0] == '| figure | value | nested CI | width | crossed CI | width | crossed / nested |'
    row = next(x for x in lines if x.startswith('| dissimilarity diff'))
    assert row == ('| dissimilarity diff, anchored vs sft | 0.020 | [0.010, 0.030] | 0.020 | [0.000, 0.040] | 0.040 '
                   '| 2.00 |')
    assert '| inf |' in next(x for x in lines if 'gap' in x)  # an infinite bound, as report.json writes it
