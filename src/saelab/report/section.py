"""The unit a report is made of: a section with a stable id, its Markdown and HTML bodies, and its figures."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import Sequence, Union

from saelab.report.tables import Table

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.png$")


@dataclass(frozen=True)
class Figure:
    """A PNG figure: written as `filename` beside report.md, embedded as a data URI in report.html."""

    filename: str
    png: bytes
    caption: str = ""

    def __post_init__(self):
        if not _FILENAME.match(self.filename):
            raise ValueError(f"figure filename {self.filename!r} must be a plain name ending in .png")

    def data_uri(self) -> str:
        """The PNG as a data: URI, so the HTML page needs no other file."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")

    def to_markdown(self) -> str:
        """A Markdown image linking the PNG file beside report.md."""
        alt = self.caption.replace("]", ")").replace("[", "(") or self.filename
        return f"![{alt}]({self.filename})\n"

    def to_html(self) -> str:
        """An embedded <figure> with its caption."""
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        alt = html.escape(self.caption or self.filename)
        return f'<figure><img src="{self.data_uri()}" alt="{alt}">{cap}</figure>'


@dataclass(frozen=True)
class Note:
    """A one-line remark, e.g. that some data are absent."""

    text: str


@dataclass(frozen=True)
class Paragraph:
    """Plain explanatory text."""

    text: str


Block = Union[Paragraph, Note, Table, Figure]


@dataclass(frozen=True)
class Section:
    """One report section: `markdown` and `html` are complete bodies; `figures` are the PNGs they reference.

    Later modules (scaling fits, refinement, features) add sections by building one of these,
    usually with `Section.from_blocks`, and passing it to build_report(extra_sections=...).
    """

    id: str
    title: str
    markdown: str
    html: str
    figures: tuple[Figure, ...] = field(default=())

    def __post_init__(self):
        if not _ID.match(self.id):
            raise ValueError(
                f"section id {self.id!r} must start with a letter and hold only letters, digits, '-' and '_'"
            )

    @classmethod
    def from_blocks(cls, id: str, title: str, blocks: Sequence[Block]) -> "Section":
        """A section from paragraphs, notes, tables and figures, rendered the same way in both formats."""
        md, page, figures = [], [], []
        for b in blocks:
            if isinstance(b, Paragraph):
                md.append(b.text + "\n")
                page.append(f"<p>{html.escape(b.text)}</p>")
            elif isinstance(b, Note):
                md.append(f"_{b.text}_\n")
                page.append(f'<p class="note">{html.escape(b.text)}</p>')
            elif isinstance(b, Table):
                md.append(b.to_markdown())
                page.append(b.to_html())
            elif isinstance(b, Figure):
                md.append(b.to_markdown())
                page.append(b.to_html())
                figures.append(b)
            else:
                raise TypeError(f"not a report block: {b!r}")
        return cls(id, title, "\n".join(md), "\n".join(page), tuple(figures))
