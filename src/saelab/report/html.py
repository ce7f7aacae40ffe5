"""One self-contained HTML page: inline CSS, figures as data URIs, no scripts and no external resources."""

from __future__ import annotations

from typing import Sequence

from saelab.report.section import Section
from saelab.util.templates import asset, environment


def render_html(title: str, sections: Sequence[Section], meta: Sequence[tuple[str, str]] = ()) -> str:
    """The whole page: title, a meta line per (label, value) such as the command and build time, contents, sections."""
    page = environment("saelab.report").get_template("report.html.j2")
    return page.render(title=title, sections=sections, meta=list(meta), css=asset("saelab.report", "report.css"))
