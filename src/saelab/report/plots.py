"""Matplotlib figures as PNG bytes (Agg canvas; matplotlib is imported only where a figure is drawn)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from saelab.util.atomic import atomic_write_bytes

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_frontier(
    rows: Sequence[dict], path: str | Path, x: str = "l0", y: str = "nmse", label: str = "label", title: str = ""
) -> Path:
    """Scatter of sparsity against reconstruction error, one labelled point per SAE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    methods = sorted({r.get("method", "") for r in rows})
    cmap = plt.get_cmap("tab10")
    xs = np.array([float(r[x]) for r in rows if r[x] > 0])
    for i, m in enumerate(methods):
        pts = sorted((r[x], r[y], r.get(label, m)) for r in rows if r.get("method", "") == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=cmap(i % 10), label=m, alpha=0.85)
    _maybe_log_x(ax, xs)
    _annotate_without_overlap(ax, [(r[x], r[y], r.get(label, r.get("method", ""))) for r in rows])
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("normalized MSE (lower is better)")
    ax.set_title(title or "Sparsity–reconstruction frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _maybe_log_x(ax, xs: np.ndarray) -> None:
    """Log x axis with plain tick labels when the values span more than a decade."""
    xs = xs[np.isfinite(xs) & (xs > 0)]
    if len(xs) > 1 and xs.max() / xs.min() > 10:  # leaky codes count every tiny entry: L0 spans decades
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())


def _annotate_without_overlap(ax, points: Sequence[tuple[float, float, str]]) -> None:
    """Label points, stacking the labels of points that sit within a label's height of each other."""
    ax.figure.canvas.draw()  # fixes the data-to-pixel transform (log scale, limits)
    placed: list[tuple[float, float]] = []
    for px, py, name in sorted(points, key=lambda p: -p[1]):  # higher points keep the upper label
        dx, dy = ax.transData.transform((px, py))
        shift = 0
        while any(abs(dx - ox) < 60 and abs(dy + shift - oy) < 9 for ox, oy in placed):
            shift -= 10
        placed.append((dx, dy + shift))
        ax.annotate(
            name,
            (px, py),
            textcoords="offset points",
            xytext=(4, 3 + shift * 72 / ax.figure.dpi),
            fontsize=7,
            alpha=0.8,
        )


# ---- report figures: PNG bytes, drawn on a private Agg canvas (no pyplot state) ---------------


