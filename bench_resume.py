"""
What an interrupted study costs: study.py killed (SIGKILL to its process group, as a preempted
machine is) at a random moment in each of its training stages, rerun after every kill until it
finishes; then its report and samples are compared with an uninterrupted study's.

    python bench_resume.py config/small.py --reference=out/small --out_root=out/resume

Per kill: the stages it cut, how far into each, and the wall time lost (since the stage's last
checkpoint) against what rerunning the whole stage would have cost. reference: the out_root of an
uninterrupted study with the same config files; its stage times place the kills.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

from common import UserError, check_config, main_guard, read_json

# -----------------------------------------------------------------------------
reference = ''  # out_root of an uninterrupted study of the same config files
out_root = 'out/resume'  # the study that is killed and rerun (its own out_root)
kill_seed = 0  # the random kill moments
min_frac = 0.05  # a kill falls this far into a stage's uninterrupted run time at the earliest ...
max_frac = 0.95  # ... and this far at the latest
from configurator import configure  # noqa: E402
config = configure(globals())
config_files = [a for a in sys.argv[1:] if not a.startswith('--')]
# -----------------------------------------------------------------------------

START = re.compile(r'^\[([^\]]+)\] \S*(?:pretrain|anchor_sft)\.py .*--out_dir=(\S+)')  # a training stage starts
RESUMED = re.compile(r'^\[([^\]]+)\] resumes from iteration (\d+)')
DONE = re.compile(r'^\[([^\]]+)\] done in ')


class Watch:
    """The study's output line by line, read by a thread: when each training stage started."""

    def __init__(self, proc, log):
        self.started, self.resumed, self.done, self.lock = {}, {}, set(), threading.Lock()
        self.out_dir = {}  # each training stage's, from its command line: its checkpoint is out_dir/ckpt.pt
        self.thread = threading.Thread(target=self.read, args=(proc, log), daemon=True)
        self.thread.start()

    def read(self, proc, log):
        for line in proc.stdout:
            log.write(line)
            now = time.time()
            with self.lock:
                if m := START.match(line):
                    self.started[m.group(1)] = now
                    self.out_dir[m.group(1)] = m.group(2)
                elif m := RESUMED.match(line):
                    self.resumed[m.group(1)] = int(m.group(2))
                elif m := DONE.match(line):
                    self.done.add(m.group(1))


def run_once(args, log, expected, killed, rng, window):
    """One run of the study; kills it at a random moment of the first training stage that starts
    fresh and has not been a target yet, window = (min_frac, max_frac) of the stage's expected time
    into it. Returns the kill's record, or None if the study finished."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    watch = Watch(proc, log)
    target, at = None, None
    while proc.poll() is None:
        time.sleep(0.05)
        with watch.lock:
            if target is None:
                fresh = [s for s in watch.started if s not in killed and s not in watch.resumed and s in expected]
                if fresh:
                    target = fresh[0]
                    at = watch.started[target] + rng.uniform(*window) * expected[target]
            if target is not None and target in watch.done:  # it finished before its moment: the next one
                killed.add(target)
                target = None
            if target is not None and time.time() >= at:
                return kill(proc, watch, target)
    watch.thread.join()
    if proc.returncode != 0:
        raise UserError(f"the study failed (exit {proc.returncode}); its output: {log.name}")
    return None


def kill(proc, watch, target):
    """SIGKILL to the study's process group; what each running training stage loses."""
    now = time.time()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cut = []
    for stage, t0 in watch.started.items():
        if stage in watch.done:
            continue
        ckpt = os.path.join(watch.out_dir[stage], 'ckpt.pt')
        saved = os.path.getmtime(ckpt) if os.path.isfile(ckpt) else 0.0
        cut.append(dict(stage=stage, attempt=now - t0, lost=now - max(t0, saved), resumed_at=watch.resumed.get(stage)))
    return dict(target=target, cut=cut)


def compare(ref_root, root):
    """Whether the killed study's report figures and samples equal the uninterrupted one's."""
    figures = []
    for r in (ref_root, root):  # the same figures; only the paths (and the study's times) differ
        rep = read_json(os.path.join(r, 'report', 'report.json'))
        rep.pop('study')
        figures.append(json.dumps(rep, sort_keys=True).replace(r, 'ROOT'))
    same_samples, n = True, 0
    for dirpath, _, files in os.walk(os.path.join(root, 'samples')):  # (the reference may hold more arms)
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            with open(os.path.join(ref_root, rel), 'rb') as x, open(os.path.join(root, rel), 'rb') as y:
                same_samples &= x.read() == y.read()
            n += 1
    return figures[0] == figures[1], same_samples, n


def main():
    check_config(config, fractions=('min_frac', 'max_frac'))
    if not reference or not os.path.isfile(os.path.join(reference, 'report', 'report.json')):
        raise UserError(f"reference={reference!r} is not the out_root of a finished study")
    if not config_files:
        raise UserError("name the reference study's config files, e.g. python bench_resume.py config/small.py")
    ref = read_json(os.path.join(reference, 'report', 'report.json'))['study']
    expected = ref['stage_seconds']  # (only training stages are read from it: those START matches)
    args = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'study.py'), *config_files,
            f'--out_root={out_root}']
    os.makedirs(out_root, exist_ok=True)
    rng, killed, kills, t0 = random.Random(kill_seed), set(), [], time.time()
    trained = {}  # per stage: its time in training so far, over every attempt (a from-scratch rerun redoes it)
    with open(os.path.join(out_root, 'bench_resume.log'), 'w') as log:
        while (k := run_once(args, log, expected, killed, rng, (min_frac, max_frac))) is not None:
            killed.add(k['target'])
            kills.append(k)
            for c in k['cut']:
                c['into'] = trained.get(c['stage'], 0.0) + c['attempt']
                trained[c['stage']] = c['into'] - c['lost']  # what its checkpoint keeps
            print(f"kill {len(kills)}: " + ', '.join(f"{c['stage']} {c['into']:.0f}s in, {c['lost']:.0f}s lost"
                                                     for c in k['cut']), flush=True)
    wall = time.time() - t0
    same_report, same_samples, n = compare(reference, out_root)
    cuts = [c for k in kills for c in k['cut']]
    print(f"\n{len(kills)} kills, {len(cuts)} training stages cut; the study took {wall:.0f}s "
          f"(uninterrupted: {ref['wall_seconds']}s)")
    print(f"samples byte-identical to the uninterrupted study's: {same_samples} ({n} files); report figures "
          f"equal: {same_report} (meaningful where the reference's report came from this code)")
    print("\n| stage | into the stage (s) | lost: since its last checkpoint (s) "
          "| lost before: the whole stage so far (s) |")
    print("|---|---|---|---|")
    for c in cuts:
        print(f"| {c['stage']} | {c['into']:.0f} | {c['lost']:.0f} | {c['into']:.0f} |")
    print(f"| total | | {sum(c['lost'] for c in cuts):.0f} | {sum(c['into'] for c in cuts):.0f} |")


if __name__ == '__main__':
    main_guard(main)
