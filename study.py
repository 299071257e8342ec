"""
The controlled experiment in one command: annotate, both pretrainings, the post-trainings, sampling
and the diversity report, for the arms of the paper's study (DESIGN.md section 1.5):

    base              plain pretraining, unconditional samples (the diversity reference)
    annotated-base    annotated pretraining, unconditional samples (annotation, then text)
    sft               plain pretraining + standard SFT
    anchored          annotated pretraining + anchored SFT, annotation sampled first
    anchored-plain    ablation: anchored SFT on the plain pretrained model
    anchored-noann    ablation: the anchored model with an empty annotation (--no_annotation)
    anchored-prior    the anchored model, its annotation drawn from the annotated *pretrained* model,
                      i.e. from the prior R(z) that anchored SFT means to keep (sample.py --annotation_from)

    python study.py config/small.py                                  # runs/small.sh: the laptop study
    python study.py config/small.py --temperatures=0.6,0.8,1.0,1.1   # + temperature sweep (sft, anchored)
    python study.py config/small.py --sft_topic_counts=1,2,4,8 --out_root=out/entropy   # SFT-set entropy
    python study.py config/small.py --sizes='xs:--n_layer=2 --n_embd=64 --n_head=2;s:' --out_root=out/scaling

Every stage runs as its own script with the config file named on the command line. A stage whose
outputs exist and whose stamp (its command, the config file, its script, the shared modules and the
stamps of its inputs) is unchanged is skipped, so a re-run only redoes what changed. Prints report.md at the end.
"""
import hashlib
import json
import os
import subprocess
import sys
import time

from common import UserError, atomic_write, main_guard, read_json, write_json, write_text

# -----------------------------------------------------------------------------
config_file = 'config/small.py'  # the config every stage runs with (the one named on the command line)
out_root = 'out/small'
data_name = 'wiki'  # data dir name (annotate.py's --name) under data_root
data_root = 'data'
num_samples = 16  # per eval prompt and arm
max_new_tokens = 192
temperature = 1.0
temperatures = ''  # e.g. '0.6,0.8,1.0,1.1': sft and anchored also sampled at these (diversity-quality plot)
sft_topic_counts = ''  # e.g. '1,2,4,8': SFT sets allowing that many topics (collapse vs SFT-set entropy)
sweep_topics = ('People,Biology_and_health_sciences,Geography,Physical_sciences,Society_and_social_sciences,'
                'Arts,Technology,History')  # in this order: k topics = the first k
sweep_rows = 150  # SFT rows per sweep set: equal size, so only the semantic entropy differs
sweep_docs = 1200  # SFT documents held out over all sweep topics
sizes = ''  # scaling: 'name:pretrain args;name:args' (base, sft, anchored at each size; '' = one size)
force = False  # rerun every stage
from configurator import configure  # noqa: E402
config = configure(globals())
config_file = next((a for a in sys.argv[1:] if not a.startswith('--')), config_file)
# -----------------------------------------------------------------------------


SHARED = ('model.py', 'formats.py', 'training.py', 'common.py', 'configurator.py')


