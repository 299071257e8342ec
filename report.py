"""
The markdown of the reports: diversity.py's report.md (competence first, then diversity and
collapse), study.py's sections (the entropy sweep, scaling, how the study ran), and the CIs of the
headline figures across reports of the same samples. Numbers: numfmt.py; pictures: plots.py.
"""
import os

from numfmt import cell, fmt, fmt2, pct, per_seed, pts, signed, t_cell, with_ci
from plots import line_plot


def headline_cis(rep):
    """{figure: {'value', 'ci'}} of every headline figure of a report.json: the headline arm against each
    control on each headline metric and its bag-of-words twin (difference, gap closed, collapse ratio),
    its topic-narrowing difference under each judge, and every arm's topic narrowing under each judge."""
    hl, comp, a = rep['headline'], rep['comparisons'], rep['headline']['arm']
    out = {f'{m} {k}, {a} vs {c}': f[k] for m in headline_metrics(hl, comp) for c, f in comp[m].get(a, {}).items()
           for k in ('diff', 'gap', 'ratio')}
    out.update({f'{m} diff, {a} vs {c}': f for m, per in (hl.get('share_diff') or {}).items() for c, f in per.items()})
    out.update({f'{k} {arm}': f for k in ('narrowing', 'bow_narrowing') for arm, f in (hl.get(k) or {}).items()})
    return out


def width(ci):
    lo, hi = map(float, ci)  # report.json writes nan and inf as strings
    return hi - lo


def ci_comparison(reps):
    """Markdown lines comparing the CIs of every headline figure across reports of the same samples
    ({name: report.json}, e.g. the nested and the crossed bootstrap): each one's CI and width, and the
    width of each later report over the first's."""
    names, figs = list(reps), {n: headline_cis(r) for n, r in reps.items()}
    first = figs[names[0]]
    L = [f"| figure | value | {' | '.join(f'{n} CI | width' for n in names)} | "
         f"{' | '.join(f'{n} / {names[0]}' for n in names[1:])} |", '|---' * (1 + 3 * len(names)) + '|']
    for k, f in first.items():
        ws = [width(figs[n][k]['ci']) for n in names]
        cis = ' | '.join(f"[{fmt(float(figs[n][k]['ci'][0]))}, {fmt(float(figs[n][k]['ci'][1]))}] | {fmt(w)}"
                         for n, w in zip(names, ws))
        ratios = ' | '.join(fmt2(w / ws[0]) if ws[0] else 'n/a' for w in ws[1:])
        L.append(f"| {k} | {fmt(float(f['value']))} | {cis} | {ratios} |")
    return L


def competence_rows(rep):
    """One row per arm of the figures that say whether its diversity numbers mean anything."""
    keys, sft_key = rep['cat_keys'], rep['sft_key']
    cols = ['leak_rate', 'fluency', 'format_rate', 'quality', 'sft_share', 'bow_sft_share'] + [
        f'{m}_{k}' for k in keys[:1] for m in ('ann_valid', 'prior_kept', 'fidelity', 'bow_fidelity', 'judges_agree')]
    form = {c: fmt2 if c.startswith('prior_kept_') else pct for c in cols}  # prior kept is a ratio
    rows = []
    for a, r in rep['arms'].items():
        mt = r['metrics']
        cells = [cell(mt[c], form[c]) if c in mt else '-' for c in cols]
        labels = r.get('labels', {}).get(sft_key) or {}
        top = ', '.join(f"{v} {pct(p)}" for v, p in list(labels.items())[:3])
        rows.append(f"| {a}{mark(rep, a)} | {r.get('scored', r['samples'])} of {r['samples']} | {' | '.join(cells)} "
                    f"| {top or '-'} |")
    names = ['scored', 'leaks', 'fluency', 'format', 'quality', f'sft_share ({sft_key})', 'sft_share, bow judge'] + [
        f'{m} {k}' for k in keys[:1] for m in ('valid', 'prior kept', 'fidelity', 'fidelity, bow judge',
                                                'judges agree')]
    return ([f"| arm | {' | '.join(names)} | judge's {sft_key} labels (top 3) |", '|---' * (len(names) + 2) + '|']
            + rows)


DAGGER = '\u2020'
DESIGN_WORDS = {'crossed': "resamples of the replicates and, once per resample, of the prompts, the same prompt draw "
                           "for every replicate, as every replicate answers the same prompts",
                'nested': "resamples of the replicates, then of the prompts anew within each"}


