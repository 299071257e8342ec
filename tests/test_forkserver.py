"""tests/forkserver.py, which runs the stage scripts of the other tests: a forked run ends as a fresh
process of the same script does (exit code, stdout, stderr), in its environment, with fresh seeds."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, fork_server

SCRIPT = """import os, random, sys, time
import numpy as np
print('argv', sys.argv[1:], 'cwd', os.getcwd(), 'env', os.environ.get('FORK_TEST'), 'main', __name__)
print('draws', random.random(), np.random.random())
what = sys.argv[1]
if what == 'raise':
    raise ValueError('boom')
if what == 'exit':
    sys.exit(int(sys.argv[2]) if sys.argv[2:] else 'bye')
if what == 'sleep':
    time.sleep(30)
"""


def both(script, *args):
    """(forked, fresh) CompletedProcess of one script run."""
    argv = [sys.executable, str(script), *args]
    env = dict(os.environ, FORK_TEST='yes')
    return fork_server().run(argv, env, 60), subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)


def test_a_forked_run_ends_as_a_fresh_process_does(tmp_path):
    script = tmp_path / 'script.py'
    script.write_text(SCRIPT)
    for args in (['ok'], ['exit', '2'], ['exit', '0'], ['exit'], ['raise']):
        forked, fresh = both(script, *args)
        assert forked.returncode == fresh.returncode, (args, forked, fresh)
        # the same lines, but for the random draws (fresh in each run) and the traceback's frames
        strip = lambda out: [line for line in out.splitlines() if not line.startswith(('draws', '  '))]
        assert strip(forked.stdout) == strip(fresh.stdout)
        assert strip(forked.stderr)[-1:] == strip(fresh.stderr)[-1:], (args, forked.stderr, fresh.stderr)
    assert f'cwd {ROOT} env yes main __main__' in forked.stdout
    draws = {both(script, 'ok')[0].stdout.splitlines()[1] for _ in range(3)}
    assert len(draws) == 3  # random and numpy's global generator are seeded afresh in every child


def test_a_forked_run_past_its_timeout_is_killed(tmp_path):
    script = tmp_path / 'script.py'
    script.write_text(SCRIPT)
    with pytest.raises(subprocess.TimeoutExpired):
        fork_server().run([sys.executable, str(script), 'sleep'], dict(os.environ), 1)
    assert fork_server().run([sys.executable, str(script), 'ok'], dict(os.environ), 60).returncode == 0
