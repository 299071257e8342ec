"""Runs stage scripts in children forked from a process that has imported torch and datasets once.

A stage script's process spends ~2 s importing torch (diversity.py through sentence-transformers),
a training run ~1.7 s more importing torch._dynamo (its optimizer's first call does), annotate.py
~1 s importing datasets, and a process holding torch ~1 s tearing it down at exit: over the suite's
~130 script runs, most of their time. conftest.run() starts this file once per test process and
sends it a request a line (JSON: argv without the interpreter, cwd, env, files for stdout and
stderr); it answers the child's pid, then its exit status. The child runs the script as `python
script.py args` would: its argv, cwd and environment, stdin from /dev/null, its exit code, fresh
seeds for `random` and numpy's global generator. What a fork cannot give is a fresh hash seed
(PYTHONHASHSEED): a test that compares two runs' outputs for determinism runs one of them as a
fresh process (conftest.run(..., fresh=True)).
"""
import atexit
import json
import os
import random
import runpy
import sys
import tempfile

import datasets  # noqa: F401  (annotate.py's: ~1 s)
import numpy as np
import torch  # noqa: F401  (imported once here: the point of this process)
import torch._dynamo  # noqa: F401  (what an optimizer's first call imports)


def child(req):
    """In the forked child: run `python argv...` and exit as it would; never returns."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, req['stdout']), (2, req['stderr'])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(req['cwd'])
    os.environ.clear()
    os.environ.update(req['env'])
    tempfile.tempdir = None  # (torch's import fixed it from this process's TMPDIR, not the run's)
    random.seed()
    np.random.seed()
    sys.argv = list(req['argv'])
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    try:
        runpy.run_path(sys.argv[0], run_name='__main__')
        code = 0
    except SystemExit as e:  # as the interpreter reads sys.exit()'s argument
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else print(e.code, file=sys.stderr) or 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    # what a script sees of the interpreter's exit (its atexit handlers, stdout and stderr flushed),
    # without the teardown of torch's modules, which takes ~1 s
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main():
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(req)
        print(json.dumps({'pid': pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({'returncode': os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == '__main__':
    main()
