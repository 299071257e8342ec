"""
The controlled experiment in one command: annotate, both pretrainings, the post-trainings, sampling
and the diversity report, for the arms of the paper's study (DESIGN.md section 1.5):

    base              plain pretraining, unconditional samples (the diversity reference)
    annotated-base    annotated pretraining, unconditional samples (annotation, then text)
    sft               plain pretraining + standard SFT
    anchored          annotated pretraining + anchored SFT as the config sets it (config/small.py: with
                      prior distillation and replay, DESIGN.md 1.8), annotation sampled first: the headline arm
    anchored-mask     the same with the paper's plain masking (anchor_prior=mask, no replay): the paper-faithful arm
    anchored-plain    ablation: anchored SFT (masking) on the plain pretrained model
    anchored-noann    ablation: the anchored model with an empty annotation (--no_annotation)
    anchored-prior    the anchored model, its annotation drawn from the annotated *pretrained* model,
                      i.e. from the prior R(z) that anchored SFT means to keep (sample.py --annotation_from)

    python study.py config/small.py                                  # runs/small.sh: the laptop study
    python study.py config/small.py --temperatures=0.6,0.8,1.0,1.1   # + temperature sweep (sft, anchored)
    python study.py config/small.py --sft_topic_counts=1,2,4,8 --out_root=out/entropy   # SFT-set entropy
    python study.py config/small.py --sizes='xs:--n_layer=2 --n_embd=64 --n_head=2;s:' --out_root=out/scaling

Every stage runs as its own script with the config file named on the command line; the study's own
keys below can be set in that file too. A stage whose outputs exist and whose stamp (its command,
the config file, its script, the shared modules and the stamps of its inputs) is unchanged is
skipped, so a re-run only redoes what changed. Prints report.md at the end.
"""
import hashlib
import json
import os
import subprocess
import sys
import time

from common import UserError, check_config, check_out_dir, main_guard, read_json, write_json, write_text
from report import line_plot

# -----------------------------------------------------------------------------
config_file = 'config/small.py'  # the config every stage runs with (the one named on the command line)
out_root = 'out/small'
data_name = 'wiki'  # data dir name (annotate.py's --name) under data_root
data_root = 'data'
num_samples = 32  # per eval prompt and arm
max_new_tokens = 128
temperature = 1.0
temperatures = ''  # e.g. '0.6,0.8,1.0,1.1': sft and anchored also sampled at these (diversity-quality plot)
sft_topic_counts = ''  # e.g. '1,2,4,8': SFT sets allowing that many topics (collapse vs SFT-set entropy)
sweep_topics = ''  # the sweep's topics in order, k topics = the first k; '' = the most common values of sft_key
sweep_rows = 150  # SFT rows per sweep set: equal size, so only the semantic entropy differs
sweep_docs = 1200  # SFT documents held out over all sweep topics
jobs = 1  # training and sampling stages that do not depend on each other run this many at a time, each
# with cores // jobs torch threads (a small model uses 2 threads poorly: on 2 cores the two pretrainings
# side by side at 1 thread each finish ~20% sooner than one after the other at 2 threads)
sizes = ''  # scaling: 'name:pretrain args;name:args' (base, sft, anchored at each size; '' = one size)
force = False  # rerun every stage
from configurator import configure  # noqa: E402
config = configure(globals())
config_file = next((a for a in sys.argv[1:] if not a.startswith('--')), config_file)
# -----------------------------------------------------------------------------


