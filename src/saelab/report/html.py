"""One self-contained HTML page: inline CSS, figures as data URIs, no scripts and no external resources."""

from __future__ import annotations

from functools import cache
from typing import Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from saelab.report.section import Section


@cache
def _environment() -> Environment:
    # Autoescaping on: titles, meta values and section titles are user text; section bodies are built HTML.
    return Environment(
        loader=PackageLoader("saelab.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def render_html(title: str, sections: Sequence[Section], meta: Sequence[tuple[str, str]] = ()) -> str:
    """The whole page: title, a meta line per (label, value) such as the command and build time, contents, sections."""
    env = _environment()
    css = Markup(env.loader.get_source(env, "report.css")[0])  # the page's own stylesheet, unescaped
    page = env.get_template("report.html.j2")
    return page.render(title=title, sections=sections, meta=list(meta), css=css)
