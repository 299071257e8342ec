"""
The metrics of diversity.py, as pure functions of one prompt's samples (and of the numbers they
give), so each can be tested on hand-made inputs with known answers. Every diversity metric is
"higher = more diverse", which the collapse definitions need (docs/METHOD.md "Metrics"):

    entropy_bits    Shannon entropy of labels (the paper's story metric, on judge labels)
    dissimilarity   mean pairwise 1 - cos of sentence embeddings (the paper's dialogue metric)
    vendi           exp(entropy of the eigenvalues of K/n), K = cosine similarities (Friedman & Dieng 2023)
    distinct_n      distinct word n-grams / all word n-grams
    gzip_diversity  gzip bytes / raw bytes of the samples joined

    collapse(m) = (D_base - D_m) / D_base, collapse_ratio = collapse(sft) / collapse(anchored),
    gap_closed = (D_anchored - D_sft) / (D_base - D_sft)

and the competence figures that say whether a diversity number means anything (docs/METHOD.md):
fluency (share of words the corpus knows), sft_share, valid annotation values, prior kept, fidelity.
"""
import gzip
import math
import re
import warnings
from collections import Counter, namedtuple

import numpy as np

from formats import WORD, annotation_values


def entropy_bits(labels):
    """Shannon entropy (bits) of the empirical label distribution: 0 if all agree, log2 k for k
    equally frequent labels. The paper's story metric, applied to judge labels or annotations."""
    counts = np.array(list(Counter(labels).values()), dtype=float)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def cosine_matrix(emb):
    e = np.asarray(emb, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e @ e.T


def dissimilarity(emb):
    """Mean of 1 - cos over all pairs i < j (paper: dialogue diversity). 0 = all samples the same."""
    n = len(emb)
    if n < 2:
        return 0.0
    k = cosine_matrix(emb)
    return max(0.0, float(1.0 - (k.sum() - np.trace(k)) / (n * (n - 1))))  # clip rounding below 0


def vendi(emb):
    """Vendi score: the effective number of distinct samples, 1 (all the same) to n (orthogonal).
    K/n has trace 1, so its eigenvalues are a distribution; exp of its entropy is the score."""
    lam = np.linalg.eigvalsh(cosine_matrix(emb) / len(emb))
    lam = lam[lam > 1e-12]  # drop zeros and tiny negative rounding
    return float(np.exp(-(lam * np.log(lam)).sum()))


def distinct_n(texts, n=2):
    """Distinct word n-grams / all word n-grams, n-grams taken inside each sample (whitespace words)."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def gzip_diversity(texts):
    """gzip bytes / raw bytes of the samples joined. This is the inverse of the usual "compression
    ratio" (raw/compressed, Shaib et al. 2024) so that higher = more diverse, like every other metric:
    repeated samples compress well and score low. Short texts can exceed 1 (gzip's ~20-byte header)."""
    raw = '\n'.join(texts).encode()
    return len(gzip.compress(raw, mtime=0)) / len(raw) if raw else 0.0


def content(text, opening):
    """A sample without the SFT format's fixed first line: diversity, the judge and fluency are
    about what a text says, and the judge was trained on corpus documents, which have no such line."""
    stripped = text.lstrip()
    return stripped[len(opening):].lstrip() if opening and stripped.startswith(opening) else text


def fluency(texts, words):
    """Share of the words of texts (runs of letters, lowercased) that occur in the pretraining
    corpus (words: a set): a proxy for 'writes words, not noise'. No words at all: 0."""
    ws = [w.lower() for t in texts for w in WORD.findall(t)]
    return float(np.mean([w in words for w in ws])) if ws else 0.0


# -----------------------------------------------------------------------------
# collapse (docs/METHOD.md "Metrics"): numpy division, so x/0 is inf or nan instead of an exception;
# works on scalars and on arrays of bootstrap resamples alike

def _div(a, b):
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.divide(np.asarray(a, dtype=float), np.asarray(b, dtype=float))[()]


def collapse(d_base, d_m):
    return _div(np.subtract(d_base, d_m), d_base)


def collapse_ratio(c_sft, c_anchored):
    return _div(c_sft, c_anchored)


def gap_closed(d_base, d_sft, d_anchored):
    return _div(np.subtract(d_anchored, d_sft), np.subtract(d_base, d_sft))


def ci95(boot):
    """95% percentile CI of bootstrap values; nan resamples (0/0) are dropped. 'lower'/'higher'
    pick real resample values, so an inf resample never turns into nan by interpolation."""
    x = np.asarray(boot, dtype=float).ravel()
    x = x[~np.isnan(x)]
    if not len(x):
        return [math.nan, math.nan]
    return [float(np.percentile(x, 2.5, method='lower')), float(np.percentile(x, 97.5, method='higher'))]


# -----------------------------------------------------------------------------
# the two-level bootstrap: a figure's uncertainty includes training (the replicates: seeds), not
# only the sampling of prompts

DESIGNS = ('crossed', 'nested')


def bootstrap_draws(replicates, n_prompts, resamples, rng, design='crossed'):
    """Index draws of the two-level bootstrap, for every number of replicates R among the arms:
    (seed ids (B, R), prompt ids (B, R or 1, P)). Every replicate answers the same prompts (seeds
    crossed with prompts), so 'crossed' resamples the seeds and, once, the prompts, the same prompt
    draw for every seed: a hard prompt is hard for every seed, and drawing it for one seed only
    would average that variance away. 'nested' draws the prompts anew within each resampled
    replicate (as if each seed had its own prompts). Arms with the same R share their draws, and
    every arm takes the prompt draws of the first R slots, so that differences between arms keep
    their pairing by replicate (seed k of every arm) and by prompt."""
    if design == 'crossed':
        prompts = rng.integers(0, n_prompts, size=(resamples, 1, n_prompts))
        return {r: (rng.integers(0, r, size=(resamples, r)), prompts) for r in sorted(set(replicates))}
    prompts = rng.integers(0, n_prompts, size=(resamples, max(replicates), n_prompts))
    return {r: (rng.integers(0, r, size=(resamples, r)), prompts[:, :r]) for r in sorted(set(replicates))}


def nan_mean(values, axis=None):
    """The mean of the cells that are not NaN (a prompt with too few samples for a figure gives NaN):
    the same digits as .mean() where no cell is NaN; NaN where every cell is."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # 'Mean of empty slice': NaN is the answer
        return np.nanmean(values, axis=axis)


def bootstrap_means(values, draws):
    """values (R, P), one row per replicate and one column per prompt -> the (B,) bootstrap
    resamples of their mean over the grid of drawn cells, with the draws of bootstrap_draws."""
    values = np.asarray(values, dtype=float)
    seeds, prompts = draws[len(values)]
    return nan_mean(values[seeds[:, :, None], prompts], axis=(1, 2))


# two-sided 95% quantiles of Student's t for df 1..30, where scipy is not installed
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df):
    try:
        from scipy.stats import t
        return float(t.ppf(0.975, df))
    except ImportError:
        return T975[df - 1] if df <= len(T975) else 1.96


def t_interval(per_seed):
    """95% t-interval of the mean of per-replicate values: mean +- t(0.975, R-1) s / sqrt(R), the
    spread of training alone, read beside the bootstrap's CI. None for fewer than 2 replicates (no
    training variance to read)."""
    x = np.asarray(per_seed if per_seed is not None else [], dtype=float)
    if len(x) < 2:
        return None
    half = t975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return [float(x.mean() - half), float(x.mean() + half)]


def derived(fn, point, boot, seeds):
    """A figure computed from the means of several arms (fn(*arm means), e.g. gap_closed of base,
    control and anchored): its value, its 95% CI over the bootstrap resamples, and its value per
    replicate where all the arms have the same number of replicates (else None). point, boot, seeds:
    one entry per argument of fn."""
    per = None
    if len({len(s) for s in seeds}) == 1:
        per = [float(v) for v in np.atleast_1d(fn(*(np.asarray(s, dtype=float) for s in seeds)))]
    return dict(value=float(fn(*point)), ci=ci95(fn(*boot)), seeds=per, t_ci=t_interval(per))


def expected_entropy(counts, n, rng, reps=2000):
    """Mean entropy (bits) of n draws from the distribution `counts`. With n samples per prompt the
    label entropy can never exceed log2(n), so sampled annotations are compared with n corpus draws."""
    p = np.asarray(counts, dtype=float) / np.sum(counts)
    draws = rng.choice(len(p), size=(reps, n), p=p) + len(p) * np.arange(reps)[:, None]
    c = np.bincount(draws.ravel(), minlength=reps * len(p)).reshape(reps, len(p)) / n
    with np.errstate(divide='ignore', invalid='ignore'):
        return float(np.nansum(-c * np.log2(c), axis=1).mean()) + 0.0


SPREAD = ('entropy_', 'dissimilarity', 'vendi', 'distinct2', 'gzip', 'prior_kept_')


def needs(metric):
    """How many samples a figure needs: a spread (how samples differ from each other) 2, a share 1."""
    return 2 if any(s in metric for s in SPREAD) else 1


def measurable(m, n):
    """m with NaN where n samples are too few to say anything (needs); means over prompts skip them."""
    return {k: (math.nan if n < needs(k) else v) for k, v in m.items()}


def share(flags):
    """The share of true flags; NaN for none (no samples to count), without numpy's warning."""
    return float(np.mean(flags)) if len(flags) else math.nan


def judge_figures(judged, ref, prefix, vals=None):
    """The figures of one judge's labels ({key: labels}) of some samples, names led by prefix ('' for
    the embedding judge, 'bow_' for the bag-of-words one): the labels' entropy per key, the share in
    the SFT set's values, and with vals ({key: the sampled annotation values}) fidelity per key."""
    m = {f'{prefix}entropy_{k}': entropy_bits(lab) for k, lab in judged.items()}
    if ref['sft_key'] in judged:  # did SFT narrow the topics? the share judged to be the SFT set's
        m[f'{prefix}sft_share'] = share([j in ref['sft_values'] for j in judged[ref['sft_key']]])
    for k, v in (vals or {}).items():
        if k in judged:  # does the text follow its annotation?
            m[f'{prefix}fidelity_{k}'] = share([j == x for j, x in zip(judged[k], v)])
    return m


def agreement(judged):
    """judges_agree_<k>: share of samples that every judge of key k gives the same label."""
    keys = set.intersection(*(set(js) for js in judged.values())) if len(judged) > 1 else set()
    return {f'judges_agree_{k}': share([len(set(ls)) == 1 for ls in zip(*(js[k] for js in judged.values()))])
            for k in sorted(keys)}


def pick(items, mask):
    return [x for x, keep in zip(items, mask) if keep]


def pick_labels(judged, mask):
    """Every judge's labels ({judge prefix: {key: labels}}) of the masked samples only."""
    return {p: {k: pick(lab, mask) for k, lab in js.items()} for p, js in judged.items()}


def quality_figures(emb, judged, ref, good):
    """q_<figure>: the topic figures of every judge and the dissimilarity of the samples in format and
    finished only (good: a mask), so that an arm that writes less of the format is not read as more
    diverse for its broken samples; NaN where too few samples are good."""
    sub = pick_labels(judged, good)
    m = {f'q_{k}': v for p, js in sub.items() for k, v in judge_figures(js, ref, p).items()}
    m['q_dissimilarity'] = dissimilarity(np.asarray(emb)[np.asarray(good, dtype=bool)])
    return measurable(m, int(np.sum(good)))


def sample_figures(rows, emb, judged, ref, annotated):
    """Every metric of some samples of one prompt (prompt_metrics: the scored ones)."""
    raw = [r['text'] for r in rows]
    texts = [content(t, ref['opening']) for t in raw]  # emb and judged are of these, too
    m = dict(dissimilarity=dissimilarity(emb), vendi=vendi(emb), distinct2=distinct_n(texts),
             gzip=gzip_diversity(texts))
    fmt = np.array([t.lstrip().startswith(ref['opening']) for t in raw])
    fin = np.array([r['finished'] for r in rows])
    m.update(format_rate=fmt.mean(), finish_rate=fin.mean(), quality=(fmt & fin).mean(),
             mean_tokens=np.mean([r['tokens'] for r in rows]), fluency=fluency(texts, ref['words']))
    vals = None
    if annotated:
        anns = [annotation_values(r['annotation']) for r in rows]
        vals = {k: [a.get(k, '') for a in anns] for k in ref['cat_keys']}  # a missing key counts as its own value ''
        for k, v in vals.items():
            m[f'ann_entropy_{k}'] = entropy_bits(v)
            m[f'prior_kept_{k}'] = _div(m[f'ann_entropy_{k}'], ref['prior_h'](k, len(rows)))
            # malformed values also add entropy: how many sampled values are real labels at all
            m[f'ann_valid_{k}'] = np.mean([x in ref['known'][k] for x in v])
    for p, js in judged.items():
        m.update(judge_figures(js, ref, p, vals))
    m.update(agreement(judged))
    m.update(quality_figures(emb, judged, ref, fmt & fin))
    return {k: float(v) for k, v in m.items()}


def leak_pattern(keys):
    """What a response must not hold: special-token text ('<|') or a key:value of the corpus's annotation
    keys, i.e. an annotation written into the response, which the judges would read as a topic."""
    alts = '|'.join(re.escape(k) for k in keys)
    return re.compile(r'<\|' + (rf'|(?<![\w])(?:{alts}):\S' if alts else ''))


def leaks(texts, pattern):
    """A mask of the texts that leak (pattern: leak_pattern; None: none does)."""
    return np.array([pattern is not None and pattern.search(t) is not None for t in texts], dtype=bool)


def prompt_metrics(rows, emb, judged, ref, annotated):
    """Every metric of one prompt's samples. emb, judged ({judge prefix: {key: labels}}, '' the
    embedding judge, 'bow_' the bag-of-words one): of the samples' content (without the format line).
    ref: what the corpus says, a dict with opening (the SFT format's first line), cat_keys, known
    ({key: the corpus's values}), words (the corpus's words), sft_key and sft_values (the SFT set's
    slice), prior_h(k, n) (entropy of n corpus draws of key k), leak (leak_pattern; absent: no sample
    leaks). annotated: the arm sampled annotations. What is scored is a response, never an annotation:
    every figure is of the samples that do not leak (NaN where they are too few), beside leak_rate (of
    all samples) and scored (how many do not leak)."""
    leak = leaks([r['text'] for r in rows], ref.get('leak'))
    keep = ~leak
    n = int(keep.sum())
    sub = pick(rows, keep), np.asarray(emb)[keep], pick_labels(judged, keep)
    # with none scored, the figures of all samples only name the metrics: measurable makes each NaN
    m = measurable(sample_figures(*(sub if n else (rows, emb, judged)), ref, annotated), n)
    return dict(m, leak_rate=float(leak.mean()), scored=float(n))


# -----------------------------------------------------------------------------
# the report's statistics: every arm's means over replicates with their bootstrap resamples, and
# the figures computed from them (collapse, the comparisons with the controls, topic narrowing, the
# temperature sweep at matched quality)

def summarize(table, bootstrap, seed, design='crossed'):
    """table: {arm: {metric: (R, P) array}} -> Stats of every arm and metric: the mean over replicates
    and prompts, its `bootstrap` resamples (seeds and prompts, `design` of bootstrap_draws; paired
    across arms; 0: no CIs), and the mean of every replicate. NaN cells (too few samples) are skipped."""
    rng = np.random.default_rng(seed)
    shapes = [next(iter(ms.values())).shape for ms in table.values()]
    draws = bootstrap_draws([r for r, _ in shapes], shapes[0][1], max(bootstrap, 1), rng, design)
    st = Stats({}, {}, {})
    for a, ms in table.items():
        st.point[a] = {m: float(nan_mean(v)) for m, v in ms.items()}
        st.boot[a] = {m: bootstrap_means(v, draws) if bootstrap else np.full(1, math.nan) for m, v in ms.items()}
        st.seeds[a] = {m: nan_mean(v, axis=1) for m, v in ms.items()}
    return st


class Stats(namedtuple('Stats', 'point boot seeds')):
    """{arm: {metric: x}} three ways: point means, bootstrap resamples, per-replicate means."""

    def figure(self, fn, metric, *arms):
        """fn of the arms' means of one metric: its value, 95% CI and per-replicate values."""
        return self.figure_of(fn, *((a, metric) for a in arms))

    def figure_of(self, fn, *cells):
        """fn of the means of (arm, metric) cells, e.g. q_sft_share of an arm against sft_share of base."""
        pick = lambda d: [d[a][m] for a, m in cells]
        return derived(fn, pick(self.point), pick(self.boot), pick(self.seeds))


def difference(d_control, d_arm):
    return np.subtract(d_arm, d_control)


def ratio_of(d_base, d_control, d_arm):
    return collapse_ratio(collapse(d_base, d_control), collapse(d_base, d_arm))


def collapse_table(st, metrics, base_arm, notes):
    """For every diversity metric: D per arm and collapse(m) = (D_base - D_m) / D_base per arm."""
    if base_arm not in st.point:
        notes.append(f"no collapse: base arm '{base_arm}' is not among the arms")
        return {}
    return {m: dict(values={a: st.point[a][m] for a in st.point},
                    collapse={a: st.figure(collapse, m, base_arm, a) for a in st.point}) for m in metrics}


def comparisons(st, metrics, base_arm, anchored, controls):
    """Every anchored arm against every control on every metric: the difference D_arm - D_control,
    gap closed (D_arm - D_control) / (D_base - D_control) and the collapse ratio
    collapse(control) / collapse(arm), each with its CI and per-replicate values."""
    return {m: {a: {c: dict(diff=st.figure(difference, m, c, a), gap=st.figure(gap_closed, m, base_arm, c, a),
                            ratio=st.figure(ratio_of, m, base_arm, c, a),
                            control_collapse=st.figure(collapse, m, base_arm, c),
                            arm_collapse=st.figure(collapse, m, base_arm, a)) for c in controls}
                for a in anchored} for m in metrics}


def narrowing(st, base_arm, metric='sft_share', base_metric='sft_share'):
    """Topic narrowing = sft_share(arm) - sft_share(base): how far an arm's samples moved toward the
    SFT set's own topics. Label entropy can miss it where the base model's topics are skewed (moving
    mass toward the SFT topics can even them out); the share of the SFT topics cannot. metric: the
    arm's share (bow_sft_share: the other judge's; q_sft_share: of its good samples only), read
    against base's base_metric (base never writes the format: its share of all samples)."""
    base = st.point.get(base_arm, {})
    return {a: st.figure_of(difference, (base_arm, base_metric), (a, metric)) for a in st.point
            if a != base_arm and metric in st.point[a] and base_metric in base}


def sweeps(arms):
    """{arm: [(temperature, sampled arm name)]} of the arms sampled at several temperatures, which
    are named '<arm>@t<temperature>' (study.py --temperatures), sorted by temperature."""
    out = {}
    for a in arms:
        name, sep, t = a.partition('@t')
        if sep and t.replace('.', '', 1).isdigit():
            out.setdefault(name, []).append((float(t), a))
    return {k: sorted(v) for k, v in out.items()}


def interp_at(q, curve_q, curve_d):
    """The diversity of a curve at quality q, linear between its points (sorted by quality); nan
    outside them: a control is compared only where its own temperatures reach that quality."""
    order = np.argsort(curve_q)
    return float(np.interp(q, np.asarray(curve_q)[order], np.asarray(curve_d)[order], left=np.nan, right=np.nan))


def matched_diff(view, i, arm, curve, metric):
    """D(arm) minus the curve's D at arm's quality, in one view of the stats (point, a bootstrap
    resample i, a replicate i)."""
    at = (lambda x: x) if i is None else (lambda x: x[i])
    q, d = zip(*[(at(view[c]['quality']), at(view[c][metric])) for c in curve])
    return at(view[arm][metric]) - interp_at(at(view[arm]['quality']), q, d)


def matched_quality(st, metrics, anchored, controls):
    """The temperature sweep read at matched quality (paper: anchored lies on a better
    diversity-quality frontier): at each temperature of an anchored arm, its diversity minus the
    control's at the same quality, interpolated along the control's own temperature curve; with CI
    (per bootstrap resample: both curves resampled) and per-replicate values."""
    sw, out = sweeps(st.point), {}
    for m, a, c in ((m, a, c) for m in metrics for a in anchored if a in sw for c in controls if c in sw):
        curve, rows = [arm for _, arm in sw[c]], []
        for t, arm in sw[a]:
            boot = [matched_diff(st.boot, i, arm, curve, m) for i in range(len(st.boot[arm][m]))]
            reps = {len(st.seeds[x][m]) for x in [arm] + curve}
            per = [matched_diff(st.seeds, i, arm, curve, m) for i in range(reps.pop())] if len(reps) == 1 else None
            rows.append(dict(temperature=t, quality=st.point[arm]['quality'],
                             diff=dict(value=matched_diff(st.point, None, arm, curve, m), ci=ci95(boot), seeds=per)))
        out.setdefault(m, {}).setdefault(a, {})[c] = rows
    return out
