"""Report sections on distributions: dead latents, firing density, active counts, activation values, training curves."""

from __future__ import annotations

import math
from typing import Sequence

from saelab.errors import DataError
from saelab.report.data import ACTIVE_BINS, ReportData
from saelab.report.results import EVAL, read_curve, read_eval
from saelab.report.section import Figure, Note, Paragraph, Section


def dead_section(data: ReportData) -> Section:
    """Dead fraction per group as bars with their intervals."""
    from saelab.report.plots import BarValue, bars_png

    groups = [g for g in data.groups if "dead_fraction" in g.metrics]
    if not groups:
        return Section.from_blocks(
            "dead", "Dead latents", [Note("Dead fraction: not present in these results (no SAE has dead_fraction).")]
        )
    bars = [
        BarValue(g.group, g.method, iv.estimate, iv.lo, iv.hi) for g in groups for iv in [g.metrics["dead_fraction"]]
    ]
    png = bars_png(
        bars, "fraction of latents that never fire on the evaluation tokens", "Dead latents per group", floor=0.0
    )
    return Section.from_blocks(
        "dead",
        "Dead latents",
        [
            Paragraph(
                "Fraction of latents that never fire on the evaluation tokens: mean over seeds ± 95% interval "
                "(drawn only down to zero, which a fraction cannot go below)."
            ),
            Figure("dead.png", png, "Dead fraction per group"),
        ],
    )


def _missing_note(what: str, names: Sequence[str]) -> Note:
    """One line naming the groups whose data are absent."""
    return Note(f"{what} not present for: {', '.join(names)}.")


def density_section(data: ReportData) -> Section:
    """Firing-density histograms (log10 of the share of tokens a latent fires on), one panel per group's first seed."""
    from saelab.report.plots import HistPanel, histogram_grid_png

    panels, missing = [], []
    for g in data.groups:
        row = data.first_seed(g)
        ev = read_eval(row)
        hist = (ev or {}).get("firing_density_hist")
        if not hist:
            missing.append(g.group)
            continue
        edges, counts = hist.get("log10_bin_edges"), hist.get("counts")
        if not isinstance(edges, list) or not isinstance(counts, list) or len(edges) != len(counts) + 1:
            raise DataError(
                f"{row.folder() / EVAL}: firing_density_hist needs log10_bin_edges with one more entry than counts"
            )
        dead = hist.get("dead")
        n = row.data.get("n_latents")
        note = "" if dead is None else (f"dead: {dead} of {n}" if n else f"dead: {dead}")
        panels.append(
            HistPanel(f"{g.group} ({row.name})", tuple(map(float, edges)), tuple(map(float, counts)), g.method, note)
        )
    title = "Latent firing density"
    if not panels:
        return Section.from_blocks(
            "density",
            title,
            [Note("Firing-density histograms: not present (no SAE folder has an eval.json with firing_density_hist).")],
        )
    png = histogram_grid_png(
        panels, "log10 firing density", "latents", "Latent firing density (first seed of each group)"
    )
    blocks: list = [
        Paragraph(
            "How many latents fire at each log10 density (the share of evaluation tokens on which a latent is "
            "non-zero), for the first seed of each group. Dead latents never fire and have no place on a log "
            "axis; each panel states their number."
        ),
        Figure("density.png", png, "Firing-density histograms per group"),
    ]
    if missing:
        blocks.append(_missing_note("Firing-density histogram", missing))
    return Section.from_blocks("density", title, blocks)


def _active_hist(hist: dict, where: str) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """Edges, token shares and mean of an {"<number active>": tokens} histogram (integers binned when wide)."""
    import numpy as np

    try:
        pairs = sorted((int(k), float(v)) for k, v in hist.items())
    except (TypeError, ValueError):
        raise DataError(f"{where}: active_latents_hist must map integer counts to token numbers") from None
    ks = np.array([k for k, _ in pairs], dtype=float)
    ts = np.array([t for _, t in pairs], dtype=float)
    total = ts.sum()
    if total <= 0:
        raise DataError(f"{where}: active_latents_hist holds no tokens")
    mean = float((ks * ts).sum() / total)
    lo, hi = int(ks.min()), int(ks.max())
    if hi - lo < ACTIVE_BINS:
        edges = np.arange(lo, hi + 2) - 0.5
        shares = np.zeros(hi - lo + 1)
        np.add.at(shares, (ks - lo).astype(int), ts / total)
    else:
        shares, edges = np.histogram(ks, bins=ACTIVE_BINS, weights=ts / total)
    return tuple(edges.tolist()), tuple(shares.tolist()), mean


