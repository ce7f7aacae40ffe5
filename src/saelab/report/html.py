"""One self-contained HTML page: inline CSS, figures as data URIs, no scripts and no external resources."""

from __future__ import annotations

import html
from typing import Sequence

from saelab.report.section import Section

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --rule: #d9dde5; --band: #f5f7fa; --accent: #2457a6; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1100px; padding: 1.5rem 1.5rem 4rem; color: var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.7rem; margin: 0 0 .3rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 1px solid var(--rule); }
a { color: var(--accent); }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--band);
       padding: .1rem .3rem; border-radius: 3px; word-break: break-all; }
.meta { color: var(--muted); margin: 0 0 1rem; }
nav { background: var(--band); border: 1px solid var(--rule); border-radius: 6px; padding: .6rem 1.2rem; display: inline-block; }
nav h2 { font-size: 1rem; border: 0; margin: 0 0 .2rem; padding: 0; }
nav ol { margin: 0; padding-left: 1.3rem; }
.note { color: var(--muted); font-style: italic; }
.table-wrap { overflow-x: auto; margin: .6rem 0 1rem; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid var(--rule); text-align: left; white-space: nowrap; }
thead th { background: var(--band); border-bottom: 2px solid var(--rule); position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.win { color: #1b6e3a; font-weight: 600; }
td.tie { color: var(--muted); }
figure { margin: 1rem 0 1.5rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--rule); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: .3rem; }
"""


def render_html(title: str, sections: Sequence[Section], meta: Sequence[tuple[str, str]] = ()) -> str:
    """The whole page: title, a meta line per (label, value) such as the command and build time, contents, sections."""
    meta_html = "".join(f'<p class="meta">{html.escape(k)}: <code>{html.escape(v)}</code></p>' for k, v in meta)
    toc = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "\n".join(f'<section id="{s.id}">\n<h2>{html.escape(s.title)}</h2>\n{s.html}\n</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{html.escape(title)}</h1>\n{meta_html}</header>\n"
        f'<nav id="contents"><h2>Contents</h2><ol>{toc}</ol></nav>\n'
        f"{body}\n</body>\n</html>\n"
    )
