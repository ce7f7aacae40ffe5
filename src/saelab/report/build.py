"""build_report: sweep folders in, report.md (with PNGs beside it) and one self-contained report.html out."""

from __future__ import annotations

import shlex
from datetime import datetime
from pathlib import Path
from typing import Sequence

from saelab.errors import ConfigError
from saelab.report.data import (
    DEFAULT_TITLE,
    FRONTIERS,
    REPORT_HTML,
    REPORT_MD,
    ReportData,
    ReportPaths,
    SectionHook,
    load_report_data,
)
from saelab.report.distributions import (
    active_section,
    curves_section,
    dead_section,
    density_section,
    values_section,
)
from saelab.report.html import render_html
from saelab.report.section import Figure, Note, Paragraph, Section
from saelab.report.summary import (
    KNOWN_METRICS,
    L0_TOLERANCE,
    GroupSummary,
    metric_specs,
    spec_for,
)
from saelab.report.tables import Cell, format_difference, format_params, make_table
from saelab.util.atomic import atomic_write_bytes, atomic_write_text

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