def one_seed(rep, *arms):
    """Any of the arms has a single replicate: its figures hold no training variance."""
    return any(rep['arms'][a]['replicates'] == 1 for a in arms if a in rep['arms'])


def mark(rep, *arms):
    """The dagger of a figure of arms among which one has a single replicate ('' otherwise)."""
    return DAGGER if one_seed(rep, *arms) else ''


def header_lines(rep):
    """What the figures are of: prompts, replicates, data, embedder, the CIs, the machine."""
    cfg, env = rep['config'], rep.get('environment') or {}
    reps = ', '.join(f"{a}{mark(rep, a)} {r['replicates']}" for a, r in rep['arms'].items())
    design = cfg.get('bootstrap_design', 'nested')
    single = [f"{DAGGER} One replicate: the figures of such an arm, and any comparison with it, hold no training "
              "variance, only that of sampling, and have no t-interval.", ''] if one_seed(rep, *rep['arms']) else []
    return ['# Diversity report', '',
            f"{rep['prompts']} prompts; replicates (training seeds) per arm: {reps}; data `{cfg['data_dir']}`; "
            f"embedder `{cfg['embedder']}`. Brackets: 95% CI of a two-level bootstrap, {design} ({cfg['bootstrap']} "
            f"{DESIGN_WORDS[design]}), so it holds the variance of training, not only of sampling; t-interval: "
            "mean +- t(0.975, R-1) s/sqrt(R) over the R values of the replicates; parentheses: the value of each "
            "replicate. Every diversity metric: higher = more diverse.", ''] + single + [
            f"Environment of this report: torch {env.get('torch')}, Python {env.get('python')}, "
            f"{env.get('gpu') or env.get('cpu')} ({env.get('cores')} cores), {env.get('platform')}.", '']


def headline_metrics(hl, comp):
    """The headline table's metrics: each headline metric, and beside a topic entropy the bag-of-words
    judge's twin of it where there is one."""
    return [x for m in hl['metrics'] for x in (m, 'bow_' + m) if x == m or (m.startswith('entropy_') and x in comp)]


def narrowing_lines(rep):
    """Topic narrowing of every arm under both judges."""
    hl, base = rep['headline'], rep['config']['base_arm']
    L = ['', "Topic narrowing = sft_share(arm) - sft_share(base), how far SFT pulled an arm's samples toward "
         "the SFT set's own topics, under the embedding judge and the bag-of-words judge:", '',
         '| arm | topic narrowing | t-interval | per seed | bow judge | per seed |', '|---|---|---|---|---|---|']
    bow = hl.get('bow_narrowing') or {}
    return L + [f"| {a}{mark(rep, a, base)} | {with_ci(n, pts)} | {t_cell(n, pts)} | {per_seed(n, pts)} | "
                f"{with_ci(bow.get(a), pts)} | {per_seed(bow.get(a), pts)} |" for a, n in hl['narrowing'].items()]


def verdict_lines(hl):
    """Whether the two judges agree on the headline arm's topic verdicts (sign, CI excludes 0)."""
    vs = hl.get('judge_verdicts') or []
    if not vs:
        return []
    L = ['', "The topic verdicts under both judges (the sign of the difference and whether its CI excludes 0):", '',
         '| control | figure | embedding judge | bag-of-words judge | same verdict |', '|---|---|---|---|---|']
    f = lambda m: pts if 'sft_share' in m else signed
    L += [f"| {v['control']} | {hl['arm']} - control, {v['metric']} | {with_ci(v['embedding'], f(v['metric']))} "
          f"({v['verdicts'][0]}) | {with_ci(v['bow'], f(v['metric']))} ({v['verdicts'][1]}) | "
          f"{'yes' if v['same'] else '**no**'} |" for v in vs]
    return L


