"""configurator.py: overrides, types, and one-line errors."""
import subprocess
import sys

import pytest

from configurator import configure

ROOT = __import__('os').path.dirname(__import__('os').path.dirname(__file__))


def base():
    return dict(lr=1e-3, iters=10, name='x', flag=False, opt=None)


def test_overrides_in_order_later_wins(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("lr = 0.5\niters = 3\nimport math\n")
    g = base()
    out = configure(g, [str(cfg), '--iters=7', '--name=a=b', '--flag=True', '--lr=2'])
    assert out == dict(lr=2.0, iters=7, name='a=b', flag=True, opt=None)
    assert isinstance(g['lr'], float)  # an int where a float is expected is accepted


def run_script(*args):
    code = "import sys; from configurator import configure; lr=1e-3; iters=10; configure(globals())"
    return subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize('args,needle', [
    (['--nope=1'], "unknown config key 'nope'"),
    (['--iters=1.5'], "'iters' expects int"),
    (['--lr=abc'], "'lr' expects float"),
    (['missing_config.py'], 'config file not found: missing_config.py'),
    (['--iters'], "expected --key=value"),
])
def test_bad_input_one_line(args, needle):
    r = run_script(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:') and needle in lines[0], r.stderr


def test_config_file_keys_of_other_stages_are_skipped_but_typos_fail(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("iters = 3\nsft_iters = 5\n")  # sft_iters belongs to anchor_sft.py
    assert configure(dict(iters=1), [str(cfg)]) == dict(iters=3)
    cfg.write_text("itres = 3\n")
    r = run_script(str(cfg))
    assert r.returncode != 0 and "unknown config key 'itres'" in r.stderr
