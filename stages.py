"""
The stage runner of study.py: every stage is a script run as its own process, with a stamp (a hash
of its command, the config files, its script and the modules it imports, and the stamps of the stages
it depends on). A stage whose outputs exist and whose stamp is unchanged is skipped, so a re-run only
redoes what changed. Stages form a dependency graph: each starts as soon as the stages it depends on
have finished, `jobs` at a time, each with cores // jobs torch threads, the one that heads the
costliest chain of work first. A training stage interrupted mid-run (Ctrl-C, a killed or preempted
machine) resumes from its last checkpoint on the next run when its stamp is the same; one study at a
time holds an out_root (lock_out_root).
"""
import ast
import fcntl
import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from common import UserError, die_with_parent, digest, read_json, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
# torchrun's workers otherwise share its rendezvous store, where a restarted group can read the
# addresses of the group it replaces and fail to connect (pytorch/pytorch#135712; seen with gloo here)
TORCHRUN_ENV = {'TORCH_DISABLE_SHARE_RDZV_TCP_STORE': '1'}
STOP_GRACE = 30  # seconds a stopped stage gets to end (torchrun: to end its workers) before SIGKILL


def file_digest(path):
    with open(path, 'rb') as f:
        return digest(f.read())


@functools.cache
def code_files(script):
    """The script and every module of this repo it imports, directly or through another: the code
    a stage's stamp covers, so that a change in any of them reruns the stage."""
    files, todo = {script}, [script]
    while todo:
        with open(os.path.join(HERE, todo.pop())) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                path = name.split('.')[0] + '.py'
                if path not in files and os.path.isfile(os.path.join(HERE, path)):
                    files.add(path)
                    todo.append(path)
    return tuple(sorted(files))


@dataclass
class Stage:
    """One run of a stage script: its name (also its log's name), the script and its arguments, the
    files it writes (all present = done), the stages it depends on, whether it takes --threads and
    --progress (to share the cores and keep its log free of bars), and its cost: its run time relative
    to other stages, rough (the laptop study: a training or an embedding stage about 4 samplings), for
    the order stages start in. A training stage names the checkpoint it writes: it runs under
    torchrun with nproc > 1, and an interrupted run of it resumes from that checkpoint."""
    name: str
    script: str
    args: list
    outputs: list
    deps: list = field(default_factory=list)
    threaded: bool = True
    progress: bool = True
    checkpoint: str = ''
    cost: int = 1


@dataclass
class Job:
    """A stage to run in this call: its command, its stamp, its log (jobs > 1) and the stages it
    waits for (those of its deps that also run in this call)."""
    stage: Stage
    cmd: list
    stamp: str
    log: str = None
    waits: list = field(default_factory=list)


@dataclass
class Running:
    job: Job
    proc: subprocess.Popen
    out: object
    t0: float


def checkpoint_iter(path):
    """The iteration a checkpoint was written at (memory-mapped: only that number is read)."""
    import torch
    return torch.load(path, map_location='cpu', weights_only=False, mmap=True).get('iter_num')


