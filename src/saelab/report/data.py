"""What a report is made from: the sweep rows read, their group summaries and matched comparisons."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

from saelab.report.results import ResultRow, read_all_results
from saelab.report.section import Section
from saelab.report.summary import (
    L0_TOLERANCE,
    GroupSummary,
    MatchedComparison,
    matched_comparisons,
    summarize,
)

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
