"""
Small things every stage shares: clear errors, the validation of config values and output paths
(all of it before any work), atomic writes and JSONL I/O. Kept in one place so that no stage
carries its own copy.
"""
import glob
import hashlib
import json
import math
import os
import re
import sys
import tempfile


class UserError(Exception):
    """Bad input from the user: reported as one line, never as a traceback."""


def die(msg):
    """Print one clear line naming the problem and exit non-zero."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def digest(*parts):
    """A short stable hash of strings and bytes: fingerprints, stage stamps, cache keys."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
    return h.hexdigest()[:16]


def split_list(text):
    """'a, b,,c' -> ['a', 'b', 'c']: the comma-separated lists of config values."""
    return [p.strip() for p in text.split(',') if p.strip()]


def environment():
    """What a measured number depends on besides the code: library versions, the CPU (or GPU), cores
    and threads. Recorded next to the figures: a training run is repeatable on one machine, not
    across machines."""
    import platform
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
    except OSError:
        pass
    return dict(python=platform.python_version(), torch=torch.__version__, numpy=__import__('numpy').__version__,
                platform=platform.platform(), cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def main_guard(fn):
    """Run fn(); a UserError becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except UserError as e:
        die(str(e))


# -----------------------------------------------------------------------------
# validation: every stage checks its whole config and its output paths first, then works

def check_config(cfg, positive=(), nonneg=(), fractions=(), choices=None):
    """One line for the first config value out of its range: positive (> 0), nonneg (>= 0),
    fractions (in [0, 1]), choices ({key: allowed values}). Floats must be finite."""
    for k, v in cfg.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{k} must be a finite number, got {v}")
    for k in positive:
        if cfg[k] <= 0:
            raise UserError(f"{k} must be > 0, got {cfg[k]}")
    for k in nonneg:
        if cfg[k] < 0:
            raise UserError(f"{k} must be >= 0, got {cfg[k]}")
    for k in fractions:
        if not 0 <= cfg[k] <= 1:
            raise UserError(f"{k} must be in [0, 1], got {cfg[k]}")
    for k, allowed in (choices or {}).items():
        if cfg[k] not in allowed:
            raise UserError(f"{k} must be one of {', '.join(map(str, allowed))}; got {cfg[k]!r}")


def check_device(device):
    """torch's device strings this project runs on."""
    if not re.fullmatch(r'auto|cpu|cuda(:\d+)?|mps', device):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps; got '{device}'")


def check_out_dir(path, what='output dir'):
    """Refuse an output dir that is a file or cannot be written (read-only, under /proc, ...)
    before any work: create it if needed and write a probe file in it."""
    if not path:
        raise UserError(f"{what} is empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        # an unnamed file (O_TMPFILE where the file system has it): a process killed while it holds
        # the probe leaves nothing in the directory
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{what} {path} cannot be written ({e.strerror or type(e).__name__})")


def check_out_file(path, what='output file'):
    """Refuse an output file that is a directory or whose directory cannot be written."""
    if not path:
        raise UserError(f"{what} is empty")
    real = os.path.realpath(path)  # a symlink is written through, never replaced
    if os.path.isdir(real):
        raise UserError(f"{what} {path} is a directory")
    check_out_dir(os.path.dirname(real) or '.', f"the directory of {what} {path}")


def die_with_parent():
    """Ask Linux to send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), so that a
    stage whose study (or a worker whose torchrun) was killed stops instead of writing on as an
    orphan. Elsewhere a no-op. Safe between fork and exec (subprocess's preexec_fn)."""
    if not sys.platform.startswith('linux'):
        return
    import ctypes
    import signal
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call: nobody will send it
        os.kill(os.getpid(), signal.SIGTERM)


def clean_stale_temps(directory, names):
    """Remove the temp files that atomic_write leaves for the files `names` of directory when a
    process is killed mid-write (they can be as large as a checkpoint). Only that exact pattern,
    .<name>.<8 random characters>.tmp, and only on the first rank under torchrun (the others
    write nothing)."""
    if int(os.environ.get('RANK', 0)) != 0:
        return
    for name in names:
        for f in glob.glob(os.path.join(glob.escape(directory), f'.{glob.escape(name)}.' + '?' * 8 + '.tmp')):
            try:
                os.remove(f)
            except OSError:
                pass


# -----------------------------------------------------------------------------
# atomic output: write to a temp file in the same directory, then rename, so that a crash or a
# SIGKILL never leaves a half-written file where a finished one is expected

def atomic_write(path, write_fn, mode='w'):
    path = os.path.realpath(path)  # through a symlink to its target: the link stays a link
    d = os.path.dirname(path)
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


def text_lines(path):
    """(line number, line) of a UTF-8 text file, one line in memory at a time; other bytes are a
    UserError that names the line."""
    with open(path, 'rb') as f:
        for i, raw in enumerate(f, 1):
            try:
                yield i, raw.decode('utf-8')
            except UnicodeDecodeError:
                raise UserError(f"{path}:{i}: not UTF-8 text")


def jsonl_rows(path):
    """(line number, row) of a JSONL file, blank lines skipped, one line in memory at a time; a line
    that is not JSON is a UserError that names it."""
    for i, line in text_lines(path):
        if line.strip():
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: not valid JSON ({e.msg})")


def read_jsonl(path, what='file'):
    """Rows of a JSONL file; a missing, empty or broken file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    rows = [row for _, row in jsonl_rows(path)]
    if not rows:
        raise UserError(f"{what} is empty: {path}")
    return rows


def read_json(path, what='file'):
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}")
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg})")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text")
