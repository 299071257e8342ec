"""
The figures of report.json that diversity.py derives from the per-prompt stats (metrics.summarize):
the headline (each anchored arm against each control, topic narrowing under both judges, whether
the judges agree), the figures on the good samples only, on the SFT set's own prompts and on
held-out ones, and what each ingredient adds (the ladder); the headline's sentences.
"""
import math

from metrics import difference, narrowing, summarize
from numfmt import fmt, pct, pts, ratio_x, signed, with_ci


def includes(ci, x=0.0):
    """Whether the CI holds x; a CI with a bound that is not finite holds anything."""
    return ci[0] <= x <= ci[1] if all(map(math.isfinite, ci)) else True


def headline_sentence(metric, arm, control, fig):
    """One comparison of the headline, difference and gap closed first, the collapse ratio beside
    them, with a plain caveat wherever the numbers do not say that anchoring helps."""
    d, g, r = fig['diff'], fig['gap'], fig['ratio']
    s = (f"{arm} vs {control} on {metric}: difference {signed(d['value'])} [{signed(d['ci'][0])}, "
         f"{signed(d['ci'][1])}], gap closed {with_ci(g, pct)}, collapse ratio {ratio_x(r['value'])} "
         f"[{fmt(r['ci'][0], 1)}, {fmt(r['ci'][1], 1)}]")
    if includes(d['ci']):
        s += ". The CI of the difference includes 0: no difference is resolved"
    elif d['value'] < 0:
        s += f". Reversed: {arm} is less diverse than {control}"
    if not fig['control_collapse']['value'] > 0:
        s += f". {control} does not collapse on {metric} (at or above base), so gap closed and the ratio say nothing"
    elif includes(fig['arm_collapse']['ci']) or fig['arm_collapse']['value'] <= 0:
        s += f". {arm}'s own collapse is near zero or below, so the ratio is ill-conditioned: read the difference"
    return s + '.'


def narrowing_sentence(narrow, arms):
    """Topic narrowing of the named arms, with CIs."""
    parts = [f"{a} {pts(narrow[a]['value'])} [{pts(narrow[a]['ci'][0])}, {pts(narrow[a]['ci'][1])}]" for a in arms]
    return "topic narrowing, sft_share(arm) - sft_share(base): " + ', '.join(parts) + '.'


def headline(comp, narrow, heads, anchored, controls, base_arm, control_arms, anchored_arms):
    """The headline sentences: the first anchored arm against each control on each headline metric,
    then the topic narrowing of the controls and the anchored arm. Caveats included."""
    if not anchored or not controls:
        return [f"headline not computed: needs arms '{base_arm}', one of '{control_arms}' and '{anchored_arms}'"]
    a = anchored[0]
    out = [headline_sentence(m, a, c, comp[m][a][c]) for m in heads for c in controls]
    if a in narrow:
        out.append(narrowing_sentence(narrow, [c for c in controls if c in narrow] + [a]))
    return out


def verdict(fig):
    """The sign of a difference and whether its CI excludes 0: what a reader takes from it."""
    sign = '+' if fig['value'] > 0 else '-' if fig['value'] < 0 else '0'
    return f"{sign}, CI {'includes' if includes(fig['ci']) else 'excludes'} 0"


def judge_verdicts(st, arm, controls, pairs):
    """For the headline arm against each control, on each topic figure (pairs: (the embedding judge's
    metric, the bag-of-words judge's)): the difference under each judge and whether their verdicts
    agree: a topic finding that holds only under one judge is the judge's, not the models'."""
    out = []
    for c in controls:
        for m, b in pairs:
            e, w = st.figure(difference, m, c, arm), st.figure(difference, b, c, arm)
            out.append(dict(control=c, metric=m, bow_metric=b, embedding=e, bow=w,
                            same=verdict(e) == verdict(w), verdicts=[verdict(e), verdict(w)]))
    return out


def share_differences(st, arm, controls, metrics):
    """sft_share(arm) - sft_share(control) for each share metric (each judge's): the topic narrowing
    of the headline arm against each control, beside the diversity differences."""
    return {m: {c: st.figure(difference, m, c, arm) for c in controls} for m in metrics if m in st.point[arm]}


def bow_twin(metric):
    """The bag-of-words judge's name of a topic figure ('entropy_topic' -> 'bow_entropy_topic')."""
    return 'bow_' + metric


def topic_pairs(heads, point):
    """(embedding judge's, bag-of-words judge's) names of the headline's topic figures that both judges made."""
    pairs = [(m, bow_twin(m)) for m in heads if m.startswith('entropy_')] + [('sft_share', bow_twin('sft_share'))]
    return [(m, b) for m, b in pairs if m in point and b in point]