def headline_lines(rep):
    """The headline: sentences, then every anchored arm against every control, then narrowing."""
    hl, comp = rep['headline'], rep['comparisons']
    L = ['## Headline', ''] + [f"- **{s}**" for s in hl['sentences']]
    if hl['controls']:
        L += ['', '| arm | control | metric | difference | t-interval over seeds | gap closed | collapse ratio | '
              'difference per seed |', '|---|---|---|---|---|---|---|---|']
        for m in headline_metrics(hl, comp):
            for a, per in comp[m].items():
                for c, f in per.items():
                    L.append(f"| {a}{mark(rep, a, c)} | {c} | {m} | {with_ci(f['diff'], signed)} | "
                             f"{t_cell(f['diff'], signed)} | {with_ci(f['gap'], pct)} | {with_ci(f['ratio'], fmt2)} | "
                             f"{per_seed(f['diff'], signed)} |")
        for m, per in (hl.get('share_diff') or {}).items():
            L += [f"| {hl['arm']}{mark(rep, hl['arm'], c)} | {c} | topic narrowing, {m}(arm) - {m}(control) | "
                  f"{with_ci(f, pts)} | {t_cell(f, pts)} | - | - | {per_seed(f, pts)} |" for c, f in per.items()]
    if hl['narrowing']:
        L += narrowing_lines(rep)
    if 'topic_shares.png' in rep.get('plots', ()):
        L += ['', f"Where each arm's samples go, by the embedding judge (the SFT set's {rep['sft_key']}s hatched, at "
              "the left of each bar):", '', f"![{rep['sft_key']} shares per arm](topic_shares.png)"]
    return L + verdict_lines(hl) + ['']


def collapse_lines(rep, heads):
    """collapse(m) of every arm on every diversity metric, with CIs for the headline metrics."""
    base = rep['config']['base_arm']
    others = [a for a in rep['arms'] if a != base]
    L = ['## Collapse', '', 'collapse(m) = (D_base - D_m) / D_base (negative: more diverse than base); gap closed '
         '= (D_arm - D_control) / (D_base - D_control); collapse ratio = collapse(control) / collapse(arm).', '',
         f"| metric | D {base} | {' | '.join(f'collapse {a}' for a in others)} |", '|---' * (len(others) + 2) + '|']
    for m, row in rep['collapse'].items():
        cs = [with_ci(row['collapse'][a]) if m in heads else fmt(row['collapse'][a]['value']) for a in others]
        L.append(f"| {m} | {fmt(row['values'][base])} | {' | '.join(cs)} |")
    return L + ['']


def frontier_lines(rep):
    """The temperature sweep at matched quality: an anchored arm's diversity minus a control's at the
    same quality, interpolated along the control's temperature curve (n/a outside its range)."""
    fr = rep.get('matched_quality') or {}
    if not fr:
        return []
    L = ['## The temperature sweep at matched quality', '',
         "At each temperature of an anchored arm: its diversity minus the control's at the same quality, read off "
         "the control's own temperature curve (linear between its temperatures; n/a outside them). Positive: "
         "a better diversity-quality frontier (paper).", '',
         '| metric | arm | control | temperature | quality of arm | difference at matched quality | per seed |',
         '|---|---|---|---|---|---|---|']
    for m, per_arm in fr.items():
        for a, per_control in per_arm.items():
            for c, rows in per_control.items():
                L += [f"| {m} | {a} | {c} | {r['temperature']:g} | {pct(r['quality'])} | "
                      f"{with_ci(r['diff'], signed)} | {per_seed(r['diff'], signed)} |" for r in rows]
    return L + ['']


def annotation_lines(rep):
    """Per arm that samples annotations: the entropy of its sampled values against the corpus's."""
    L = []
    for (a, r), (k, pr) in ((ar, kp) for ar in rep['arms'].items() for kp in rep['prior'].items()):
        mt = r['metrics']
        if a in pr['same_n']:
            fid = mt.get(f'fidelity_{k}')
            L.append(f"- {a}, {k}: sampled annotations {fmt2(mt[f'ann_entropy_{k}']['mean'])} bits per prompt "
                     f"vs {fmt2(pr['same_n'][a]['entropy'])} bits for {pr['same_n'][a]['n']} draws from the corpus "
                     f"(corpus entropy {fmt2(pr['corpus_entropy'])} bits over {pr['docs']} docs); prior kept "
                     f"{with_ci(mt[f'prior_kept_{k}'], fmt2)}; {pct(mt[f'ann_valid_{k}']['mean'])} of the sampled "
                     f"values are {k} labels of the corpus"
                     + (f"; the judge agrees with the sampled {k} in {with_ci(fid, pct)} of samples" if fid else ''))
    if not L:
        return []
    return ['## Annotation prior and fidelity (arms that sample annotations)', '',
            'prior kept = per-prompt entropy of the sampled values / mean entropy of as many draws from the corpus '
            'distribution (1 = as diverse as the pretraining prior; n samples cap entropy at log2 n).', ''] + L + ['']


