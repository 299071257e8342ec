"""
The controlled experiment in one command: annotate, both pretrainings, the post-training of every
arm (RUNS, ARMS below) at every seed, sampling and the diversity report; prints report.md.

    python study.py config/small.py                                  # runs/small.sh: the laptop study
    python study.py config/small.py --decomposition=True             # runs/decompose.sh
    python study.py config/small.py --temperatures=0.6,0.8,1.0,1.1   # + the controls and anchored at each
    python study.py config/small.py --sft_topic_counts=1,2,4,8 --out_root=out/entropy   # SFT-set entropy
    python study.py config/small.py --sizes='xs:--n_layer=2 --n_embd=64 --n_head=2;s:' --out_root=out/scaling
    python study.py config/small.py --variants='sft-lr0.1:--method=sft --replay_rows=0 --sft_lr_frac=0.1'
    python study.py config/simplestories.py config/gpt_l6.py --nproc=8     # a data config, a model config

Every stage runs as its own script with the config files named on the command line (stages.py:
skipped when its outputs and stamp are unchanged; an interrupted training stage resumes from its
last checkpoint). The arms and the seeds: docs/METHOD.md, "The arms" and "Uncertainty".
"""
import os
import signal
import sys
import time
from dataclasses import dataclass

from common import (UserError, check_config, check_out_dir, environment, main_guard, read_json, split_list, write_json,
                    write_text)
from report import ENTROPY_HEADER, RUN_HEADER, entropy_section, run_section, scaling_section
from stages import Stage, Stages, lock_out_root, unlock_out_root

# -----------------------------------------------------------------------------
out_root = 'out/small'
report_dir = ''  # '' = out_root/report; another name keeps a sweep's report (runs/sft_recipes.sh) beside the study's
data_name = 'wiki'  # data dir name (annotate.py's --name) under data_root
data_root = 'data'
num_samples = 32  # per eval prompt, arm and seed
max_new_tokens = 128
temperature = 1.0
seeds = 1  # post-training and sampling seeds of every arm (config/small.py: 3)
ablation_seeds = 1  # seeds of the ablations anchored-prior and anchored-plain
arms = ''  # '' = every arm of the study; else only these and what they need (e.g. 'base,sft': a testbed
#           judged on the base and SFT arms alone, before any anchored number on it is seen)
decomposition = False  # also the arms that say where the gain comes from (anchored-mask, anchored-replay)
#                        and the paper's ablations, beside the headline arms (runs/decompose.sh)
pretrain_seeds = 1  # pretraining pairs; replicate k starts from pair k // seeds
seed = 1337  # replicate k trains and samples with seed + k, its pretraining pair with seed + k // seeds
temperatures = ''  # e.g. '0.6,0.8,1.0,1.1': the controls and anchored also sampled at these (frontier)
variants = ''  # extra post-training runs 'name:args;name:args' from the study's pretrained models, each sampled
#                at every seed (the SFT-recipe sweep); a name starting with 'anchored' is compared like one
sft_topic_counts = ''  # e.g. '1,2,4,8': SFT sets allowing that many topics (collapse vs SFT-set entropy)
sweep_topics = ''  # the sweep's topics in order, k topics = the first k; '' = the most common values of sft_key
sweep_rows = 150  # SFT rows per sweep set: equal size, so only the semantic entropy differs
sweep_docs = 1200  # SFT documents held out over all sweep topics
sizes = ''  # scaling: 'name:pretrain args;name:args' (base, the controls, anchored at each size)
jobs = 1  # training and sampling stages that do not depend on each other run this many at a time, each
# with cores // jobs torch threads (a small model uses 2 threads poorly: on 2 cores the two pretrainings
# side by side at 1 thread each finish ~20% sooner than one after the other at 2 threads)
nproc = 1  # > 1: every training stage runs under torchrun with this many processes (GPUs), one at a time
force = False  # rerun every stage
max_restarts = 3  # nproc > 1: torchrun restarts a training stage's group this many times after a rank fails; each
#                  restart continues from the last checkpoint. Enough for the transient faults of a long multi-GPU
#                  run (a lost rank, a collective timeout); a fault that repeats (a bug, out of memory) fails fast
from configurator import configure  # noqa: E402
config = configure(globals())
config_files = [a for a in sys.argv[1:] if not a.startswith('--')]
# -----------------------------------------------------------------------------

