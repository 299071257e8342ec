"""
The reports' pictures, as PNG: diversity against quality per arm (the frontier of a temperature
sweep), the judge's topic shares per arm (diversity.py), and one line per arm (study.py's sweeps).
"""
import io

import numpy as np

from common import atomic_write
from metrics import sweeps


MARKERS = 'os^Dv<>PX*ph'


def png_bytes(fig):
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=120, bbox_inches='tight')
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_png(points, metric):
    """Diversity (y) against quality (x), one point per arm; arms named '<arm>@t<temperature>' are
    joined into one line per <arm>, sorted by temperature (paper: the diversity-quality frontier).
    Every arm is named in the legend by its own marker and color: arms of similar quality and
    diversity sit on top of each other, and labels at the points would overlap."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sw = sweeps(points)
    swept = {a for line in sw.values() for _, a in line}
    style = {}
    for arm in list(points) + list(sw):  # a sweep shares its arm's style
        n = len(style)
        style.setdefault(arm, dict(color=f'C{n % 10}', marker=MARKERS[n % len(MARKERS)]))
    for arm, (x, y) in points.items():
        if arm not in swept:  # hollow: arms at the same point (base and annotated-base) both show
            ax.scatter([x], [y], s=60, label=arm, facecolors='none', edgecolors=style[arm]['color'], linewidths=1.6,
                       marker=style[arm]['marker'])
    for name, line in sw.items():
        xs, ys = [points[a][0] for _, a in line], [points[a][1] for _, a in line]
        ax.plot(xs, ys, label=f'{name} (temperature sweep)', **style[name])
        for (t, _), x, y in zip(line, xs, ys):
            ax.annotate(f't={t:g}', (x, y), textcoords='offset points', xytext=(4, -10), fontsize=7)
    ax.set_xlabel('quality (fraction in format and finished)')
    ax.set_ylabel(f'{metric} (higher = more diverse)')
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.02, 1), borderaxespad=0)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def topic_order(shares, sft_values):
    """The topics of the bars: the SFT set's first (they sit at the left of every bar), then the
    others by their share over all arms, largest first."""
    total = {}
    for dist in shares.values():
        for t, p in dist.items():
            total[t] = total.get(t, 0.0) + p
    rest = sorted((t for t in total if t not in sft_values), key=lambda t: (-total[t], t))
    return [t for t in sorted(sft_values) if t in total] + rest


def topic_shares_png(shares, sft_values, key):
    """One horizontal bar per arm (shares: {arm: {topic: share of its samples}}, in the order given,
    base first), stacked by the judge's topics, the SFT set's topics hatched and first: how far each
    arm's samples were pulled into the SFT set's topics reads off the left of its bar."""
    plt = pyplot()
    topics, arms = topic_order(shares, sft_values), list(shares)
    cmap = plt.get_cmap('tab20')
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(arms) + 1.6))
    left = np.zeros(len(arms))
    for i, t in enumerate(topics):
        w = np.array([shares[a].get(t, 0.0) for a in arms])
        sft = t in sft_values
        ax.barh(range(len(arms)), w, left=left, color=cmap(i % 20), edgecolor='black' if sft else 'white',
                linewidth=0.8 if sft else 0.3, hatch='//' if sft else None,
                label=f'{t} (SFT set)' if sft else t)
        left += w
    ax.set_yticks(range(len(arms)), arms)
    ax.invert_yaxis()  # base, the first arm, on top
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of the arm's samples, by the embedding judge's {key} (hatched: the SFT set's {key}s)")
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1), borderaxespad=0)
    return png_bytes(fig)


def line_plot(path, series, xlabel, ylabel, logx=False):
    """One line per arm, series = {arm: [(x, y), ...]}, written atomically as a PNG (study.py)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for arm, pts in series.items():
        ax.plot([x for x, _ in pts], [y for _, y in pts], 'o-', label=arm)
    if logx:
        ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=120), 'wb')  # makes the dir, too
    plt.close(fig)
