"""Tables and plots from result rows: Markdown a person can read, PNGs written atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from saelab.io import atomic_write_bytes, atomic_write_text


def _fmt(value) -> str:
    """Table cell text: fractions to 4 decimals, counts-like values (L0) to 1."""
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table: `columns` is a list of (key, header)."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_frontier(rows: Sequence[dict], path: str | Path, x: str = "l0", y: str = "nmse", label: str = "label", title: str = "") -> Path:
    """Scatter of sparsity against reconstruction error, one labelled point per SAE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    methods = sorted({r.get("method", "") for r in rows})
    cmap = plt.get_cmap("tab10")
    xs = np.array([float(r[x]) for r in rows if r[x] > 0])
    log_x = len(xs) > 1 and xs.max() / xs.min() > 10  # leaky codes count every tiny entry: L0 spans decades
    for i, m in enumerate(methods):
        pts = sorted((r[x], r[y], r.get(label, m)) for r in rows if r.get("method", "") == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=cmap(i % 10), label=m, alpha=0.85)
    if log_x:
        from matplotlib.ticker import LogLocator, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    _annotate_without_overlap(ax, [(r[x], r[y], r.get(label, r.get("method", ""))) for r in rows])
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("normalized MSE (lower is better)")
    ax.set_title(title or "Sparsity–reconstruction frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


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
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(4, 3 + shift * 72 / ax.figure.dpi), fontsize=7, alpha=0.8)


def write_markdown(path: str | Path, text: str) -> Path:
    """Atomic Markdown write."""
    atomic_write_text(path, text)
    return Path(path)
