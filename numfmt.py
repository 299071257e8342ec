"""
How the reports write numbers: fixed digits, shares in percent, signed differences, points of a
share, a figure with its CI and its value per replicate; and report.json's spelling of NaN and inf.
"""
import math

import numpy as np


def fmt(x, nd=3):
    if x is None or math.isnan(x):
        return 'n/a'
    return f'{x:.{nd}f}' if math.isfinite(x) else ('inf' if x > 0 else '-inf')


def fmt2(x):
    return fmt(x, 2)


def pct(x):
    return 'n/a' if x is None or not math.isfinite(x) else f'{100 * x:.0f}%'


def signed(x, nd=3):
    return fmt(x, nd) if x is None or not math.isfinite(x) or x < 0 else '+' + fmt(x, nd)


def pts(x):
    """A difference of two shares in percentage points."""
    return 'n/a' if x is None or not math.isfinite(x) else f'{100 * x:+.0f} pts'


def ratio_x(x):
    return fmt(x, 1) + ('x' if x is not None and math.isfinite(x) else '')


def with_ci(d, f=fmt):
    """{'value' or 'mean': x, 'ci': [lo, hi]} -> 'x [lo, hi]'; None -> 'n/a'."""
    return 'n/a' if d is None else f"{f(d.get('value', d.get('mean')))} [{f(d['ci'][0])}, {f(d['ci'][1])}]"


def per_seed(d, f=fmt, sep=' / '):
    """The value of every replicate, '(a / b / c)'; '' for one replicate or none."""
    seeds = (d or {}).get('seeds') or []
    return f"({sep.join(f(s) for s in seeds)})" if len(seeds) > 1 else ''


def cell(d, f=fmt):
    """A mean and, for several replicates, the value of each: '76% (74% / 78% / 76%)'."""
    return f"{f(d['mean'])} {per_seed(d, f)}".strip()


def t_cell(d, f=fmt):
    """The t-interval over the per-replicate values, '[lo, hi]'; '-' where there is none (one replicate)."""
    t = (d or {}).get('t_ci')
    return f"[{f(t[0])}, {f(t[1])}]" if t else '-'


def jsonable(x):
    """NaN/inf become the strings 'nan'/'inf'/'-inf' (strict JSON has no such numbers)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else ('nan' if math.isnan(x) else 'inf' if x > 0 else '-inf')
    return x.item() if isinstance(x, np.generic) else x
