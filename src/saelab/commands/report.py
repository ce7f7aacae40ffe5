"""`saelab report DIR [DIR ...] --out REPORT_DIR`: one Markdown and one self-contained HTML report from sweep folders."""

from __future__ import annotations

import shlex
from typing import Any

from saelab.report import build_report


def cmd_report(args) -> int:
    """Build the report and print where its files are."""
    options = {"title": args.title} if args.title else {}
    command = shlex.join(
        ["saelab", "report", *args.dirs, "--out", args.out, *(["--title", args.title] if args.title else [])]
    )
    paths = build_report(args.dirs, args.out, command=command, **options)
    print(f"wrote {paths.html} (self-contained)")
    print(f"wrote {paths.markdown} with {len(paths.figures)} PNG figures in {paths.out}")
    return 0


def register(subparsers: Any) -> None:
    """Add the `report` command to the top-level saelab subparsers."""
    p = subparsers.add_parser(
        "report", help="summarize sweep folders (results.jsonl) as report.md and a self-contained report.html"
    )
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="sweep output folder holding results.jsonl, or a run folder of `saelab train` / `lm train` (several: their rows are pooled)",
    )
    p.add_argument(
        "--out", required=True, metavar="REPORT_DIR", help="folder for report.md, report.html and the PNG figures"
    )
    p.add_argument("--title", default=None, help="page title (default: 'SAE sweep report')")
    p.set_defaults(func=cmd_report)
