"""
Report rendering for diversity.py and study.py: number formatting, the headline sentence, the
markdown report (competence first, then diversity and collapse) and the plots.
"""
import io
import math

import numpy as np

from common import atomic_write


def fmt(x, nd=3):
    if x is None or math.isnan(x):
        return 'n/a'
    return f'{x:.{nd}f}' if math.isfinite(x) else ('inf' if x > 0 else '-inf')


def fmt2(x):
    return fmt(x, 2)


def pct(x):
    return 'n/a' if x is None or not math.isfinite(x) else f'{100 * x:.0f}%'


def headline_sentence(metric, ratio, ratio_ci, gap, gap_ci, c_sft, c_anch, arm='anchored'):
    """The paper's headline ("~6x less collapse, ~85% of the gap closed"), with a plain caveat
    wherever the numbers do not say that anchoring helps, so the sentence is never misleading."""
    s = (f"{arm} shows {fmt(ratio, 1)}x [{fmt(ratio_ci[0], 1)}, {fmt(ratio_ci[1], 1)}] less collapse than SFT "
         f"on {metric} (gap closed: {pct(gap)} [{pct(gap_ci[0])}, {pct(gap_ci[1])}])")
    if not c_sft > 0:
        s += f". SFT shows no collapse on {metric} at this scale, so the ratio says nothing about anchoring"
    elif not c_anch > 0:
        s += f". {arm} shows no collapse at all on {metric} (diversity at or above base); read gap closed"
    elif ratio < 1:
        s += f". The effect is reversed at this scale: {arm} collapses more than SFT"
    elif ratio_ci[0] <= 1 <= ratio_ci[1]:
        s += ". The effect is weak at this scale: the 95% CI of the ratio includes 1"
    return s + '.'


def plot_png(points, metric):
    """Diversity (y) against quality (x), one point per arm; arms named '<arm>@t<temperature>' are
    joined into one line per <arm>, sorted by temperature (paper: the diversity-quality frontier)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sweeps, colors = {}, {}
    for arm, (x, y) in points.items():
        name, sep, t = arm.partition('@t')
        is_sweep = sep and t.replace('.', '', 1).isdigit()
        c = colors.setdefault(name if is_sweep else arm, f'C{len(colors) % 10}')  # a sweep shares its arm's color
        if is_sweep:
            sweeps.setdefault(name, []).append((float(t), x, y))
            continue
        ax.scatter([x], [y], color=c)
        ax.annotate(arm, (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
    for name, pts in sweeps.items():
        pts.sort()
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker='o', color=colors[name],
                label=f'{name} (temperature sweep)')
        for t, x, y in pts:
            ax.annotate(f'{name} t={t:g}', (x, y), textcoords='offset points', xytext=(4, -10), fontsize=7)
    ax.set_xlabel('quality (fraction in format and finished)')
    ax.set_ylabel(f'{metric} (higher = more diverse)')
    if sweeps:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=120, bbox_inches='tight')
    plt.close(fig)
    return buf.getvalue()


def jsonable(x):
    """NaN/inf become the strings 'nan'/'inf'/'-inf' (strict JSON has no such numbers)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else ('nan' if math.isnan(x) else 'inf' if x > 0 else '-inf')
    return x.item() if isinstance(x, np.generic) else x


def with_ci(d, f=fmt):
    """{'value' or 'mean': x, 'ci': [lo, hi]} -> 'x [lo, hi]'; None -> 'n/a'."""
    return 'n/a' if d is None else f"{f(d.get('value', d.get('mean')))} [{f(d['ci'][0])}, {f(d['ci'][1])}]"


def competence_rows(rep):
    """One row per arm of the figures that say whether its diversity numbers mean anything."""
    keys, sft_key = rep['cat_keys'], rep['sft_key']
    cols = ['fluency', 'format_rate', 'quality', 'sft_share'] + [f'{m}_{k}' for k in keys[:1]
                                                                 for m in ('ann_valid', 'prior_kept', 'fidelity')]
    form = {c: fmt2 if c.startswith('prior_kept_') else pct for c in cols}  # prior kept is a ratio
    rows = []
    for a, r in rep['arms'].items():
        mt = r['metrics']
        cells = [form[c](mt[c]['mean']) if c in mt else '-' for c in cols]
        labels = r.get('labels', {}).get(sft_key) or {}
        top = ', '.join(f"{v} {pct(p)}" for v, p in list(labels.items())[:3])
        rows.append(f"| {a} | {' | '.join(cells)} | {top or '-'} |")
    names = ['fluency', 'format', 'quality', f'sft_share ({sft_key})'] + [
        f'{m} {k}' for k in keys[:1] for m in ('valid', 'prior kept', 'fidelity')]
    return ([f"| arm | {' | '.join(names)} | judge's {sft_key} labels (top 3) |", '|---' * (len(names) + 2) + '|']
            + rows)