# The arms:
#   base              plain pretraining, unconditional samples (the diversity reference)
#   annotated-base    annotated pretraining, unconditional samples (annotation, then text)
#   sft               plain pretraining + standard SFT: the paper's baseline
#   sft-replay        + replay of plain pretraining documents at the anchored arm's learning rate
#   sft-distill       + the plain counterpart of prior distillation: the strongest control, every
#                     term of the anchored arm's loss but the annotation
#   anchored          annotated pretraining + anchored SFT as the config sets it (masking, replay,
#                     prior distillation), annotation sampled first: the headline arm
# with --decomposition=True, where the gain comes from, and the paper's ablations:
#   anchored-mask     anchored SFT with the paper's plain masking only: the paper-faithful arm
#   anchored-replay   + replay (the anchored arm without prior distillation)
#   anchored-noann    the anchored model with an empty annotation (sample.py --no_annotation)
#   anchored-prior    the anchored model, its annotation drawn from the annotated *pretrained* model,
#                     i.e. from the prior R(z) that anchored SFT means to keep (ablation_seeds)
#   anchored-plain    anchored SFT (masking) on the plain pretrained model: no prior to keep (ablation_seeds)
PAPER = ['--anchor_prior=mask', '--replay_rows=0']  # the paper's anchored SFT: z masked, nothing more
# post-training runs: method, the pretrained model it starts from, what it changes of the config's
# recipe. The config's recipe is the anchored arm's; each control takes the same terms on the plain
# side: the rungs sft < sft-replay < sft-distill and anchored-mask < anchored-replay < anchored add
# one ingredient each, and each plain rung has its annotated twin.
RUNS = {
    'sft': ('sft', 'base', PAPER),
    'sft-replay': ('sft', 'base', ['--anchor_prior=mask']),
    'sft-distill': ('sft', 'base', []),
    'anchored': ('anchored', 'annotated-base', []),
    'anchored-mask': ('anchored', 'annotated-base', PAPER),
    'anchored-replay': ('anchored', 'annotated-base', ['--anchor_prior=mask']),
    'anchored-plain': ('anchored', 'base', PAPER),
}
HEADLINE = ('base', 'annotated-base', 'sft', 'sft-replay', 'sft-distill', 'anchored')
CONTROLS = ('sft', 'sft-replay', 'sft-distill')  # the headline arm against each, the last the strongest
DECOMPOSITION = ('anchored-mask', 'anchored-replay', 'anchored-noann')  # at every seed
ABLATIONS = ('anchored-prior', 'anchored-plain')  # at ablation_seeds
LADDER = 'sft,sft-replay,sft-distill;anchored-mask,anchored-replay,anchored'  # one ingredient a rung
# sampled arms: the run (or pretrained model) they sample and how
ARMS = {
    'base': ('base', []),
    'annotated-base': ('annotated-base', []),
    'sft': ('sft', []),
    'sft-replay': ('sft-replay', []),
    'sft-distill': ('sft-distill', []),
    'anchored': ('anchored', []),
    'anchored-replay': ('anchored-replay', []),
    'anchored-noann': ('anchored', ['--no_annotation=True']),
    'anchored-prior': ('anchored', ['--annotation_from={annotated-base}']),
    'anchored-mask': ('anchored-mask', []),
    'anchored-plain': ('anchored-plain', []),
}
SWEPT = ('sft', 'sft-replay', 'sft-distill', 'anchored')  # the arms of the temperature sweep


@dataclass(frozen=True)
class Seeds:
    """The study's replicates: replicate k post-trains and samples with seed + k, from the pretraining
    pair seed + k // seeds; the ablations run at the first ablation_seeds of them."""
    seed: int
    seeds: int
    pretrain_seeds: int
    ablation_seeds: int

    def replicates(self, ablation=False):
        n = self.seeds * self.pretrain_seeds
        return range(min(self.ablation_seeds, n) if ablation else n)

    def of(self, k):
        return self.seed + k

    def pair(self, k):
        return self.seed + k // self.seeds