def judge_lines(rep):
    """Each judge's accuracy on held-out documents, one row per judge and key (the same split)."""
    L = ['## Judges (trained and tested on held-out corpus documents, never on model samples)', '',
         'Two judges of another kind, on the same train/test split: a logistic regression on sentence embeddings '
         '(its figures keep the plain names) and one on TF-IDF word counts (bag of words, figures named bow_...).',
         '', '| judge | key | classes | train docs | test docs | accuracy | majority baseline |',
         '|---|---|---|---|---|---|---|']
    for name, stats in (('embedding', rep['judge']), ('bag of words', rep.get('bow_judge') or {})):
        L += [f"| {name} | {k} | {j['classes']} | {j['train_docs']} | {j['test_docs']} | {fmt(j.get('accuracy'))} | "
              f"{fmt(j.get('majority_baseline'))} ({j.get('majority_class', 'n/a')}) |" for k, j in stats.items()]
    return L


def quality_lines(rep):
    """The figures on the good samples only (in format and finished) beside all samples."""
    q = rep.get('quality_conditioned') or {}
    if not q:
        return []
    arms, share = rep['arms'], list(q['narrowing'])
    pair = lambda d, m, f: f"{f(d['metrics'][m]['mean'])} / {f(d['metrics']['q_' + m]['mean'])}"
    L = ['## On the good samples only (in format and finished)', '',
         "An arm that breaks the format more often is not more diverse for its broken samples: each figure on "
         "all samples / on the samples in format and finished only (per prompt; a prompt with fewer than 2 good "
         "samples, or none for a share, is left out of the mean). Topic narrowing on the good samples is "
         "q_sft_share(arm) - sft_share(base): base never writes the format, so its share of all samples is the "
         "reference.", '',
         f"| arm | good samples | {' | '.join(f'narrowing {m}' for m in share)} | {' | '.join(q['metrics'])} |",
         '|---' * (len(share) + len(q['metrics']) + 2) + '|']
    for a, r in arms.items():
        nar = [' / '.join(pts(q['narrowing'][m][k][a]['value']) if a in q['narrowing'][m][k] else '-'
                          for k in ('all', 'good')) for m in share]
        cells = nar + [pair(r, m, fmt) for m in q['metrics']]
        L.append(f"| {a}{mark(rep, a)} | {pct(r['metrics']['quality']['mean'])} | {' | '.join(cells)} |")
    diff = q.get('diff') or {}
    if diff:
        L += ['', f"{rep['headline']['arm']} minus each control, on all samples and on the good samples only:", '',
              '| control | figure | all samples | good samples | good samples per seed |', '|---|---|---|---|---|']
        for m, per in diff.items():
            f = pts if 'sft_share' in m else signed
            L += [f"| {c} | {m} | {with_ci(d['all'], f)} | {with_ci(d['good'], f)} | {per_seed(d['good'], f)} |"
                  for c, d in per.items()]
    return L + ['']


GROUP_NAMES = dict(all='all prompts', in_sft="the SFT set's prompts", held_out='held-out prompts')


def prompt_group_lines(rep):
    """The headline's figures on all prompts, the SFT set's own prompts and the held-out ones."""
    pg = rep.get('prompt_groups') or {}
    if not pg:
        return []
    gs, a = pg['groups'], rep['headline']['arm']
    f = lambda m: pts if 'sft_share' in m else signed
    L = ["## The SFT set's prompts and held-out prompts", '',
         "Does the anchored arm keep its diversity on prompts SFT never saw? Each figure on all prompts, on the "
         "prompts the SFT set has, and on the others; each CI a bootstrap over the prompts of its group only.", '',
         '| figure | ' + ' | '.join(f"{GROUP_NAMES[g]} ({d['prompts']})" for g, d in gs.items()) + ' |',
         '|---' * (len(gs) + 1) + '|']
    for m, per in (gs['all'].get('diff') or {}).items():
        L += [f"| {a} - {c}{mark(rep, a, c)}, {m} | "
              f"{' | '.join(with_ci(d['diff'][m][c], f(m)) for d in gs.values())} |" for c in per]
    for m, per in gs['all']['narrowing'].items():
        L += [f"| narrowing {arm}{mark(rep, arm, rep['config']['base_arm'])}, {m} | "
              f"{' | '.join(with_ci(d['narrowing'][m][arm], pts) for d in gs.values())} |" for arm in per]
    return L + ['']