SHARED = ('model.py', 'formats.py', 'training.py', 'common.py', 'configurator.py', 'metrics.py', 'report.py')


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
        self.run_all([(name, script, args, outputs, deps)])

    def run_all(self, stages, threaded=False):
        """Stages (name, script, args, outputs, deps), in an order where a stage follows those it
        depends on. Each starts as soon as its deps among them have finished, `jobs` at a time, the
        first ready one first. threaded: the scripts take --threads; with jobs > 1 each gets
        cores // jobs threads and its output goes to out_root/logs/<name>.log."""
        todo, new = [], {}
        for name, script, args, outputs, deps in stages:
            cmd = [sys.executable, script, config_file] + [str(a) for a in args]
            log = None
            if threaded and jobs > 1:  # (their output goes to a log: no progress bars)
                cmd += [f'--threads={max(1, (os.cpu_count() or 1) // jobs)}', '--progress=False']
                log = os.path.join(out_root, 'logs', f'{name}.log')
            new[name] = sha(json.dumps(cmd[1:]), self.cfg_hash, file_hash(script),
                            *(new.get(d, self.stamps.get(d, '')) for d in deps))
            if self.stamps.get(name) == new[name] and all(os.path.exists(o) for o in outputs):
                print(f"[{name}] up to date, skipped")
            else:  # it waits for the deps that run in this call
                todo.append((name, cmd, log, [d for d in deps if any(t[0] == d for t in todo)]))
        waiting, running, done, failed = list(todo), {}, set(), []
        while waiting or running:
            ready = [t for t in waiting if all(d in done for d in t[3])]
            while ready and len(running) < jobs and not failed:
                name, cmd, log, _ = t = ready.pop(0)
                waiting.remove(t)
                print(f"[{name}] {' '.join(cmd[1:])}" + (f"  (log: {log})" if log else ''), flush=True)
                if log:
                    os.makedirs(os.path.dirname(log), exist_ok=True)
                out = open(log, 'w') if log else None
                running[name] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None),
                                 out, cmd, log, time.time())
            if failed and not running:
                break
            finished = [n for n, r in running.items() if r[0].poll() is not None]
            if not finished:
                time.sleep(0.2)
                continue
            for name in finished:
                proc, out, cmd, log, t0 = running.pop(name)
                if out:
                    out.close()
                if proc.returncode != 0:
                    failed.append(f"stage '{name}' failed (exit {proc.returncode}): {' '.join(cmd[1:])}"
                                  + (f" (log: {log})" if log else ''))
                    continue
                done.add(name)
                self.times[name] = round(time.time() - t0, 1)
                self.stamps[name] = new[name]
                write_json(self.path, self.stamps)  # after every stage: an interrupted study resumes here
                if log:
                    print(f"[{name}] done in {self.times[name]:.0f}s", flush=True)
        if failed:
            raise UserError('; '.join(failed))


def arms_of_study(st, root, data_dir, tag='', pretrain_args=(), full=True, ks=(), topics=()):
    """Pretrain, post-train and sample the arms under root; returns [(arm, samples path)].
    full: also the annotated-base and ablation arms and the temperature sweep; ks: the SFT-entropy
    sweep over the first k of topics instead of the single narrow SFT set. tag prefixes the stage
    names (scaling sizes)."""
    o = lambda *p: os.path.join(root, *p)
    d = f'--data_dir={data_dir}'
    stages = [(f'{tag}pretrain-plain', 'pretrain.py', [d, f'--out_dir={o("base")}', *pretrain_args],
               [o('base', 'ckpt.pt')], ['annotate']),
              (f'{tag}pretrain-annotated', 'pretrain.py',
               [d, '--annotated=True', f'--out_dir={o("annotated-base")}', *pretrain_args],
               [o('annotated-base', 'ckpt.pt')], ['annotate'])]
    init = {'sft': 'base', 'anchor': 'annotated-base'}
    stage = lambda run: {'base': f'{tag}pretrain-plain', 'annotated-base': f'{tag}pretrain-annotated'}.get(
        run, f'{tag}{run}')  # the stage that writes the checkpoint of a run

    def post(run, method, init_run, *args):
        return (f'{tag}{run}', 'anchor_sft.py', [d, f'--method={method}', f'--init_dir={o(init_run)}',
                                                 f'--out_dir={o(run)}', *args], [o(run, 'ckpt.pt')], [stage(init_run)])

    def sample(arm, run, temp=temperature, *extra):
        path = o('samples', f'{arm}.jsonl')
        args = [f'--ckpt_dir={o(run)}', f'--out={path}', f'--num_samples={num_samples}',
                f'--max_new_tokens={max_new_tokens}', f'--temperature={temp}', *extra]
        return f'{tag}sample-{arm}', 'sample.py', args, [path], [stage(run)]

    if ks:  # SFT sets of k topics, equal size: only their semantic entropy differs
        runs = [(method, f'{name}-k{k}', k) for k in ks for method, name in (('sft', 'sft'), ('anchor', 'anchored'))]
        stages += [post(run, method, init[method], f'--sft_topics={",".join(topics[:k])}',
                        f'--sft_max_rows={sweep_rows}') for method, run, k in runs]
        samples = [sample('base', 'base'), sample('annotated-base', 'annotated-base')]
        samples += [sample(r, r) for _, r, _ in runs]
    else:
        # the paper's recipe as it is: z masked, nothing more (SFT's own learning rate)
        paper = ['--anchor_prior=mask', '--replay_rows=0', '--anchor_lr_frac=-1']
        stages += [post('sft', 'sft', 'base'), post('anchored', 'anchor', 'annotated-base'),
                   post('anchored-mask', 'anchor', 'annotated-base', *paper)]
        if full:  # ablation: the prior must come from pretraining (a plain model has none to distill)
            stages.append(post('anchored-plain', 'anchor', 'base', *paper))
        samples = [sample('base', 'base')] + ([sample('annotated-base', 'annotated-base')] if full else [])
        samples += [sample('sft', 'sft'), sample('anchored', 'anchored'), sample('anchored-mask', 'anchored-mask')]
        if full:
            samples += [sample('anchored-plain', 'anchored-plain'),
                        sample('anchored-noann', 'anchored', temperature, '--no_annotation=True'),
                        # the annotation from the pretrained prior R(z) itself: the paper's goal distribution
                        sample('anchored-prior', 'anchored', temperature, f'--annotation_from={o("annotated-base")}')]
            for t in numbers('temperatures', temperatures, float):
                samples += [sample(f'sft@t{t:g}', 'sft', t), sample(f'anchored@t{t:g}', 'anchored', t)]
    # training and sampling stages as one graph: each starts when its checkpoint is written, so an
    # arm is sampled while the other SFTs still train
    st.run_all(stages + samples, threaded=True)
    return [(name[len(f'{tag}sample-'):], outputs[0]) for name, _, _, outputs, _ in samples]