@dataclass(frozen=True)
class Sampling:
    """What every sample stage writes: samples per eval prompt, their length, the temperature."""
    num_samples: int
    max_new_tokens: int
    temperature: float


class Study:
    """The stages of one study under root (a scaling size has its own root and stage-name tag)."""

    def __init__(self, root, data_dir, rdir, seeds, sampling, tag='', pretrain_args=(), embed_beside=True):
        self.root, self.data_dir, self.rdir, self.tag = root, data_dir, rdir, tag
        self.seeds, self.sampling = seeds, sampling
        self.pretrain_args = list(pretrain_args)
        self.embed_beside = embed_beside  # False: no embed stages (nothing would run beside them)
        self.stages, self.samples = {}, []  # samples: (arm, path, stage) in replicate order
        self.embedded = 0  # samples[:embedded] have an embed stage

    def add(self, st):
        self.stages.setdefault(st.name, st)
        return st.name

    def pretrained(self, k, kind):
        """The stage and directory of replicate k's pretrained model ('base' or 'annotated-base')."""
        p = self.seeds.pair(k)
        path = os.path.join(self.root, f'pretrain{p}', kind)
        annotated = ['--annotated=True'] if kind == 'annotated-base' else []
        ckpt = os.path.join(path, 'ckpt.pt')
        name = self.add(Stage(f"{self.tag}pretrain-{'annotated' if annotated else 'plain'}/{p}", 'pretrain.py',
                              [f'--data_dir={self.data_dir}', f'--out_dir={path}', f'--seed={p}', *annotated,
                               *self.pretrain_args], [ckpt], ['annotate'], checkpoint=ckpt, cost=4))
        return name, path

    def model(self, k, run, method=None, init=None, args=()):
        """The stage and directory of a model of replicate k: pretrained, or post-trained from one."""
        if run in ('base', 'annotated-base'):
            return self.pretrained(k, run)
        method, init, args = RUNS[run] if method is None else (method, init, args)
        s = self.seeds.of(k)
        dep, init_dir = self.pretrained(k, init)
        path = os.path.join(self.root, f'seed{s}', run)
        ckpt = os.path.join(path, 'ckpt.pt')
        name = self.add(Stage(f'{self.tag}{run}/{s}', 'anchor_sft.py',
                              [f'--data_dir={self.data_dir}', f'--method={method}', f'--init_dir={init_dir}',
                               f'--out_dir={path}', f'--seed={s}', *args], [ckpt], [dep], checkpoint=ckpt, cost=4))
        return name, path

    def sample(self, k, arm, model, extra=(), temp=None):
        """Sample `arm` from replicate k's `model` (a stage and a directory), at the study's
        temperature unless temp says otherwise."""
        s, smp = self.seeds.of(k), self.sampling
        path = os.path.join(self.root, 'samples', f'seed{s}', f'{arm}.jsonl')
        if any('{annotated-base}' in e for e in extra):  # (only then: an arm needs no model it does not read)
            extra = [e.replace('{annotated-base}', self.pretrained(k, 'annotated-base')[1]) for e in extra]
        self.add(Stage(f'{self.tag}sample-{arm}/{s}', 'sample.py',
                       [f'--ckpt_dir={model[1]}', f'--out={path}', f'--num_samples={smp.num_samples}',
                        f'--max_new_tokens={smp.max_new_tokens}',
                        f'--temperature={smp.temperature if temp is None else temp}', f'--seed={s}', *extra],
                       [path], [model[0]]))
        self.samples.append((arm, path, f'{self.tag}sample-{arm}/{s}'))

    def embed(self, group):
        """A stage that embeds the samples written since the last one into the report's cache, so
        that the sentence embedder runs beside the training of other seeds, not after all of it. One
        stage at a time (jobs 1), such a stage would only load the embedder once more (~8 s on a laptop
        CPU): then the report stage embeds every samples file, the same texts in the same batches."""
        todo, self.embedded = self.samples[self.embedded:], len(self.samples)
        if todo and self.embed_beside:
            self.add(Stage(f'{self.tag}embed/{group}', 'diversity.py',
                           [f"--samples={','.join(f'{a}={p}' for a, p, _ in todo)}", f'--data_dir={self.data_dir}',
                            f'--out_dir={self.rdir}', '--embed_only=True'], [], [st for _, _, st in todo],
                           progress=False, cost=4))

    def arm(self, k, arm, temp=None, name=None):
        run, extra = ARMS[arm]
        self.sample(k, name or arm, self.model(k, run), extra, temp)

    def report(self, anchored, controls, ladder=''):
        """The diversity stage over every sample written so far; returns its stage name."""
        rdir = self.rdir
        spec = ','.join(f'{a}={p}' for a, p, _ in self.samples)
        deps = [n for n, st in self.stages.items() if st.script in ('sample.py', 'diversity.py')]
        name = 'diversity' if rdir == os.path.join(self.root, 'report') else f'diversity:{rdir}'
        return self.add(Stage(f'{self.tag}{name}', 'diversity.py',
                              [f'--samples={spec}', f'--data_dir={self.data_dir}', f'--out_dir={rdir}',
                               f"--anchored_arms={','.join(anchored)}", f"--control_arms={','.join(controls)}",
                               *([f'--ladder={ladder}'] if ladder else [])],
                              [os.path.join(rdir, 'report.md')], deps, threaded=False))