def ladder_lines(rep):
    """What each ingredient adds: on each side every rung minus the one below, and at every rung what
    the annotation adds (annotated arm minus plain arm)."""
    lad = rep.get('ladder') or {}
    if not lad:
        return []
    ms = lad['metrics']
    f = lambda m: pts if 'sft_share' in m else signed
    row = lambda name, figs: (f"| {name} | " + ' | '.join(f"{with_ci(figs[m], f(m))} {per_seed(figs[m], f(m))}".strip()
                                                          if m in figs else '-' for m in ms) + ' |')
    L = ['## What each ingredient adds (ladder)', '',
         f"Rungs, plain side: {', '.join(lad['rungs'][0])}; annotated side: {', '.join(lad['rungs'][1])} (rung i of "
         "each side the same recipe but for the annotation; arms not sampled are skipped). Each cell: the "
         "difference, its CI, and per seed; for sft_share a negative difference is less narrowing.", '',
         f"| difference | {' | '.join(ms)} |", '|---' * (len(ms) + 1) + '|']
    for side, steps in lad['steps'].items():
        L += [row(f"{side}: {s['upper']} - {s['lower']}{mark(rep, s['upper'], s['lower'])}", s['figures'])
              for s in steps]
    L += [row(f"annotation: {r['annotated']} - {r['plain']}{mark(rep, r['annotated'], r['plain'])}", r['figures'])
          for r in lad['annotation']]
    return L + ['']


def render_md(rep, div_metrics, heads):
    """report.md: headline, competence, diversity per arm, collapse, judge, annotation details."""
    L = header_lines(rep) + headline_lines(rep)
    L += ['## Competence (read this before the headline)', '',
          "What is scored is a response, never an annotation: a sample *leaks* if its text holds special-token text "
          "('<|') or a key:value of the corpus's annotation keys; leaks: the share of an arm's samples that do "
          "(per seed in parentheses), and every other figure of this report is of the scored samples, those that do "
          "not (a prompt with fewer than 2 of them, or none for a share, is left out of the mean). "
          "fluency: share of generated words that occur in the pretraining corpus; format: starts with the SFT "
          "format's first line; quality: in format and finished; sft_share: share of samples the judge puts in the "
          f"SFT set's values {rep['sft_values']}; for arms that sample annotations: share of valid label values, "
          "prior kept (1 = as diverse as the corpus) and fidelity (the judge agrees with the sampled value).", '']
    L += competence_rows(rep)
    cols = div_metrics + ['finish_rate', 'mean_tokens']
    L += ['', '## Arms', '', f"| arm | samples/prompt | {' | '.join(cols)} |", '|---' * (len(cols) + 2) + '|']
    for a, r in rep['arms'].items():
        cells = [f"{with_ci(r['metrics'][m])} {per_seed(r['metrics'][m])}".strip() if m in heads
                 else fmt(r['metrics'][m]['mean']) for m in cols]
        L.append(f"| {a}{mark(rep, a)} | {r['samples_per_prompt']:g} | {' | '.join(cells)} |")
    if 'diversity_quality.png' in rep.get('plots', ()):
        L += ['', f"![{heads[0]} against quality](diversity_quality.png)"]
    L += [''] + quality_lines(rep) + prompt_group_lines(rep) + ladder_lines(rep)
    L += (collapse_lines(rep, heads) if rep['collapse'] else []) + frontier_lines(rep)
    L += judge_lines(rep)
    L += [''] + annotation_lines(rep)
    if rep['notes']:
        L += ['## Notes', ''] + [f'- {n}' for n in rep['notes']]
    return '\n'.join(L).rstrip('\n') + '\n'


ENTROPY_HEADER = "## Collapse against the SFT set's semantic entropy"