def report(st, tag, arms, data_dir, report_dir, *args):
    st.run(f'{tag}diversity', 'diversity.py', [f'--samples={",".join(f"{a}={p}" for a, p in arms)}',
                                               f'--data_dir={data_dir}', f'--out_dir={report_dir}',
                                               '--anchored_arm=anchored,anchored-mask', *args],
           [os.path.join(report_dir, 'report.md')], [f'{tag}sample-{a}' for a, _ in arms])
    return read_json(os.path.join(report_dir, 'report.json'))


ENTROPY_HEADER = "## Collapse against the SFT set's semantic entropy"


def num(x, f='{:.3f}'):
    """A number of report.json ('nan' where it is not a number) as text."""
    return f.format(x) if isinstance(x, (int, float)) else 'n/a'


def entropy_section(rep, root, report_dir, ks):
    """Collapse against the semantic entropy of the SFT set, per headline metric (paper: SFT's
    output entropy tracks its data's entropy; anchored is nearly invariant)."""
    ents = {k: read_json(os.path.join(root, f'sft-k{k}', 'sft_set.json'))['entropy_bits'] for k in ks}
    lines = ['', ENTROPY_HEADER]
    for metric in rep['headline']['metrics']:
        coll = rep['collapse'][metric]['collapse']
        series = {m: [(ents[k], coll[f'{m}-k{k}']['value']) for k in ks] for m in ('sft', 'anchored')}
        lines += ['', f'Collapse on {metric}:', '',
                  '| topics k | SFT-set entropy (bits) | collapse sft | collapse anchored |', '|---|---|---|---|']
        lines += [f"| {k} | {ents[k]:.2f} | {num(series['sft'][i][1])} | {num(series['anchored'][i][1])} |"
                  for i, k in enumerate(ks)]
        line_plot(os.path.join(report_dir, f'entropy_sweep_{metric}.png'), series,
                  'semantic entropy of the SFT set (bits)', f'collapse on {metric}')
        lines += ['', f'![entropy sweep, {metric}](entropy_sweep_{metric}.png)']
    return '\n'.join(lines + [''])