def new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas; pyplot's global figure list never sees it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def series_styles(names: Sequence[str]) -> dict[str, dict]:
    """A fixed color, marker and line style per series (method), by sorted name so every figure agrees."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    out = {}
    for i, name in enumerate(sorted(set(names))):
        out[name] = {
            "color": cmap(i % 10),
            "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[(i // 10) % len(LINESTYLES)],
        }
    return out


def _err(center: float, lo: float, hi: float) -> tuple[float, float]:
    """Error-bar lengths below and above; a missing or inverted bound draws no bar."""
    below = center - lo if math.isfinite(lo) else 0.0
    above = hi - center if math.isfinite(hi) else 0.0
    return max(below, 0.0), max(above, 0.0)


@dataclass(frozen=True)
class ErrorPoint:
    """A point with intervals on both axes; `series` picks the style (the method), `label` names the point."""

    series: str
    label: str
    x: float
    x_lo: float
    x_hi: float
    y: float
    y_lo: float
    y_hi: float


def frontier_png(points: Sequence[ErrorPoint], xlabel: str, ylabel: str, title: str) -> bytes:
    """y against x with x and y error bars, one style per series, points of a series joined in x order."""
    fig = new_figure(7.0, 4.8)
    ax = fig.add_subplot()
    styles = series_styles([p.series for p in points])
    for series, style in styles.items():
        pts = sorted((p for p in points if p.series == series), key=lambda p: p.x)
        xerr = np.array([_err(p.x, p.x_lo, p.x_hi) for p in pts]).T
        yerr = np.array([_err(p.y, p.y_lo, p.y_hi) for p in pts]).T
        ax.errorbar(
            [p.x for p in pts],
            [p.y for p in pts],
            xerr=xerr,
            yerr=yerr,
            label=series,
            color=style["color"],
            marker=style["marker"],
            linestyle=style["linestyle"],
            capsize=3,
            markersize=5,
            alpha=0.9,
        )
    _maybe_log_x(ax, np.array([p.x for p in points], dtype=float))
    _annotate_without_overlap(ax, [(p.x, p.y, p.label) for p in points])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="method", title_fontsize=8)
    return figure_png(fig)


@dataclass(frozen=True)
class BarValue:
    """One bar with its interval."""

    label: str
    series: str
    value: float
    lo: float
    hi: float


def bars_png(bars: Sequence[BarValue], xlabel: str, title: str, floor: float | None = None) -> bytes:
    """Horizontal bars with error bars, colored by series, one row per label; whiskers stop at `floor` if given."""
    fig = new_figure(7.0, 1.2 + 0.32 * len(bars))
    ax = fig.add_subplot()
    styles = series_styles([b.series for b in bars])
    ys = np.arange(len(bars))[::-1]
    err = np.array([_err(b.value, b.lo if floor is None else max(b.lo, floor), b.hi) for b in bars]).T
    ax.barh(
        ys, [b.value for b in bars], xerr=err, color=[styles[b.series]["color"] for b in bars], capsize=3, alpha=0.85
    )
    ax.set_yticks(ys, [b.label for b in bars], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=s["color"], label=name) for name, s in styles.items()],
        fontsize=8,
        title="method",
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )  # outside: bars fill the whole plot area
    return figure_png(fig)


@dataclass(frozen=True)
class HistPanel:
    """One histogram panel: bin edges and counts, a note printed in the corner, an optional vertical marker."""

    title: str
    edges: tuple[float, ...]
    counts: tuple[float, ...]
    series: str = ""
    note: str = ""
    marker: float | None = None
    marker_label: str = ""


def histogram_grid_png(
    panels: Sequence[HistPanel], xlabel: str, ylabel: str, title: str, ncols: int = 3, sharex: bool = True
) -> bytes:
    """One histogram panel per entry in a grid (sharing the x axis unless told not to)."""
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(3.6 * ncols, 0.6 + 2.5 * nrows)
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    styles = series_styles([p.series for p in panels])
    for ax, p in zip(axes.flat, panels):
        ax.stairs(p.counts, p.edges, fill=True, color=styles[p.series]["color"], alpha=0.75)
        if p.marker is not None and math.isfinite(p.marker):
            ax.axvline(p.marker, color="black", linestyle="--", linewidth=1, label=p.marker_label or None)
            if p.marker_label:
                ax.legend(fontsize=7, loc="upper right")
        if p.note:
            ax.text(0.02, 0.95, p.note, transform=ax.transAxes, fontsize=7, va="top")
        ax.set_title(p.title, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in list(axes.flat)[: len(panels)]:
        ax.tick_params(labelbottom=True)  # sharex hides inner tick labels, also above an empty slot of the last row
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return figure_png(fig)


@dataclass(frozen=True)
class Curve:
    """One SAE's training curve: `x` (tokens) and one y list per metric key; `group` picks the color."""

    label: str
    group: str
    x: tuple[float, ...]
    ys: dict[str, tuple[float, ...]] = field(default_factory=dict)


def curves_png(curves: Sequence[Curve], keys: Sequence[tuple[str, str]], xlabel: str, title: str) -> bytes:
    """One panel per (key, label); one line per curve, colored by group, the group named once in the legend."""
    from matplotlib import colormaps

    groups = list(dict.fromkeys(c.group for c in curves))
    cmap = colormaps["tab20" if len(groups) > 10 else "tab10"]
    colors = {g: cmap(i % cmap.N) for i, g in enumerate(groups)}
    fig = new_figure(6.0 * len(keys), 4.4)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, (key, label) in zip(axes, keys):
        named: set[str] = set()
        values = []
        for c in curves:
            pts = [(x, y) for x, y in zip(c.x, c.ys.get(key, ())) if y is not None and math.isfinite(y)]
            if not pts:
                continue
            values.extend(y for _, y in pts)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                color=colors[c.group],
                linewidth=1.2,
                alpha=0.8,
                label=None if c.group in named else c.group,
            )
            named.add(c.group)
        if values and min(values) > 0 and max(values) / min(values) > 10:  # early steps dwarf the end otherwise
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if curves:
        axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return figure_png(fig)
