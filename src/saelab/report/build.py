"""build_report: sweep folders in, report.md (with PNGs beside it) and one self-contained report.html out."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence, Union

from saelab.errors import ConfigError, DataError
from saelab.report.html import render_html
from saelab.report.results import EVAL, ResultRow, read_all_results, read_curve, read_eval
from saelab.report.section import Figure, Note, Paragraph, Section
from saelab.report.summary import (
    KNOWN_METRICS,
    L0_TOLERANCE,
    GroupSummary,
    MatchedComparison,
    matched_comparisons,
    metric_specs,
    spec_for,
    summarize,
)
from saelab.report.tables import Cell, format_difference, format_params, make_table
from saelab.util.atomic import atomic_write_bytes, atomic_write_text

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
DEFAULT_TITLE = "SAE sweep report"
ACTIVE_BINS = 50  # active-count histograms wider than this many integers are binned

# (metric, y-axis label) drawn against L0, in this order, each when some group has it.
FRONTIERS: tuple[tuple[str, str], ...] = (
    ("nmse", "normalized MSE (lower is better)"),
    ("ce_recovered_zero", "CE loss recovered vs zero ablation (higher is better)"),
    ("kl", "KL to the clean model (lower is better)"),
    ("good_classifiers", "good classifiers (higher is better)"),
    ("coverage", "coverage (higher is better)"),
)


@dataclass(frozen=True)
class ReportData:
    """Everything the sections draw on: the rows read, their per-group summaries and matched-L0 comparisons."""

    dirs: tuple[Path, ...]
    rows: tuple[ResultRow, ...]
    groups: tuple[GroupSummary, ...]
    comparisons: tuple[MatchedComparison, ...]

    def first_seed(self, group: GroupSummary) -> ResultRow:
        """The group's representative SAE: its lowest seed (the summary orders names by seed)."""
        return next(r for r in self.rows if r.name == group.names[0] and str(r.data["group"]) == group.group)


SectionHook = Callable[[ReportData], Union[Section, None]]


@dataclass(frozen=True)
class ReportPaths:
    """What build_report wrote."""

    out: Path
    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def load_report_data(result_dirs: Sequence[str | Path], tolerance: float = L0_TOLERANCE) -> ReportData:
    """Read every DIR/results.jsonl, summarize by group, and compare the L0-matched groups."""
    rows = read_all_results(result_dirs)
    groups = summarize([r.data for r in rows])
    return ReportData(
        tuple(Path(d) for d in result_dirs), tuple(rows), tuple(groups), tuple(matched_comparisons(groups, tolerance))
    )


# ---- sections ------------------------------------------------------------------------------


def _estimate_cell(group: GroupSummary, key: str) -> Cell:
    """An interval cell with its numbers kept as data-* attributes for machines."""
    from saelab.util.intervals import format_interval

    iv = group.metrics.get(key)
    if iv is None:
        return Cell("–")
    data = tuple((k, repr(float(getattr(iv, k)))) for k in ("estimate", "lo", "hi")) + (
        ("n", str(iv.n)),
        ("method", iv.method),
    )
    return Cell(format_interval(iv), data=(("metric", key),) + data)


def summary_section(data: ReportData) -> Section:
    """One row per group: mean ± 95% interval of every metric present, and the number of seeds."""
    specs = metric_specs([r.data for r in data.rows])
    headers = ["group", "method", "params", "seeds", *(m.label for m in specs)]
    numeric = [False, False, False, True, *(True for _ in specs)]
    rows = [
        [
            Cell(g.group, data=(("group", g.group),)),
            g.method,
            format_params(g.params),
            str(g.n_seeds),
            *(_estimate_cell(g, m.key) for m in specs),
        ]
        for g in data.groups
    ]
    dirs = ", ".join(str(d) for d in data.dirs)
    blocks = [
        Paragraph(f"{len(data.rows)} SAEs in {len(data.groups)} groups, read from {dirs}."),
        Paragraph(
            "Each cell is the mean over the group's seeds ± the half-width of its 95% Student-t interval. "
            "A group with a single seed shows that SAE's own bootstrap interval over evaluation data where "
            "the sweep computed one, else the bare value."
        ),
        make_table(headers, rows, numeric, css="summary"),
    ]
    return Section.from_blocks("summary", "Summary across seeds", blocks)


def _point(g: GroupSummary, key: str):
    """An error-bar point (L0 on x, `key` on y) for a group that has both."""
    from saelab.report.plots import ErrorPoint

    x, y = g.metrics["l0"], g.metrics[key]
    return ErrorPoint(g.method, g.group, x.estimate, x.lo, x.hi, y.estimate, y.lo, y.hi)


def frontiers_section(data: ReportData) -> Section:
    """Each frontier metric against L0, with x and y error bars, one style per method."""
    from saelab.report.plots import frontier_png

    blocks: list = [
        Paragraph("Group means with 95% intervals on both axes; lines join a method's groups in order of L0.")
    ]
    for key, ylabel in FRONTIERS:
        label = spec_for(key).label
        groups = [g for g in data.groups if "l0" in g.metrics and key in g.metrics]
        if not groups:
            blocks.append(Note(f"{label} vs L0: not present in these results (no SAE has both l0 and {key})."))
            continue
        png = frontier_png([_point(g, key) for g in groups], "L0 (active latents per token)", ylabel, f"{label} vs L0")
        blocks.append(Figure(f"frontier-{key}.png", png, f"{label} against L0, mean ± 95% interval per group"))
    return Section.from_blocks("frontiers", "Frontiers against L0", blocks)


