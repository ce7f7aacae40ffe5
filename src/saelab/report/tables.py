"""Tables a person can read: number formatting, Markdown tables, and HTML tables with right-aligned numbers."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence


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


def format_number(value: float | int | None) -> str:
    """One number for a table cell: '–' for missing, integers as they are, floats to a readable precision."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1e-3:
        return f"{value:.4f}"
    return f"{value:.2e}"  # tiny values (KL near zero) would print as 0.0000


def format_difference(diff: float, lo: float, hi: float) -> str:
    """'+0.100 [+0.077, +0.123]': one precision for all three, set by the interval's width; open ends as ±∞."""
    spread = max(diff - lo, hi - diff)
    if abs(diff) >= 10:
        d = 1
    else:
        ref, sig = (spread, 2) if math.isfinite(spread) and spread > 0 else (abs(diff), 3)
        d = 4 if ref == 0 or not math.isfinite(ref) else int(min(10, max(0, sig - 1 - math.floor(math.log10(ref)))))

    def one(v: float) -> str:
        if not math.isfinite(v):
            return "–" if math.isnan(v) else ("+∞" if v > 0 else "−∞")
        return f"{v:+.{d}f}"

    return f"{one(diff)} [{one(lo)}, {one(hi)}]"


def format_params(params: dict | None) -> str:
    """Method parameters as 'k=32, alpha=0.5' (empty for none)."""
    if not params:
        return ""
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


@dataclass(frozen=True)
class Cell:
    """One table cell: display text plus optional machine-readable values (HTML data-* attributes)."""

    text: str
    data: tuple[tuple[str, str], ...] = ()
    css: str = ""


@dataclass(frozen=True)
class Table:
    """A table rendered both as Markdown and as HTML; `numeric` marks the right-aligned columns."""

    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    numeric: tuple[bool, ...]
    css: str = ""

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown, numeric columns right-aligned."""
        head = "| " + " | ".join(_md_escape(h) for h in self.headers) + " |"
        rule = "|" + "|".join("---:" if n else "---" for n in self.numeric) + "|"
        body = ["| " + " | ".join(_md_escape(c.text) for c in row) + " |" for row in self.rows]
        return "\n".join([head, rule, *body]) + "\n"

    def to_html(self) -> str:
        """An HTML table; numeric cells get class 'num' so the page's CSS right-aligns them."""

        def cls(i: int, extra: str = "") -> str:
            names = " ".join(n for n in ("num" if self.numeric[i] else "", extra) if n)
            return f' class="{names}"' if names else ""

        head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(self.headers))
        body = []
        for row in self.rows:
            cells = []
            for i, c in enumerate(row):
                data = "".join(f' data-{k}="{html.escape(v)}"' for k, v in c.data)
                cells.append(f"<td{cls(i, c.css)}{data}>{html.escape(c.text)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        table_cls = f' class="{self.css}"' if self.css else ""
        return (
            f'<div class="table-wrap"><table{table_cls}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )


def make_table(
    headers: Sequence[str], rows: Sequence[Sequence[Cell | str]], numeric: Sequence[bool] | None = None, css: str = ""
) -> Table:
    """Build a Table, wrapping plain strings as cells; every row must have one cell per header."""
    numeric = tuple(numeric) if numeric is not None else (False,) * len(headers)
    if len(numeric) != len(headers):
        raise ValueError(f"numeric has {len(numeric)} flags for {len(headers)} headers")
    out = []
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells for {len(headers)} headers: {row!r}")
        out.append(tuple(c if isinstance(c, Cell) else Cell(str(c)) for c in row))
    return Table(tuple(headers), tuple(out), numeric, css)


def _md_escape(text: str) -> str:
    """Keep a cell inside its column: pipes would split it, newlines would end the row."""
    return text.replace("|", "\\|").replace("\n", " ")