def parse_variants(variants):
    """'name:args;name:args' -> [(name, method, init, args)]: each from the pretrained model of its method."""
    out = []
    for spec in filter(None, (v.strip() for v in variants.split(';'))):
        name, _, args = spec.partition(':')
        args = args.split()
        method = next((a.split('=', 1)[1] for a in args if a.startswith('--method=')), None)
        if not name.strip() or method not in ('sft', 'anchored') or name.strip() in ARMS:
            raise UserError(f"variant '{spec}': expected 'name:--method=sft|anchor args' with a new name")
        out.append((name.strip(), method, 'base' if method == 'sft' else 'annotated-base', args))
    return out


def main_study(study, temps, arms, decomposition, variants):
    """The arms of the laptop study (arms: a subset, '' = all; variants: parse_variants'); returns
    the anchored arms, the controls they are compared with and the decomposition ladder ('' without
    decomposition)."""
    subset, seeds = split_list(arms), study.seeds
    chosen = [a for a in HEADLINE + (DECOMPOSITION if decomposition else ()) if not subset or a in subset]
    for k in seeds.replicates():
        for arm in chosen:
            study.arm(k, arm)
        if decomposition and k in seeds.replicates(ablation=True):  # beside the first seeds: embedded beside training
            for arm in ABLATIONS:
                study.arm(k, arm)
        for t in temps:
            for arm in SWEPT:
                study.arm(k, arm, t, name=f'{arm}@t{t:g}')
        for name, method, init, args in variants:
            study.sample(k, name, study.model(k, name, method, init, args))
        study.embed(f'seed{seeds.of(k)}')
    anchored = ['anchored'] + (list(DECOMPOSITION + ABLATIONS) if decomposition else [])
    anchored += [n for n, *_ in variants if n.startswith('anchored')]
    return anchored, list(CONTROLS), LADDER if decomposition else ''


def entropy_study(study, ks, topics, sweep_rows):
    """SFT sets of the first k topics, sweep_rows each: only their semantic entropy differs."""
    for k in study.seeds.replicates():
        study.arm(k, 'base')
        for n in ks:
            rows = [f'--sft_topics={",".join(topics[:n])}', f'--sft_max_rows={sweep_rows}']
            for run, method, init, extra in (('sft', 'sft', 'base', PAPER),
                                             ('anchored', 'anchored', 'annotated-base', [])):
                study.sample(k, f'{run}-k{n}', study.model(k, f'{run}-k{n}', method, init, rows + extra))
        study.embed(f'seed{study.seeds.of(k)}')


def scaling_study(study):
    for k in study.seeds.replicates():
        for arm in ('base', 'sft', 'sft-replay', 'sft-distill', 'anchored'):
            study.arm(k, arm)
        study.embed(f'seed{study.seeds.of(k)}')
    for k in study.seeds.replicates(ablation=True):
        study.arm(k, 'anchored-mask')
    study.embed('ablations')
    return ['anchored', 'anchored-mask'], list(CONTROLS)


