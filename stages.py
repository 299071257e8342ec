"""
The stage runner of study.py: every stage is a script run as its own process, with a stamp (a hash
of its command, the config files, its script and the shared modules, and the stamps of the stages it
depends on). A stage whose outputs exist and whose stamp is unchanged is skipped, so a re-run only
redoes what changed. Stages form a dependency graph: each starts as soon as the stages it depends on
have finished, `jobs` at a time, each with cores // jobs torch threads, the one that heads the
costliest chain of work first.
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from common import UserError, digest, read_json, write_json

# the modules every stage imports: a change in one of them changes every stamp
SHARED = ('model.py', 'formats.py', 'training.py', 'common.py', 'configurator.py', 'metrics.py', 'report.py',
          'embeddings.py')
HERE = os.path.dirname(os.path.abspath(__file__))


def file_digest(path):
    with open(path, 'rb') as f:
        return digest(f.read())


@dataclass
class Stage:
    """One run of a stage script: its name (also its log's name), the script and its arguments, the
    files it writes (all present = done), the stages it depends on, whether it takes --threads and
    --progress (to share the cores and keep its log free of bars), whether it trains (under
    torchrun with nproc > 1), and its cost: its run time relative to other stages, rough (the
    laptop study: a training or an embedding stage about 4 samplings), for the order stages start in."""
    name: str
    script: str
    args: list
    outputs: list
    deps: list = field(default_factory=list)
    threaded: bool = True
    progress: bool = True
    trains: bool = False
    cost: int = 1


class Stages:
    """Runs stages; skips one whose outputs exist and whose stamp is unchanged."""

    def __init__(self, out_root, config_files, jobs=1, nproc=1, force=False):
        self.path = os.path.join(out_root, 'stamps.json')
        self.out_root, self.config_files, self.jobs, self.nproc = out_root, list(config_files), jobs, nproc
        self.stamps = read_json(self.path) if os.path.isfile(self.path) and not force else {}
        self.code = digest(*(file_digest(f) for f in self.config_files),
                           *(file_digest(os.path.join(HERE, m)) for m in SHARED))
        self.times = {}

    def command(self, st):
        """The command line of a stage: under torchrun for a training stage with nproc > 1, with its
        share of the cores when stages run side by side."""
        script = os.path.join(HERE, st.script)
        if st.trains and self.nproc > 1:
            cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={self.nproc}',
                   script]
        else:
            cmd = [sys.executable, script]
        cmd += self.config_files + [str(a) for a in st.args]
        if st.threaded and self.jobs > 1:  # (their output goes to a log: no progress bars)
            cmd += [f'--threads={max(1, (os.cpu_count() or 1) // self.jobs)}'] + (['--progress=False'] * st.progress)
        return cmd

    def run(self, stages):
        """Stages in an order where a stage follows those it depends on; each starts as soon as its
        deps among them have finished, `jobs` at a time, the first ready one first. With jobs > 1 a
        stage's output goes to out_root/logs/<name>.log."""
        todo, new = [], {}
        for st in stages:
            cmd = self.command(st)
            new[st.name] = digest(json.dumps(cmd[1:]), self.code, file_digest(os.path.join(HERE, st.script)),
                                  *(new.get(d, self.stamps.get(d, '')) for d in st.deps))
            if self.stamps.get(st.name) == new[st.name] and all(os.path.exists(o) for o in st.outputs):
                print(f"[{st.name}] up to date, skipped")
            else:  # it waits for the deps that run in this call
                log = os.path.join(self.out_root, 'logs', f'{st.name}.log') if self.jobs > 1 else None
                todo.append((st.name, cmd, log, [d for d in st.deps if any(t[0] == d for t in todo)]))
        self.run_graph(todo, new, {st.name: st.cost for st in stages})

    def run_graph(self, todo, new, cost):
        """Run (name, cmd, log, deps) jobs at a time; a failed stage's dependents never start. Of
        the stages ready to start, the one that heads the costliest chain of stages still to run
        starts first (critical-path list scheduling; ties: the first one): the last minutes then
        wait on no long chain (an SFT, its samples, their embedding, the report) run one stage at a
        time while the other cores idle (measured in docs/LOG.md, commit 5d23329)."""
        after = {t[0]: [u[0] for u in todo if t[0] in u[3]] for t in todo}
        chain = {}

        def chain_cost(name):  # the stage's own cost and that of its costliest chain of dependents
            if name not in chain:
                chain[name] = cost[name] + max((chain_cost(n) for n in after[name]), default=0)
            return chain[name]
        order = {t[0]: i for i, t in enumerate(todo)}
        waiting, running, done, failed = list(todo), {}, set(), []
        while waiting or running:
            ready = sorted((t for t in waiting if all(d in done for d in t[3])),
                           key=lambda t: (-chain_cost(t[0]), order[t[0]]))
            while ready and len(running) < self.jobs and not failed:
                t = ready.pop(0)
                waiting.remove(t)
                running[t[0]] = self.start(*t[:3])
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

    @staticmethod
    def start(name, cmd, log):
        print(f"[{name}] {' '.join(cmd[1:])}" + (f"  (log: {log})" if log else ''), flush=True)
        if log:
            os.makedirs(os.path.dirname(log), exist_ok=True)
        out = open(log, 'w') if log else None
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None)
        return proc, out, cmd, log, time.time()