def sha(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
    return h.hexdigest()[:16]


def file_hash(path):
    with open(path, 'rb') as f:
        return sha(f.read())


class Stages:
    """Runs stage scripts; skips one whose outputs exist and whose stamp is unchanged."""

    def __init__(self):
        self.path = os.path.join(out_root, 'stamps.json')
        self.stamps = read_json(self.path) if os.path.isfile(self.path) and not force else {}
        # a stage's code is its script and the modules every stage imports
        self.cfg_hash = sha(file_hash(config_file), *(file_hash(m) for m in SHARED))
        self.times = {}

    def run(self, name, script, args, outputs, deps=()):
        cmd = [sys.executable, script, config_file] + [str(a) for a in args]
        stamp = sha(json.dumps(cmd[1:]), self.cfg_hash, file_hash(script), *(self.stamps.get(d, '') for d in deps))
        if self.stamps.get(name) == stamp and all(os.path.exists(o) for o in outputs):
            print(f"[{name}] up to date, skipped")
            return
        print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        r = subprocess.run(cmd)
        if r.returncode != 0:
            raise UserError(f"stage '{name}' failed (exit {r.returncode}): {' '.join(cmd[1:])}")
        self.times[name] = round(time.time() - t0, 1)
        self.stamps[name] = stamp
        write_json(self.path, self.stamps)  # after every stage: an interrupted study resumes here


def arms_of_study(st, root, data_dir, tag='', pretrain_args=(), full=True, ks=()):
    """Pretrain, post-train and sample the arms under root; returns [(arm, samples path)].
    full: also the annotated-base and ablation arms and the temperature sweep; ks: the SFT-entropy
    sweep instead of the single narrow SFT set. tag prefixes the stage names (scaling sizes)."""
    o = lambda *p: os.path.join(root, *p)
    d = f'--data_dir={data_dir}'
    st.run(f'{tag}pretrain-plain', 'pretrain.py', [d, f'--out_dir={o("base")}', *pretrain_args],
           [o('base', 'ckpt.pt')], ['annotate'])
    st.run(f'{tag}pretrain-annotated', 'pretrain.py', [d, '--annotated=True', f'--out_dir={o("annotated-base")}',
                                                       *pretrain_args], [o('annotated-base', 'ckpt.pt')], ['annotate'])
    init = {'sft': 'base', 'anchor': 'annotated-base'}
    stage = lambda run: {'base': f'{tag}pretrain-plain', 'annotated-base': f'{tag}pretrain-annotated'}.get(
        run, f'{tag}{run}')  # the stage that writes the checkpoint of a run

    def post(run, method, init_run, *args):
        st.run(f'{tag}{run}', 'anchor_sft.py', [d, f'--method={method}', f'--init_dir={o(init_run)}',
                                                f'--out_dir={o(run)}', *args], [o(run, 'ckpt.pt')], [stage(init_run)])

    def sample(arm, run, temp=temperature, *args):
        path = o('samples', f'{arm}.jsonl')
        dep = stage(run)
        st.run(f'{tag}sample-{arm}', 'sample.py', [f'--ckpt_dir={o(run)}', f'--out={path}',
                                                   f'--num_samples={num_samples}', f'--max_new_tokens={max_new_tokens}',
                                                   f'--temperature={temp}', *args], [path], [dep])
        return arm, path

    arms = [sample('base', 'base')] + ([sample('annotated-base', 'annotated-base')] if full else [])
    if ks:  # SFT sets of k topics, equal size: only their semantic entropy differs
        topics = sweep_topics.split(',')
        for k in ks:
            for method, run in (('sft', f'sft-k{k}'), ('anchor', f'anchored-k{k}')):
                post(run, method, init[method], f'--sft_topics={",".join(topics[:k])}', f'--sft_max_rows={sweep_rows}')
                arms.append(sample(run, run))
        return arms
    post('sft', 'sft', 'base')
    post('anchored', 'anchor', 'annotated-base')
    arms += [sample('sft', 'sft'), sample('anchored', 'anchored')]
    if full:
        post('anchored-plain', 'anchor', 'base')  # ablation: the prior must come from pretraining
        arms += [sample('anchored-plain', 'anchored-plain'),
                 sample('anchored-noann', 'anchored', temperature, '--no_annotation=True'),
                 # the annotation from the pretrained prior R(z) itself: the paper's goal distribution
                 sample('anchored-prior', 'anchored', temperature, f'--annotation_from={o("annotated-base")}')]
        for t in [float(x) for x in temperatures.split(',') if x.strip()]:
            arms += [sample(f'sft@t{t:g}', 'sft', t), sample(f'anchored@t{t:g}', 'anchored', t)]
    return arms


def report(st, tag, arms, data_dir, report_dir, *args):
    st.run(f'{tag}diversity', 'diversity.py', [f'--samples={",".join(f"{a}={p}" for a, p in arms)}',
                                               f'--data_dir={data_dir}', f'--out_dir={report_dir}', *args],
           [os.path.join(report_dir, 'report.md')], [f'{tag}sample-{a}' for a, _ in arms])
    return read_json(os.path.join(report_dir, 'report.json'))


def plot(path, series, xlabel, ylabel, logx=False):
    """One line per arm: series = {arm: [(x, y), ...]}."""
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


ENTROPY_HEADER = "## Collapse against the SFT set's semantic entropy"


def entropy_section(rep, root, report_dir, ks):
    """Collapse against the semantic entropy of the SFT set (paper: SFT's output entropy tracks its
    data's entropy; anchored is nearly invariant)."""
    metric = rep['headline']['metric']
    coll = rep['collapse'][metric]['collapse']
    lines = ['| topics k | SFT-set entropy (bits) | collapse sft | collapse anchored |', '|---|---|---|---|']
    series = {'sft': [], 'anchored': []}
    for k in ks:
        h = read_json(os.path.join(root, f'sft-k{k}', 'sft_set.json'))['entropy_bits']
        c = {m: coll[f'{m}-k{k}']['value'] for m in series}
        for m in series:
            series[m].append((h, c[m]))
        lines.append(f"| {k} | {h:.2f} | {c['sft']:.3f} | {c['anchored']:.3f} |")
    plot(os.path.join(report_dir, 'entropy_sweep.png'), series, 'semantic entropy of the SFT set (bits)',
         f'collapse on {metric}')
    return '\n'.join(['', ENTROPY_HEADER, ''] + lines +
                     ['', '![entropy sweep](entropy_sweep.png)', ''])


def scaling_section(reps, params, report_dir):
    """Every diversity metric against parameters, one line per arm (the paper's scaling figure),
    the metrics of every size and arm, and the collapse numbers of the headline metric per size."""
    first = next(iter(reps.values()))
    metrics, head = list(first['collapse']), first['headline']['metric']
    arms = ('base', 'sft', 'anchored')
    num = lambda x, f='{:.3f}': f.format(x) if isinstance(x, (int, float)) else 'n/a'
    for m in metrics:
        series = {a: [(params[s], reps[s]['arms'][a]['metrics'][m]['mean']) for s in reps] for a in arms}
        plot(os.path.join(report_dir, f'scaling_{m}.png'), series, 'parameters', m, logx=True)
    lines = ['| size | params | arm | ' + ' | '.join(metrics) + ' | quality |', '|---' * (len(metrics) + 4) + '|']
    for s, rep in reps.items():
        for a in arms:
            mt = rep['arms'][a]['metrics']
            lines.append(f"| {s} | {params[s] / 1e6:.2f}M | {a} | " + ' | '.join(num(mt[m]['mean']) for m in metrics)
                         + f" | {num(mt['quality']['mean'])} |")
    lines += ['', f'Collapse on {head} (the headline metric), 95% CIs over prompts:', '',
              '| size | collapse sft | collapse anchored | collapse ratio | gap closed |', '|---|---|---|---|---|']
    for s, rep in reps.items():
        c = rep['collapse'][head]
        ci = lambda d, f: f"{num(d['value'], f)} [{num(d['ci'][0], f)}, {num(d['ci'][1], f)}]"
        lines.append(f"| {s} | {num(c['collapse']['sft']['value'])} | {num(c['collapse']['anchored']['value'])} | "
                     f"{ci(c['collapse_ratio'], '{:.2f}')} | {ci(c['gap_closed'], '{:.0%}')} |")
    return '\n'.join(['# Scaling: diversity against model size', ''] + lines + [''] +
                      [f'![{m}](scaling_{m}.png)' for m in metrics] + [''])


def model_params(ckpt_path):
    import torch
    from training import model_from_checkpoint
    return model_from_checkpoint(torch.load(ckpt_path, map_location='cpu', weights_only=False), 'cpu').num_params()


def main():
    if not os.path.isfile(config_file):
        raise UserError(f"config file not found: {config_file}")
    t_start = time.time()
    st = Stages()
    ks = [int(x) for x in sft_topic_counts.split(',') if x.strip()]
    if ks and max(ks) > len(sweep_topics.split(',')):
        raise UserError(f"sft_topic_counts asks for {max(ks)} topics, sweep_topics has {len(sweep_topics.split(','))}")
    # the SFT-entropy sweep holds out SFT documents of all its topics from pretraining: its own data dir
    name = f'{data_name}-sweep' if ks else data_name
    data_dir = os.path.join(data_root, name)
    sweep_args = [f'--sft_values={",".join(sweep_topics.split(",")[:max(ks)])}', f'--sft_docs={sweep_docs}'] if ks else []
    st.run('annotate', 'annotate.py', [f'--data_root={data_root}', f'--name={name}'] + sweep_args,
           [os.path.join(data_dir, 'meta.json')])
    report_dir = os.path.join(out_root, 'report')
    if sizes:
        reps, params = {}, {}
        for spec in sizes.split(';'):
            size, _, args = spec.partition(':')
            root = os.path.join(out_root, size.strip())
            arms = arms_of_study(st, root, data_dir, f'{size.strip()}/', args.split(), full=False)
            reps[size.strip()] = report(st, f'{size.strip()}/', arms, data_dir, os.path.join(root, 'report'))
            params[size.strip()] = model_params(os.path.join(root, 'base', 'ckpt.pt'))
        text = scaling_section(reps, params, report_dir)
        write_text(os.path.join(report_dir, 'report.md'), text)
    else:
        arms = arms_of_study(st, out_root, data_dir, ks=ks)
        k2 = 2 if 2 in ks else (ks[0] if ks else None)  # the k=2 pair stands for sft/anchored in the headline
        heads = [f'--sft_arm=sft-k{k2}', f'--anchored_arm=anchored-k{k2}'] if ks else []
        rep = report(st, '', arms, data_dir, report_dir, *heads)
        text = open(os.path.join(report_dir, 'report.md')).read()
        if ks:  # (a skipped diversity stage leaves the section of the last run in report.md)
            text = text.split(ENTROPY_HEADER)[0].rstrip('\n') + '\n'
            text += entropy_section(rep, out_root, report_dir, ks)
            write_text(os.path.join(report_dir, 'report.md'), text)
    print(text)
    ran = ', '.join(f'{k} {v:.0f}s' for k, v in st.times.items()) or 'nothing (all up to date)'
    print(f"study done in {time.time() - t_start:.0f}s; ran: {ran}")


if __name__ == '__main__':
    main_guard(main)
