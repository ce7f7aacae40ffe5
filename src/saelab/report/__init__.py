"""Reports from result rows: Markdown tables and PNG plots, and build_report for whole sweeps (report.md + report.html)."""

from saelab.report.build import DEFAULT_SECTIONS, build_report, render_markdown, write_markdown
from saelab.report.data import ReportData, ReportPaths, load_report_data
from saelab.report.html import render_html
from saelab.report.plots import plot_frontier, save_figure
from saelab.report.section import Figure, Note, Paragraph, Section
from saelab.report.summary import GroupSummary, MatchedComparison, MetricSpec, matched_comparisons, summarize
from saelab.report.tables import Cell, Table, format_number, make_table, markdown_table

__all__ = [
    "Cell",
    "DEFAULT_SECTIONS",
    "Figure",
    "GroupSummary",
    "MatchedComparison",
    "MetricSpec",
    "Note",
    "Paragraph",
    "ReportData",
    "ReportPaths",
    "Section",
    "Table",
    "build_report",
    "format_number",
    "load_report_data",
    "make_table",
    "markdown_table",
    "matched_comparisons",
    "plot_frontier",
    "render_html",
    "render_markdown",
    "save_figure",
    "summarize",
    "write_markdown",
]