def active_section(data: ReportData) -> Section:
    """Histograms of the number of active latents per token, one panel per group's first seed."""
    from saelab.report.plots import HistPanel, histogram_grid_png

    panels, missing = [], []
    for g in data.groups:
        row = data.first_seed(g)
        hist = (read_eval(row) or {}).get("active_latents_hist")
        if not hist:
            missing.append(g.group)
            continue
        edges, shares, mean = _active_hist(hist, str(row.folder() / EVAL))
        panels.append(
            HistPanel(f"{g.group} ({row.name})", edges, shares, g.method, marker=mean, marker_label=f"mean {mean:.3g}")
        )
    title = "Active latents per token"
    if not panels:
        return Section.from_blocks(
            "active",
            title,
            [Note("Active-latents histograms: not present (no SAE folder has an eval.json with active_latents_hist).")],
        )
    # Each SAE's own range: a shared axis squeezes a TopK spike at k=32 next to one at k=128 into slivers.
    png = histogram_grid_png(
        panels,
        "active latents per token",
        "share of tokens",
        "Active latents per token (first seed of each group)",
        sharex=False,
    )
    blocks: list = [
        Paragraph(
            "Share of evaluation tokens with each number of non-zero latents, for the first seed of each group; "
            "the dashed line is the mean (the L0 of that SAE)."
        ),
        Figure("active.png", png, "Active latents per token per group"),
    ]
    if missing:
        blocks.append(_missing_note("Active-latents histogram", missing))
    return Section.from_blocks("active", title, blocks)


def values_section(data: ReportData) -> Section:
    """Histograms of the non-zero activation values (log10), one panel per group's first seed."""
    from saelab.report.plots import HistPanel, histogram_grid_png

    panels, missing = [], []
    for g in data.groups:
        row = data.first_seed(g)
        hist = (read_eval(row) or {}).get("activation_value_hist")
        if not hist:
            missing.append(g.group)
            continue
        edges, counts = hist.get("log10_bin_edges"), hist.get("counts")
        if not isinstance(edges, list) or not isinstance(counts, list) or len(edges) != len(counts) + 1:
            raise DataError(
                f"{row.folder() / EVAL}: activation_value_hist needs log10_bin_edges with one more entry than counts"
            )
        outside = {k: int(hist.get(k) or 0) for k in ("below", "above", "negative")}
        total = sum(counts) + outside["below"] + outside["above"]
        if total <= 0:
            missing.append(g.group)
            continue
        # Shares, so SAEs evaluated on different numbers of tokens or with different L0 compare by shape.
        shares = tuple(float(c) / total for c in counts)
        note = ", ".join(f"{k}: {v}" for k, v in outside.items() if v)
        panels.append(HistPanel(f"{g.group} ({row.name})", tuple(map(float, edges)), shares, g.method, note))
    title = "Activation values"
    if not panels:
        return Section.from_blocks(
            "values",
            title,
            [
                Note(
                    "Activation-value histograms: not present (no SAE folder has an eval.json with activation_value_hist)."
                )
            ],
        )
    png = histogram_grid_png(
        panels,
        "log10 activation value (normalized space)",
        "share of non-zero activations",
        "Non-zero activation values (first seed of each group)",
    )
    blocks: list = [
        Paragraph(
            "Share of the non-zero activations at each log10 value (0.2-decade bins, in the SAE's normalized input "
            "space), for the first seed of each group. A penalty such as L1 pulls mass toward small values "
            "(shrinkage); leaky codes show their leaked entries as a second mode far below the top-k ones. Values "
            "outside the axis (below, above) and negative ones (counted by magnitude) are noted in the panel."
        ),
        Figure("values.png", png, "Activation-value histograms per group"),
    ]
    if missing:
        blocks.append(_missing_note("Activation-value histogram", missing))
    return Section.from_blocks("values", title, blocks)


def curves_section(data: ReportData) -> Section:
    """Training curves (NMSE and L0 against tokens) from each SAE's metrics.jsonl, one line per SAE."""
    from saelab.report.plots import Curve, curves_png

    logs, missing = [], []
    by_key = {(r.name, str(r.data["group"])): r for r in data.rows}
    for g in data.groups:
        for name in g.names:
            row = by_key[(name, g.group)]
            steps = read_curve(row)
            if steps:
                logs.append((g, row, steps))
            else:
                missing.append(name)
    title = "Training curves"
    if not logs:
        return Section.from_blocks(
            "curves", title, [Note("Training curves: not present (no SAE folder has a metrics.jsonl).")]
        )
    # Tokens compare runs of different batch sizes; steps only when some log lacks tokens.
    x_key = (
        "tokens" if all(isinstance(s.get("tokens"), (int, float)) for _, _, steps in logs for s in steps) else "step"
    )
    keys = [
        (k, label)
        for k, label in (("nmse", "NMSE"), ("l0", "L0"))
        if any(s.get(k) is not None for _, _, steps in logs for s in steps)
    ]
    if not keys:
        return Section.from_blocks(
            "curves", title, [Note("Training curves: not present (the metrics.jsonl files log neither nmse nor l0).")]
        )
    curves = [
        Curve(
            row.name,
            g.group,
            tuple(float(s.get(x_key) or 0) for s in steps),
            {k: tuple(s.get(k) if isinstance(s.get(k), (int, float)) else math.nan for s in steps) for k, _ in keys},
        )
        for g, row, steps in logs
    ]
    png = curves_png(curves, keys, "training tokens" if x_key == "tokens" else "training step", "Training curves")
    blocks: list = [
        Paragraph(
            f"{', '.join(label for _, label in keys)} as logged during training, one line per SAE, colored by group."
        ),
        Figure("curves.png", png, "Training curves"),
    ]
    if missing:
        blocks.append(_missing_note("Training curve (metrics.jsonl)", missing))
    return Section.from_blocks("curves", title, blocks)