def render_md(rep, div_metrics, heads):
    """report.md: headline, competence, diversity per arm, collapse, judge, annotation details."""
    cfg, arms, coll = rep['config'], rep['arms'], rep['collapse']
    base, sft = cfg['base_arm'], cfg['sft_arm']
    L = ['# Diversity report', '', f"{rep['prompts']} prompts; data `{cfg['data_dir']}`; embedder "
         f"`{cfg['embedder']}`; brackets: 95% bootstrap CI over prompts ({cfg['bootstrap']} resamples). Every "
         "diversity metric: higher = more diverse.", '', '## Headline', '']
    L += [f"- **{s}**" for s in rep['headline']['sentences']] + ['']
    L += ['## Competence (read this before the headline)', '',
          "fluency: share of generated words that occur in the pretraining corpus; format: starts with the SFT "
          "format's first line; quality: in format and finished; sft_share: share of samples the judge puts in the "
          f"SFT set's values {rep['sft_values']}; for arms that sample annotations: share of valid label values, "
          "prior kept (1 = as diverse as the corpus) and fidelity (the judge agrees with the sampled value).", '']
    L += competence_rows(rep)
    cols = div_metrics + ['format_rate', 'finish_rate', 'quality', 'mean_tokens']
    head = heads[0]
    L += ['', '## Arms', '', f"| arm | samples/prompt | {' | '.join(cols)} | collapse ({head}) |",
          '|---' * (len(cols) + 3) + '|']
    for a, r in arms.items():
        cells = [with_ci(r['metrics'][m]) if m in heads else fmt(r['metrics'][m]['mean']) for m in cols]
        c = coll.get(head, {}).get('collapse', {}).get(a)
        c = None if c is None else c['value']
        L.append(f"| {a} | {r['samples_per_prompt']:g} | {' | '.join(cells)} | {fmt(c)} |")
    if coll:
        others = [a for a in arms if a != base]
        anchored = cfg['anchored_arms']
        L += ['', '## Collapse', '', f'collapse(m) = (D_base - D_m) / D_base; collapse_ratio = collapse({sft}) / '
              f'collapse(anchored); gap_closed = (D_anchored - D_{sft}) / (D_base - D_{sft})', '',
              f"| metric | D base | {' | '.join(f'collapse {a}' for a in others)} | "
              + ' | '.join(f'collapse_ratio {a} | gap_closed {a}' for a in anchored) + ' |',
              '|---' * (len(others) + 2 + 2 * len(anchored)) + '|']
        for m, row in coll.items():
            cs = [fmt(row['collapse'][a]['value']) for a in others]
            rg = [f"{with_ci(row.get('ratio', {}).get(a), fmt2)} | {with_ci(row.get('gap', {}).get(a), pct)}"
                  for a in anchored]
            L.append(f"| {m} | {fmt(row['values'][base])} | {' | '.join(cs)} | {' | '.join(rg)} |")
    L += ['', '## Judge (trained and tested on held-out corpus documents, never on model samples)', '',
          '| key | classes | train docs | test docs | accuracy | majority baseline |', '|---|---|---|---|---|---|']
    for k, j in rep['judge'].items():
        L.append(f"| {k} | {j['classes']} | {j['train_docs']} | {j['test_docs']} | {fmt(j.get('accuracy'))} | "
                 f"{fmt(j.get('majority_baseline'))} ({j.get('majority_class', 'n/a')}) |")
    ann = []
    for (a, r), (k, pr) in ((ar, kp) for ar in arms.items() for kp in rep['prior'].items()):
        mt = r['metrics']
        if a in pr['same_n']:
            fid = mt.get(f'fidelity_{k}')
            ann.append(f"- {a}, {k}: sampled annotations {fmt2(mt[f'ann_entropy_{k}']['mean'])} bits per prompt "
                       f"vs {fmt2(pr['same_n'][a]['entropy'])} bits for {pr['same_n'][a]['n']} draws from the corpus "
                       f"(corpus entropy {fmt2(pr['corpus_entropy'])} bits over {pr['docs']} docs); prior kept "
                       f"{with_ci(mt[f'prior_kept_{k}'], fmt2)}; {pct(mt[f'ann_valid_{k}']['mean'])} of the sampled "
                       f"values are {k} labels of the corpus"
                       + (f"; the judge agrees with the sampled {k} in {with_ci(fid, pct)} of samples" if fid else ''))
    if ann:
        L += ['', '## Annotation prior and fidelity (arms that sample annotations)', '',
              'prior kept = per-prompt entropy of the sampled values / mean entropy of as many draws from the '
              'corpus distribution (1 = as diverse as the pretraining prior; n samples cap entropy at log2 n).',
              ''] + ann
    if rep['notes']:
        L += ['', '## Notes', ''] + [f'- {n}' for n in rep['notes']]
    return '\n'.join(L) + '\n'


def line_plot(path, series, xlabel, ylabel, logx=False):
    """One line per arm, series = {arm: [(x, y), ...]}, written atomically as a PNG (study.py)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    for arm, pts in series.items():
        ax.plot([x for x, _ in pts], [y for _, y in pts], 'o-', label=arm)
    if logx:
        ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120), 'wb')  # makes the dir, too
    plt.close(fig)
