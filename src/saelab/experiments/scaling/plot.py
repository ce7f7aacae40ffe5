"""Drawing scaling fits with their data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from saelab.errors import DataError
from saelab.experiments.scaling.fits import JointFit, PowerFit
from saelab.experiments.scaling.rows import _group_label

# --- plotting ------------------------------------------------------------------------------------


def _curve_x(values: Sequence[float]) -> np.ndarray:
    """Log-spaced x spanning the data."""
    lo, hi = min(values), max(values)
    return np.geomspace(lo, hi, 200) if hi > lo else np.array([lo])


def plot_fit(
    results: Mapping[str, PowerFit | JointFit] | PowerFit | JointFit,
    rows: Sequence[Mapping] | None,
    path: str | Path,
    title: str | None = None,
) -> None:
    """Log-log plot of the points (excluded ones hollow grey) and fitted curves per group; atomic PNG write.

    The points come from the results (which keep the used and excluded points); rows, when given, only
    add their count to the title.
    """
    # Imported here: matplotlib is only needed for plots. Figure + the Agg canvas draw without pyplot's
    # global state, so this never switches the backend of a process that also shows plots.
    import io

    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from saelab.util.atomic import atomic_write_bytes

    if isinstance(results, (PowerFit, JointFit)):
        results = {results.group: results}
    if not results:
        raise DataError("plot_fit: no fits to plot")
    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cycle = [c["color"] for c in rcParams["axes.prop_cycle"]]
    i = 0
    excluded_label = ["excluded"]  # one legend entry for every hollow point

    def hollow(xs, ys):
        """Excluded points: hollow and grey, so the fit visibly ignores them."""
        if len(xs):
            ax.scatter(
                xs,
                ys,
                facecolors="none",
                edgecolors="grey",
                s=22,
                zorder=3,
                label=excluded_label.pop() if excluded_label else None,
            )

    first = next(iter(results.values()))
    for label, res in results.items():
        if isinstance(res, JointFit):
            ks = sorted(set(res.k) | set(res.excluded_k))
            for k in ks:
                colour = cycle[i % len(cycle)]
                i += 1
                n_used = [n for n, kk in zip(res.n, res.k) if kk == k]
                y_used = [y for y, kk in zip(res.y, res.k) if kk == k]
                n_exc = [n for n, kk in zip(res.excluded_n, res.excluded_k) if kk == k]
                y_exc = [y for y, kk in zip(res.excluded_y, res.excluded_k) if kk == k]
                name = f"k={_group_label(k)}" if label == "all" else f"{label}, k={_group_label(k)}"
                ax.scatter(n_used, y_used, color=colour, s=18, zorder=3)
                hollow(n_exc, y_exc)
                xs = _curve_x(n_used + n_exc)
                ax.plot(xs, res.predict(xs, k), color=colour, lw=1.2, label=name)
        else:
            colour = cycle[i % len(cycle)]
            i += 1
            ax.scatter(res.x, res.y, color=colour, s=18, zorder=3)
            hollow(res.excluded_x, res.excluded_y)
            xs = _curve_x(list(res.x) + list(res.excluded_x))
            curve = f"{res.coefficient:.3g}·x^{res.exponent:.3f}"
            if res.form == "power+const":
                curve += f" + {res.irreducible:.3g}"
            ax.plot(xs, res.predict(xs), color=colour, lw=1.2, label=curve if label == "all" else f"{label}: {curve}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(first.x_key)
    ax.set_ylabel(first.y_key)
    heading = title or f"{first.y_key} vs {first.x_key} ({first.form})"
    if rows is not None:
        heading += f", {len(rows)} rows"
    ax.set_title(heading, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
