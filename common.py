"""
Small things every stage shares: clear errors, atomic writes, JSONL I/O, the DDP/device setup and
checkpoints. Kept in one place so that no stage carries its own copy.
"""
import json
import os
import sys
import tempfile


class UserError(Exception):
    """Bad input from the user: reported as one line, never as a traceback."""


def die(msg):
    """Print one clear line naming the problem and exit non-zero."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def main_guard(fn):
    """Run fn(); a UserError becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except UserError as e:
        die(str(e))


# -----------------------------------------------------------------------------
# atomic output: write to a temp file in the same directory, then rename, so that a crash or a
# SIGKILL never leaves a half-written file where a finished one is expected

def atomic_write(path, write_fn, mode='w'):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + '\n')


def write_jsonl(path, rows):
    atomic_write(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + '\n' for r in rows))


def read_jsonl(path, what='file'):
    """Rows of a JSONL file; a missing, empty or broken file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: not valid JSON ({e.msg})")
    if not rows:
        raise UserError(f"{what} is empty: {path}")
    return rows


def read_json(path, what='file'):
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg})")