def check_study_config(config, config_files):
    """Every config value before any work; returns the temperatures and the SFT-entropy sweep's ks."""
    if not config_files:
        raise UserError("name a config file first, e.g. python study.py config/small.py")
    for f in config_files:
        if not os.path.isfile(f):
            raise UserError(f"config file not found: {f}")
    check_config(config, positive=('num_samples', 'max_new_tokens', 'sweep_rows', 'sweep_docs', 'jobs', 'nproc',
                                   'seeds', 'pretrain_seeds'),
                 nonneg=('temperature', 'ablation_seeds', 'max_restarts'))
    temps = numbers('temperatures', config['temperatures'], float)
    ks = numbers('sft_topic_counts', config['sft_topic_counts'], int)
    if any(t < 0 for t in temps) or any(k < 1 for k in ks):
        raise UserError("temperatures must be >= 0 and sft_topic_counts >= 1")
    sizes = config['sizes']
    if sizes and any(not s.partition(':')[0].strip() for s in sizes.split(';')):
        raise UserError(f"sizes must be 'name:args;name:args', got '{sizes}'")
    if sum(map(bool, (ks, sizes))) > 1:
        raise UserError("sft_topic_counts and sizes are two different studies: run them one at a time")
    unknown = [a for a in split_list(config['arms']) if a not in ARMS]
    if unknown:
        raise UserError(f"arms: unknown arm '{unknown[0]}' (one of {', '.join(ARMS)})")
    parse_variants(config['variants'])
    check_out_dir(config['out_root'], 'out_root')
    return temps, ks


def numbers(key, text, kind):
    """A comma-separated list of numbers of one kind (int or float), or one clear line."""
    try:
        return [kind(x) for x in split_list(text)]
    except ValueError:
        raise UserError(f"{key} must be comma-separated {kind.__name__}s, got '{text}'")


def annotate(runner, data_root, data_name, ks=(), sweep_topics='', sweep_docs=0):
    """The annotate stage; the SFT-entropy sweep (ks) holds out sweep_docs SFT documents of all its
    topics from pretraining, in a data dir of its own. Returns the data dir and the sweep's topics."""
    name = f'{data_name}-sweep' if ks else data_name
    data_dir = os.path.join(data_root, name)
    topics = split_list(sweep_topics)
    if ks and topics and max(ks) > len(topics):
        raise UserError(f"sft_topic_counts asks for {max(ks)} topics, sweep_topics has {len(topics)}")
    sweep = [f'--sft_values={",".join(topics[:max(ks)]) or f"top:{max(ks)}"}', f'--sft_docs={sweep_docs}'] if ks else []
    runner.run([Stage('annotate', 'annotate.py', [f'--data_root={data_root}', f'--name={name}', *sweep],
                      [os.path.join(data_dir, 'meta.json')], threaded=False)])
    if ks:  # the SFT slice in order (top:K: most common first); k topics = the first k
        topics = read_json(os.path.join(data_dir, 'meta.json'))['sft_values']
    return data_dir, topics


def run_sizes(runner, sizes, out_root, data_dir, rdir, seeds, sampling):
    """The scaling sweep: one study per size under out_root/<size>, then diversity against size."""
    reps, params = {}, {}
    for spec in sizes.split(';'):
        size, _, args = (x.strip() for x in spec.partition(':'))
        study = Study(os.path.join(out_root, size), data_dir, os.path.join(out_root, size, 'report'), seeds, sampling,
                      f'{size}/', args.split(), embed_beside=runner.jobs > 1)
        anchored, controls = scaling_study(study)
        study.report(anchored, controls)
        runner.run(list(study.stages.values()))
        reps[size] = read_json(os.path.join(study.root, 'report', 'report.json'))
        params[size] = model_params(study.pretrained(0, 'base')[1])
    return scaling_section(reps, params, rdir)


def train_dtype():
    """The autocast dtype that dtype='auto' gives the training stages on this machine."""
    import torch
    from training import resolve_dtype
    return resolve_dtype('cuda' if torch.cuda.is_available() else 'cpu')


def model_params(run_dir):
    from training import load_checkpoint, model_from_checkpoint
    return model_from_checkpoint(load_checkpoint(os.path.join(run_dir, 'ckpt.pt')), 'cpu').num_params()