def conditioned_figures(st, base, arm, controls, metrics):
    """Figures on the samples in format and finished only (q_<metric>) beside all samples: every arm's
    topic narrowing under each judge, q_sft_share(arm) - sft_share(base) (base never writes the format,
    so its share of all samples is the reference), and the headline arm minus each control on each
    metric (all samples, good samples). metrics: the all-sample names whose q_ twins were measured."""
    share = [m for m in ('sft_share', bow_twin('sft_share')) if any('q_' + m in p for p in st.point.values())]
    out = dict(metrics=metrics, narrowing={m: dict(all=narrowing(st, base, m, m), good=narrowing(st, base, 'q_' + m, m))
                                           for m in share})
    if arm and controls:
        out['diff'] = {m: {c: dict(all=st.figure(difference, m, c, arm), good=st.figure(difference, 'q_' + m, c, arm))
                           for c in controls} for m in share + metrics}
    return out


def headline_set(heads, point):
    """The headline's figures under both judges: each headline metric, the bag-of-words twin of a topic
    entropy, and the share of the SFT set's topics (topic narrowing) under each judge."""
    topic = [m for m in heads if m.startswith('entropy_')] + ['sft_share']
    return list(dict.fromkeys(heads + [x for m in topic for x in (m, bow_twin(m)) if x in point]))


def prompt_groups(in_sft, pids, notes):
    """{group: column ids of pids}: the SFT set's own prompts ('in_sft') and the others ('held_out');
    {} with a note where the prompts file says nothing (in_sft: the note) or a group would be empty."""
    if isinstance(in_sft, str):
        notes.append(in_sft)
        return {}
    unknown = [p for p in pids if p not in in_sft]
    if unknown:
        notes.append(f"{len(unknown)} sampled prompt(s) not in eval_prompts.jsonl (e.g. {unknown[0]!r}): "
                     "left out of both prompt groups")
    groups = {g: [i for i, p in enumerate(pids) if p in in_sft and in_sft[p] == flag]
              for g, flag in (('in_sft', True), ('held_out', False))}
    if not all(groups.values()):
        notes.append("the prompts are not split by prompt group: one group has no sampled prompt")
        return {}
    return groups


def group_figures(st, metrics, hl, base):
    """The headline's figures in one set of stats: every arm's topic narrowing under each judge and
    the headline arm minus each control on each of metrics."""
    a, controls = hl['arm'], hl['controls']
    out = dict(narrowing={m: narrowing(st, base, m, m) for m in ('sft_share', bow_twin('sft_share'))
                          if m in metrics})
    if a and controls:
        out['diff'] = {m: {c: st.figure(difference, m, c, a) for c in controls} for m in metrics}
    return out


def prompt_group_figures(table, groups, heads, hl, base, boot):
    """The headline's figures on all prompts, on the SFT set's own prompts and on the held-out ones,
    each bootstrapped over the prompts of its group only. boot: (resamples, seed, design) of summarize."""
    if not groups:
        return {}
    metrics = headline_set(heads, next(iter(table.values())))
    n_prompts = next(iter(next(iter(table.values())).values())).shape[1]
    out = {}
    for g, ids in dict(all=list(range(n_prompts)), **groups).items():
        st = summarize({a: {m: v[:, ids] for m, v in ms.items()} for a, ms in table.items()}, *boot)
        out[g] = dict(prompts=len(ids), **group_figures(st, metrics, hl, base))
    return dict(metrics=metrics, groups=out)


def ladder_figures(st, rungs, metrics):
    """What each ingredient adds (rungs: diversity.parse_ladder's plain and annotated arms, absent arms skipped):
    on each side every rung minus the one below it, and at every rung the annotated arm minus the
    plain one (what the annotation adds at that level), on each of metrics, with CI and per seed."""
    diffs = lambda x, y: {m: st.figure(difference, m, x, y) for m in metrics if m in st.point[x] and m in st.point[y]}
    out = dict(metrics=metrics, rungs=[list(r) for r in rungs], steps={}, annotation=[])
    for side, arms in zip(('plain', 'annotated'), rungs):
        have = [a for a in arms if a in st.point]
        out['steps'][side] = [dict(lower=x, upper=y, figures=diffs(x, y)) for x, y in zip(have, have[1:])]
    out['annotation'] = [dict(plain=p, annotated=a, figures=diffs(p, a)) for p, a in zip(*rungs)
                         if p in st.point and a in st.point]
    return out


def headline_figures(st, comp, heads, anchored, controls, names):
    """The headline block of report.json: the headline metrics, topic narrowing under each judge, the
    headline arm's narrowing against each control, the two judges' verdicts and the sentences.
    names: (base_arm, control_arms, anchored_arms) as configured, for the sentence of a missing arm."""
    base = names[0]
    narrow = narrowing(st, base)
    hl = dict(metrics=heads, arm=anchored[0] if anchored else None, controls=controls, narrowing=narrow,
              bow_narrowing=narrowing(st, base, bow_twin('sft_share'), bow_twin('sft_share')),
              sentences=headline(comp, narrow, heads, anchored, controls, *names))
    if anchored and controls:
        a = anchored[0]
        hl.update(share_diff=share_differences(st, a, controls, ['sft_share', bow_twin('sft_share')]),
                  judge_verdicts=judge_verdicts(st, a, controls, topic_pairs(heads, st.point[a])))
    return hl
