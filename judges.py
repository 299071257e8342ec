"""
The judges of diversity.py and the corpus reference: what the held-out corpus documents (never
model samples) say about a sample. Two judges of every categorical annotation key, a logistic
regression on sentence embeddings and one on TF-IDF word counts, trained and tested on the same
documents; and the corpus's label values, words and annotation prior that prompt_metrics scores
samples against.
"""
import math
from collections import Counter

import numpy as np

from embeddings import cached_embeddings
from formats import annotation_values
from metrics import entropy_bits, expected_entropy, leak_pattern

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


def build_judges(encoder, heldout, cat_keys, test_frac, max_docs, rng, notes):
    """Both judges (JUDGES) of every categorical key, on a capped random subset of the held-out docs
    (embedded by encoder, a CachedEmbedder), with the same train/test split: ({prefix: {key: classifier}},
    {prefix: {key: stats}})."""
    docs = [heldout[i] for i in sorted(rng.permutation(len(heldout))[:max_docs])]
    texts = [d['text'] for d in docs]
    inputs = judge_inputs(cached_embeddings(encoder, texts, 'heldout'), texts)
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