def entropy_section(rep, ents, ks, report_dir):
    """Collapse against the semantic entropy of the SFT set (ents: bits of the k-topic sets), per
    headline metric (paper: SFT's output entropy tracks its data's entropy; anchored is nearly
    invariant); one table and one plot per metric."""
    L = [ENTROPY_HEADER]
    for metric in rep['headline']['metrics']:
        coll = rep['collapse'][metric]['collapse']
        series = {m: [(e, coll[f'{m}-k{k}']['value']) for e, k in zip(ents, ks)] for m in ('sft', 'anchored')}
        L += ['', f'Collapse on {metric}:', '',
              '| topics k | SFT-set entropy (bits) | collapse sft | collapse anchored |', '|---|---|---|---|']
        L += [f"| {k} | {e:.2f} | {with_ci(coll[f'sft-k{k}'])} | {with_ci(coll[f'anchored-k{k}'])} |"
              for e, k in zip(ents, ks)]
        line_plot(os.path.join(report_dir, f'entropy_sweep_{metric}.png'), series,
                  'semantic entropy of the SFT set (bits)', f'collapse on {metric}')
        L += ['', f'![entropy sweep, {metric}](entropy_sweep_{metric}.png)']
    return '\n'.join(L) + '\n'


def scaling_section(reps, params, report_dir):
    """Every diversity metric against parameters, one line per arm (the paper's scaling figure),
    the metrics of every size and arm, and the comparisons on the headline metrics per size."""
    first = next(iter(reps.values()))
    metrics = list(first['collapse'])
    arms = [a for a in first['arms'] if a in ('base', 'sft', 'sft-replay', 'anchored', 'anchored-mask')]
    for m in metrics:
        series = {a: [(params[s], reps[s]['arms'][a]['metrics'][m]['mean']) for s in reps] for a in arms}
        line_plot(os.path.join(report_dir, f'scaling_{m}.png'), series, 'parameters', m, logx=True)
    L = ['# Scaling: diversity against model size', '',
         '| size | params | arm | ' + ' | '.join(metrics) + ' | quality |', '|---' * (len(metrics) + 4) + '|']
    for s, rep in reps.items():
        for a in arms:
            mt = rep['arms'][a]['metrics']
            L.append(f"| {s} | {params[s] / 1e6:.2f}M | {a} | " + ' | '.join(fmt(mt[m]['mean']) for m in metrics)
                     + f" | {pct(mt['quality']['mean'])} |")
    for m in first['headline']['metrics']:
        L += ['', f'On {m} (a headline metric), 95% CIs over seeds and prompts:', '',
              '| size | arm | control | difference | gap closed | collapse ratio |', '|---' * 6 + '|']
        for s, rep in reps.items():
            for a, per in rep['comparisons'][m].items():
                for c, f in per.items():
                    L.append(f"| {s} | {a} | {c} | {with_ci(f['diff'], signed)} | {with_ci(f['gap'], pct)} | "
                             f"{with_ci(f['ratio'], fmt2)} |")
    return '\n'.join(L + [''] + [f'![{m}](scaling_{m}.png)' for m in metrics] + [''])


RUN_HEADER = '## How this study ran'


def replication_note(pretrain_seeds):
    """What another machine's run of this study is expected to give: with one pretrained pair every
    seed shares it, and the CIs do not hold the variance of pretraining."""
    if pretrain_seeds == 1:
        return ("Every seed here post-trains the same pretrained pair, so the CIs hold post-training and "
                "sampling, not pretraining: another machine trains another pair and can land outside them "
                "(runs/seeds.sh repeats pretraining too).")
    return (f"The replicates come from {pretrain_seeds} pretrained pairs, so the CIs hold the variance of "
            "pretraining too: another machine's run is expected inside them, not at the same digits.")


def run_section(run):
    """How the study ran: its config, seeds, parallelism, the machine and the stage times."""
    env = run['environment']
    times = ', '.join(f'{k} {v:.0f}s' for k, v in run['stage_seconds'].items()) or 'none (all up to date)'
    return '\n'.join([
        RUN_HEADER, '',
        f"Config files: {', '.join(run['config_files'])}; seeds {run['seeds']} (ablations {run['ablation_seeds']}), "
        f"pretraining pairs {run['pretrain_seeds']}; {run['jobs']} stage(s) at a time with {run['threads_per_stage']} "
        f"torch thread(s) each, {run['nproc']} process(es) per training stage; training in {run['train_dtype']} "
        "(dtype 'auto': bf16 where the machine multiplies bf16 natively).",
        f"Machine: {env['gpu'] or env['cpu']}, {env['cores']} cores, torch {env['torch']}, Python {env['python']}, "
        f"{env['platform']}. Training on a CPU repeats exactly on one machine, not across machines. "
        + replication_note(run['pretrain_seeds']),
        f"Wall time of this invocation: {run['wall_seconds']} s; stages run: {times}.", ''])