def scaling_section(reps, params, report_dir):
    """Every diversity metric against parameters, one line per arm (the paper's scaling figure),
    the metrics of every size and arm, and the collapse numbers of the headline metric per size."""
    first = next(iter(reps.values()))
    metrics = list(first['collapse'])
    arms = ('base', 'sft', 'anchored', 'anchored-mask')
    for m in metrics:
        series = {a: [(params[s], reps[s]['arms'][a]['metrics'][m]['mean']) for s in reps] for a in arms}
        line_plot(os.path.join(report_dir, f'scaling_{m}.png'), series, 'parameters', m, logx=True)
    lines = ['| size | params | arm | ' + ' | '.join(metrics) + ' | quality |', '|---' * (len(metrics) + 4) + '|']
    for s, rep in reps.items():
        for a in arms:
            mt = rep['arms'][a]['metrics']
            lines.append(f"| {s} | {params[s] / 1e6:.2f}M | {a} | " + ' | '.join(num(mt[m]['mean']) for m in metrics)
                         + f" | {num(mt['quality']['mean'])} |")
    ci = lambda d, f: f"{num(d['value'], f)} [{num(d['ci'][0], f)}, {num(d['ci'][1], f)}]"
    for m in first['headline']['metrics']:
        lines += ['', f'Collapse on {m} (a headline metric), 95% CIs over prompts:', '',
                  '| size | arm | collapse sft | collapse arm | collapse ratio | gap closed |', '|---' * 6 + '|']
        for s, rep in reps.items():
            c = rep['collapse'][m]
            for a in arms[2:]:
                lines.append(f"| {s} | {a} | {num(c['collapse']['sft']['value'])} | {num(c['collapse'][a]['value'])} | "
                             f"{ci(c['ratio'][a], '{:.2f}')} | {ci(c['gap'][a], '{:.0%}')} |")
    return '\n'.join(['# Scaling: diversity against model size', ''] + lines + [''] +
                      [f'![{m}](scaling_{m}.png)' for m in metrics] + [''])


def model_params(ckpt_path):
    import torch
    from training import model_from_checkpoint
    return model_from_checkpoint(torch.load(ckpt_path, map_location='cpu', weights_only=False), 'cpu').num_params()


def numbers(key, text, kind):
    """A comma-separated list of numbers of one kind (int or float), or one clear line."""
    try:
        return [kind(x) for x in text.split(',') if x.strip()]
    except ValueError:
        raise UserError(f"{key} must be comma-separated {kind.__name__}s, got '{text}'")


def main():
    if not os.path.isfile(config_file):
        raise UserError(f"config file not found: {config_file}")
    check_config(config, positive=('num_samples', 'max_new_tokens', 'sweep_rows', 'sweep_docs', 'jobs'),
                 nonneg=('temperature',))
    temps, ks = numbers('temperatures', temperatures, float), numbers('sft_topic_counts', sft_topic_counts, int)
    if any(t < 0 for t in temps) or any(k < 1 for k in ks):
        raise UserError("temperatures must be >= 0 and sft_topic_counts >= 1")
    if sizes and any(not s.partition(':')[0].strip() for s in sizes.split(';')):
        raise UserError(f"sizes must be 'name:args;name:args', got '{sizes}'")
    check_out_dir(out_root, 'out_root')
    t_start = time.time()
    st = Stages()
    topics = [t.strip() for t in sweep_topics.split(',') if t.strip()]
    if ks and topics and max(ks) > len(topics):
        raise UserError(f"sft_topic_counts asks for {max(ks)} topics, sweep_topics has {len(topics)}")
    # the SFT-entropy sweep holds out SFT documents of all its topics from pretraining: its own data dir
    name = f'{data_name}-sweep' if ks else data_name
    data_dir = os.path.join(data_root, name)
    sweep_args = [f'--sft_values={",".join(topics[:max(ks)]) or f"top:{max(ks)}"}', f'--sft_docs={sweep_docs}'] \
        if ks else []
    st.run('annotate', 'annotate.py', [f'--data_root={data_root}', f'--name={name}'] + sweep_args,
           [os.path.join(data_dir, 'meta.json')])
    if ks:  # the SFT slice in order (top:K: most common first); k topics = the first k
        topics = read_json(os.path.join(data_dir, 'meta.json'))['sft_values']
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
        arms = arms_of_study(st, out_root, data_dir, ks=ks, topics=topics)
        k2 = 2 if 2 in ks else (ks[0] if ks else None)  # the k=2 pair stands for sft/anchored in the headline
        heads = [f'--sft_arm=sft-k{k2}', f'--anchored_arm=anchored-k{k2}'] if ks else []
        rep = report(st, '', arms, data_dir, report_dir, *heads)
        with open(os.path.join(report_dir, 'report.md')) as f:
            text = f.read()
        if ks:  # (a skipped diversity stage leaves the section of the last run in report.md)
            text = text.split(ENTROPY_HEADER)[0].rstrip('\n') + '\n'
            text += entropy_section(rep, out_root, report_dir, ks)
            write_text(os.path.join(report_dir, 'report.md'), text)
    print(text)
    ran = ', '.join(f'{k} {v:.0f}s' for k, v in st.times.items()) or 'nothing (all up to date)'
    print(f"study done in {time.time() - t_start:.0f}s; ran: {ran}")


if __name__ == '__main__':
    main_guard(main)