class Stages:
    """Runs stages; skips one whose outputs exist and whose stamp is unchanged.

    out_root/stamps.json holds the stamp of every stage that finished, started.json that of every
    training stage started and not finished: a checkpoint in its out_dir with the same stamp is this
    stage's own and is resumed (--init_from=resume); any other is another run's (another command,
    config or code) and is set aside (ckpt.pt -> ckpt.pt.set-aside) before the stage trains from its
    start, never trained on. max_restarts: torchrun's --max-restarts for training stages with nproc > 1."""

    def __init__(self, out_root, config_files, jobs=1, nproc=1, force=False, max_restarts=0):
        self.path = os.path.join(out_root, 'stamps.json')
        self.started_path = os.path.join(out_root, 'started.json')
        self.out_root, self.config_files, self.jobs, self.nproc = out_root, list(config_files), jobs, nproc
        self.max_restarts = max_restarts
        self.stamps = read_json(self.path) if os.path.isfile(self.path) and not force else {}
        self.started = read_json(self.started_path) if os.path.isfile(self.started_path) and not force else {}
        self.configs = digest(*(file_digest(f) for f in self.config_files))
        self.times, self.resumed, self.code = {}, {}, {}

    def code_digests(self, script):
        """The hashes of a script's code_files, read once per script (a study runs it in dozens of stages)."""
        if script not in self.code:
            self.code[script] = [file_digest(os.path.join(HERE, f)) for f in code_files(script)]
        return self.code[script]

    def command(self, st):
        """The command line of a stage: under torchrun for a training stage with nproc > 1, with its
        share of the cores when stages run side by side."""
        script = os.path.join(HERE, st.script)
        if st.checkpoint and self.nproc > 1:
            cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={self.nproc}',
                   f'--max-restarts={self.max_restarts}', script]
        else:
            cmd = [sys.executable, script]
        cmd += self.config_files + [str(a) for a in st.args]
        if st.threaded and self.jobs > 1:  # (their output goes to a log: no progress bars)
            cmd += [f'--threads={max(1, (os.cpu_count() or 1) // self.jobs)}'] + (['--progress=False'] * st.progress)
        return cmd

    def run(self, stages):
        """Run the stages that are not up to date, each after the stages it depends on (jobs at a
        time; run_graph). With jobs > 1 a stage's output goes to out_root/logs/<name>.log."""
        todo, stamps = [], {}
        for st in stages:
            cmd = self.command(st)
            stamps[st.name] = digest(json.dumps(cmd[1:]), self.configs, *self.code_digests(st.script),
                                     *(stamps.get(d, self.stamps.get(d, '')) for d in st.deps))
            if self.stamps.get(st.name) == stamps[st.name] and all(os.path.exists(o) for o in st.outputs):
                print(f"[{st.name}] up to date, skipped")
            else:  # it waits for the deps that run in this call
                log = os.path.join(self.out_root, 'logs', f'{st.name}.log') if self.jobs > 1 else None
                names = {j.stage.name for j in todo}
                todo.append(Job(st, cmd, stamps[st.name], log, [d for d in st.deps if d in names]))
        self.run_graph(todo)

    def run_graph(self, todo):
        """Run the jobs, `jobs` at a time; a failed stage's dependents never start. Of the stages ready
        to start, the one that heads the costliest chain of stages still to run starts first
        (critical-path list scheduling; ties: the first one): the last minutes then wait on no long
        chain (an SFT, its samples, their embedding, the report) run one stage at a time while the
        other cores idle (measured in docs/LOG.md, commit 5d23329). Interrupted (Ctrl-C, SIGTERM),
        it ends the running stages before it returns."""
        after = {j.stage.name: [u.stage.name for u in todo if j.stage.name in u.waits] for j in todo}
        cost = {j.stage.name: j.stage.cost for j in todo}
        chain = {}

        def chain_cost(name):  # the stage's own cost and that of its costliest chain of dependents
            if name not in chain:
                chain[name] = cost[name] + max((chain_cost(n) for n in after[name]), default=0)
            return chain[name]
        order = {j.stage.name: i for i, j in enumerate(todo)}
        waiting, running, done, failed = list(todo), {}, set(), []
        try:
            while waiting or running:
                ready = sorted((j for j in waiting if all(d in done for d in j.waits)),
                               key=lambda j: (-chain_cost(j.stage.name), order[j.stage.name]))
                while ready and len(running) < self.jobs and not failed:
                    job = ready.pop(0)
                    waiting.remove(job)
                    running[job.stage.name] = self.start(job)
                if failed and not running:
                    break
                finished = [n for n, r in running.items() if r.proc.poll() is not None]
                if not finished:
                    time.sleep(0.2)
                    continue
                for name in finished:
                    r = running.pop(name)
                    if self.finish(r):
                        done.add(name)
                    else:
                        failed.append(f"stage '{name}' failed (exit {r.proc.returncode}): {' '.join(r.job.cmd[1:])}"
                                      + (f" (log: {r.job.log})" if r.job.log else ''))
        finally:
            self.stop(list(running.values()))  # (nothing runs any more unless interrupted)
        if failed:
            raise UserError('; '.join(failed))

    def resume_args(self, job):
        """--init_from=resume where the stage's checkpoint is its own interrupted run's; another run's
        checkpoint is set aside. Then the stage is recorded as started, no longer as done."""
        st, args = job.stage, []
        if os.path.isfile(st.checkpoint):
            if self.started.get(st.name) == job.stamp:
                it = checkpoint_iter(st.checkpoint)
                self.resumed[st.name] = it
                print(f"[{st.name}] resumes from iteration {it} ({st.checkpoint})", flush=True)
                args = ['--init_from=resume']
            else:
                os.replace(st.checkpoint, st.checkpoint + '.set-aside')
                print(f"[{st.name}] {st.checkpoint} is another run's checkpoint (another command, config or code):"
                      f" set aside as {st.checkpoint}.set-aside; training from the start", flush=True)
        self.started[st.name] = job.stamp
        self.stamps.pop(st.name, None)  # a rerun cut short must not look done
        write_json(self.started_path, self.started)
        write_json(self.path, self.stamps)
        return args

    def start(self, job):
        cmd = job.cmd + (self.resume_args(job) if job.stage.checkpoint else [])
        print(f"[{job.stage.name}] {' '.join(cmd[1:])}" + (f"  (log: {job.log})" if job.log else ''), flush=True)
        if job.log:
            os.makedirs(os.path.dirname(job.log), exist_ok=True)
        out = open(job.log, 'w') if job.log else None
        # a session of its own: study.py decides when its stages stop (stop()), and a stage dies with it
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True,
                                preexec_fn=die_with_parent, env=dict(os.environ, **TORCHRUN_ENV))
        return Running(job, proc, out, time.time())

    def finish(self, r):
        """Record a stage that ended; whether it succeeded."""
        if r.out:
            r.out.close()
        if r.proc.returncode != 0:
            return False
        name = r.job.stage.name
        self.times[name] = round(time.time() - r.t0, 1)
        self.stamps[name] = r.job.stamp
        self.started.pop(name, None)
        write_json(self.path, self.stamps)  # after every stage: an interrupted study resumes here
        write_json(self.started_path, self.started)
        if r.job.log:
            print(f"[{name}] done in {self.times[name]:.0f}s", flush=True)
        return True

    @staticmethod
    def stop(running):
        """End the stages still running: SIGTERM to each one's process group (torchrun ends its
        workers on it), SIGKILL after STOP_GRACE seconds. No stage writes to out_root after this."""
        for r in running:
            signal_group(r.proc, signal.SIGTERM)
        deadline = time.time() + STOP_GRACE
        for r in running:
            try:
                r.proc.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                signal_group(r.proc, signal.SIGKILL)
                r.proc.wait()
            if r.out:
                r.out.close()
        if running:
            print(f"stopped {', '.join(r.job.stage.name for r in running)}: the next run resumes them", flush=True)


def signal_group(proc, sig):
    """Send sig to the process group a stage leads (its session), unless it has ended."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def lock_out_root(out_root):
    """One study per out_root: an exclusive lock (flock) on out_root/study.lock, which holds the
    study's pid. The kernel releases it when the process ends, however it ends, so a lock file left
    by a killed study is seen as free and taken over. Returns the open file: the lock lasts as long
    as it stays open."""
    os.makedirs(out_root, exist_ok=True)
    path = os.path.join(out_root, 'study.lock')
    f = open(path, 'a+')
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or 'unknown'
        f.close()
        raise UserError(f"out_root {out_root} is in use by the study with pid {holder} ({path}); "
                        f"wait for it to end, or choose another out_root")
    f.seek(0)
    dead = f.read().strip()
    if dead:
        print(f"{path}: the study with pid {dead} that held it is gone; taking it over")
    f.seek(0)
    f.truncate()
    f.write(f'{os.getpid()}\n')
    f.flush()
    return f


def unlock_out_root(f):
    """A study that ends leaves an empty, unlocked study.lock."""
    f.seek(0)
    f.truncate()
    f.close()