def finish_report(rdir, runner, t_start, run, sweep=None):
    """report.md and report.json of the diversity stage, with the study's own sections: collapse
    against the SFT set's entropy (sweep: (study, ks)), and how the study ran (run: seeds,
    parallelism, config files; here: machine, stage times). Returns the text of report.md."""
    rep = read_json(os.path.join(rdir, 'report.json'))
    with open(os.path.join(rdir, 'report.md')) as f:  # (a skipped diversity stage: the last run's sections)
        text = f.read().split('\n' + ENTROPY_HEADER)[0].split('\n' + RUN_HEADER)[0].rstrip('\n') + '\n'
    if sweep:
        study, ks = sweep
        ents = [read_json(os.path.join(study.root, f'seed{study.seeds.of(0)}', f'sft-k{k}', 'sft_set.json'))
                ['entropy_bits'] for k in ks]
        text += '\n' + entropy_section(rep, ents, ks, rdir)
    run = dict(run, jobs=runner.jobs, threads_per_stage=max(1, (os.cpu_count() or 1) // runner.jobs),
               stage_seconds=runner.times, wall_seconds=round(time.time() - t_start), environment=environment(),
               train_dtype=train_dtype())
    if runner.resumed:  # (only then: an uninterrupted study's report has no such key)
        run['resumed_from_iter'] = runner.resumed
    text += '\n' + run_section(run)
    write_json(os.path.join(rdir, 'report.json'), dict(rep, study=run))
    return text


def interrupted(signum, frame):
    """SIGTERM ends the study as Ctrl-C does: its running stages are stopped, the next run resumes."""
    raise KeyboardInterrupt


def run_study(runner, config, config_files, temps, ks, rdir):
    """Every stage of the study the config asks for; returns the report's text."""
    t_start = time.time()
    seeds = Seeds(config['seed'], config['seeds'], config['pretrain_seeds'], config['ablation_seeds'])
    sampling = Sampling(config['num_samples'], config['max_new_tokens'], config['temperature'])
    data_dir, topics = annotate(runner, config['data_root'], config['data_name'], ks, config['sweep_topics'],
                                config['sweep_docs'])
    if config['sizes']:
        return run_sizes(runner, config['sizes'], config['out_root'], data_dir, rdir, seeds, sampling)
    study = Study(config['out_root'], data_dir, rdir, seeds, sampling, embed_beside=runner.jobs > 1)
    if ks:
        entropy_study(study, ks, topics, config['sweep_rows'])
        k2 = 2 if 2 in ks else ks[0]  # the k=2 pair stands for sft/anchored in the headline
        anchored, controls, ladder = [f'anchored-k{k2}'], [f'sft-k{k2}'], ''
    else:
        anchored, controls, ladder = main_study(study, temps, config['arms'], config['decomposition'],
                                                parse_variants(config['variants']))
    study.report(anchored, controls, ladder)
    runner.run(list(study.stages.values()))
    run = dict(config_files=config_files, seeds=seeds.seeds, ablation_seeds=seeds.ablation_seeds,
               pretrain_seeds=seeds.pretrain_seeds, nproc=config['nproc'])
    return finish_report(rdir, runner, t_start, run, (study, ks) if ks else None)


def main():
    temps, ks = check_study_config(config, config_files)
    rdir = report_dir or os.path.join(out_root, 'report')
    lock = lock_out_root(out_root)
    signal.signal(signal.SIGTERM, interrupted)
    t_start = time.time()
    runner = Stages(out_root, config_files, jobs=1 if nproc > 1 else jobs, nproc=nproc, force=force,
                    max_restarts=max_restarts)
    try:
        text = run_study(runner, config, config_files, temps, ks, rdir)
    except KeyboardInterrupt:
        raise UserError("study interrupted: its running stages were stopped; run the same command again to "
                        "resume them from their last checkpoints")
    finally:
        unlock_out_root(lock)
    write_text(os.path.join(rdir, 'report.md'), text)
    print(text)
    if runner.resumed:
        print('resumed: ' + ', '.join(f'{k} from iteration {v}' for k, v in runner.resumed.items()))
    ran = ', '.join(f'{k} {v:.0f}s' for k, v in runner.times.items()) or 'nothing (all up to date)'
    print(f"study done in {time.time() - t_start:.0f}s; ran: {ran}")


if __name__ == '__main__':
    main_guard(main)
