"""
Config overrides, nanoGPT style: a script's top-level globals are its config.

    python pretrain.py config/small.py --max_iters=100 --annotated=True

Arguments are applied left to right (later wins): a path ending in .py is a config file whose
assignments override the globals; `--key=value` overrides one global. One config file serves every
stage (config/small.py holds the pretraining and the SFT settings), so a file may set keys of other
stages: those are skipped here; a key that no stage knows is an error (a typo). Unlike nanoGPT's
exec() trick this is a function, so mistakes end in one clear line instead of a traceback: unknown
key, missing config file, value of the wrong type. An int is accepted where a float is expected, and
a value may itself contain '=' (only the first one splits).

Usage at the end of a script's config block (config: the final values, e.g. for checkpoints):

    from configurator import configure
    config = configure(globals())
"""
import ast
import functools
import os
import sys

from common import die

CONFIG_TYPES = (int, float, bool, str, type(None))


def config_keys(g):
    """The config globals: public names defined so far whose value is a plain scalar."""
    return [k for k, v in g.items()
            if not k.startswith('_') and isinstance(v, CONFIG_TYPES)
            and not callable(v) and k not in ('config',)]


STAGES = ('annotate.py', 'pretrain.py', 'anchor_sft.py', 'sample.py', 'diversity.py', 'bench.py', 'bench_annotate.py',
          'bench_resume.py', 'study.py')


@functools.cache  # (parsing the nine scripts takes ~30 ms: once per process, not once per key)
def stage_keys():
    """Config keys of every stage script, read from their top-level assignments (not executed)."""
    here = os.path.dirname(os.path.abspath(__file__))
    keys = set()
    for name in STAGES:
        path = os.path.join(here, name)
        if os.path.isfile(path):
            for node in ast.parse(open(path).read()).body:
                if isinstance(node, ast.Assign):
                    keys.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return frozenset(keys)


def coerce(key, value, default):
    """Convert `value` to the type of `default`; die with one line if it does not fit."""
    if isinstance(value, str) and not isinstance(default, str):
        if isinstance(default, bool):
            low = value.lower()
            if low in ('true', '1', 'yes'):
                return True
            if low in ('false', '0', 'no'):
                return False
            die(f"config key '{key}' expects a bool (True/False), got '{value}'")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if default is None:
                return value  # a None default accepts a free string
            die(f"config key '{key}' expects {type(default).__name__}, got '{value}'")
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, type(default)):
        return value
    die(f"config key '{key}' expects {type(default).__name__}, got {type(value).__name__} {value!r}")


def configure(g, argv=None):
    """Apply config files and --key=value overrides from argv to the globals dict g.
    A stage imported as a module (by a test or another script) keeps its defaults: only the
    script being run reads the command line."""
    if argv is None:
        argv = sys.argv[1:] if g.get('__name__') == '__main__' else []
    keys = config_keys(g)
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                die(f"config file not found: {arg}")
            scope = {}
            try:
                exec(compile(open(arg).read(), arg, 'exec'), scope)
            except Exception as e:  # a broken config file is bad input, not a crash
                die(f"config file {arg} failed to run: {type(e).__name__}: {e}")
            for k, v in scope.items():
                if k.startswith('_') or k == '__builtins__' or callable(v) or type(v).__name__ == 'module':
                    continue
                if k in keys:
                    g[k] = coerce(k, v, g[k])
                elif k not in stage_keys():
                    die(f"unknown config key '{k}' in {arg}")
        else:
            if '=' not in arg:
                die(f"bad argument '{arg}': expected --key=value")
            k, v = arg[2:].split('=', 1)
            if k not in keys:
                die(f"unknown config key '{k}'")
            g[k] = coerce(k, v, g[k])
    return {k: g[k] for k in keys}