def comparisons_section(data: ReportData) -> Section:
    """Pairwise comparisons of L0-matched groups, metric by metric, with the verdict each interval supports."""
    lower = [m.label for m in KNOWN_METRICS if m.higher_is_better is False]
    higher = [m.label for m in KNOWN_METRICS if m.higher_is_better]
    blocks: list = [
        Paragraph(
            f"Groups count as matched in L0 when they share target_l0, or, where it is absent, when their mean L0 lie "
            f"within ±{L0_TOLERANCE:.0%} of each other. A − B is given with its 95% interval: Welch t over seeds, each "
            "side's variance of the mean widened by its SAEs' evaluation SE (games or row blocks resampled; the seeds share "
            "those evaluation data, so that error does not average out); a side with one seed, or whose seeds agree with no "
            "evaluation SE recorded, is not separable. All comparisons of the report form one family: a verdict names a "
            'winner only when its Holm-adjusted p-value is below 0.05 (family-wise 5%), so it can say "not separable" '
            "where the unadjusted 95% interval excludes zero. "
            f"Lower is better for {', '.join(lower)}; higher is better for {', '.join(higher)}."
        )
    ]
    if not data.comparisons:
        blocks.append(
            Note(
                "Matched-L0 comparisons: not present (no two groups share a target_l0 or lie within "
                f"±{L0_TOLERANCE:.0%} in mean L0, or they have no comparable metric)."
            )
        )
        return Section.from_blocks("comparisons", "Matched-L0 comparisons", blocks)
    pairs = {(c.comparison.a, c.comparison.b) for c in data.comparisons}
    separable = sum(c.comparison.separable() for c in data.comparisons)
    blocks.append(
        Paragraph(
            f"{len(data.comparisons)} comparisons between {len(pairs)} "
            f"{'pair' if len(pairs) == 1 else 'pairs'} of groups; {separable} separable."
        )
    )
    rows = []
    for m in data.comparisons:
        c = m.comparison
        attrs = (("metric", m.metric), ("a", c.a), ("b", c.b))
        rows.append(
            [
                m.basis,
                spec_for(m.metric).label,
                c.a,
                c.b,
                Cell(format_difference(c.diff, c.lo, c.hi), data=attrs),
                f"{c.p:.2g}",
                "–" if c.p_adjusted is None else f"{c.p_adjusted:.2g}",
                Cell(c.verdict, data=attrs, css="win" if c.separable() else "tie"),
                c.method,
            ]
        )
    blocks.append(
        make_table(
            ["matched at", "metric", "A", "B", "A − B [95% interval]", "p", "p (Holm)", "verdict", "test"],
            rows,
            [False, False, False, False, True, True, True, False, False],
            css="comparisons",
        )
    )
    return Section.from_blocks("comparisons", "Matched-L0 comparisons", blocks)


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


DEFAULT_SECTIONS: tuple[SectionHook, ...] = (
    summary_section,
    frontiers_section,
    comparisons_section,
    dead_section,
    density_section,
    active_section,
    values_section,
    curves_section,
)


# ---- documents -----------------------------------------------------------------------------


def render_markdown(title: str, sections: Sequence[Section], meta: Sequence[tuple[str, str]] = ()) -> str:
    """report.md: title, meta lines, contents, then each section under an anchor named by its id."""
    lines = [f"# {title}", ""]
    lines += [f"{k}: `{v}`  " for k, v in meta]
    lines += ["", "## Contents", ""]
    lines += [f"{i}. [{s.title}](#{s.id})" for i, s in enumerate(sections, start=1)]
    for s in sections:
        lines += ["", f'<a id="{s.id}"></a>', "", f"## {s.title}", "", s.markdown.rstrip()]
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, text: str) -> Path:
    """Atomic Markdown write."""
    atomic_write_text(path, text)
    return Path(path)


def build_report(
    result_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    extra_sections: Sequence[Section | SectionHook] = (),
    title: str = DEFAULT_TITLE,
    command: str | None = None,
) -> ReportPaths:
    """Write out/report.md (PNGs beside it) and a self-contained out/report.html from sweep folders.

    `extra_sections` are appended after the standard ones: ready Sections, or callables taking the
    ReportData and returning a Section (or None to add nothing), for modules that need the rows.
    """
    if isinstance(result_dirs, (str, Path)):
        result_dirs = [result_dirs]  # one folder given bare would otherwise be read character by character
    dirs = [Path(d) for d in result_dirs]
    data = load_report_data(dirs)
    hooks: list[Section | SectionHook] = [*DEFAULT_SECTIONS, *extra_sections]
    sections = [s for s in (h if isinstance(h, Section) else h(data) for h in hooks) if s is not None]
    _check_unique(sections)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for s in sections:
        for f in s.figures:
            atomic_write_bytes(out / f.filename, f.png)
            figures.append(out / f.filename)
    built = datetime.now().astimezone().isoformat(timespec="seconds")
    meta = [
        ("Built", built),
        ("Command", command or shlex.join(["saelab", "report", *map(str, dirs), "--out", str(out)])),
    ]
    md_path, html_path = out / REPORT_MD, out / REPORT_HTML
    atomic_write_text(md_path, render_markdown(title, sections, meta))
    atomic_write_text(html_path, render_html(title, sections, meta))
    return ReportPaths(out, md_path, html_path, tuple(figures))


def _check_unique(sections: Sequence[Section]) -> None:
    """Section ids are the page's anchors and figure names its files: a repeat would silently overwrite one."""
    ids: set[str] = {"contents"}  # the page's own table of contents
    files: set[str] = set()
    for s in sections:
        if s.id in ids:
            raise ConfigError("extra_sections", s.id, "repeats a section id already in the report (or 'contents')")
        ids.add(s.id)
        for f in s.figures:
            if f.filename in files:
                raise ConfigError("extra_sections", f.filename, "repeats a figure filename already in the report")
            files.add(f.filename)
