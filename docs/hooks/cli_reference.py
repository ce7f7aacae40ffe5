"""MkDocs hook: one reference page per `saelab` command, generated from the argparse parsers at build time.

The pages are never committed, so a flag's name, default and help cannot drift from the code.
"""

from __future__ import annotations

import argparse

from mkdocs.structure.files import File

from saelab.cli import build_parser

SECTION = "reference"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """The sub-parsers of a parser with their one-line help, in registration order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    """A table of a parser's arguments: flags, default, help (expanded as `--help` prints it)."""
    formatter = parser._get_formatter()
    rows = ["| argument | default | what it does |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}` (positional)"
        if action.option_strings and action.nargs != 0 and action.metavar:
            names += f" `{action.metavar}`"
        default = action.default
        shown = "" if default in (None, argparse.SUPPRESS, False) else f"`{default}`"
        help_text = formatter._expand_help(action) if action.help else ""
        if action.choices and not isinstance(action.choices, dict):
            help_text += " (one of: " + ", ".join(f"`{c}`" for c in action.choices) + ")"
        rows.append(f"| {names} | {_cell(shown)} | {_cell(help_text)} |")
    return rows if len(rows) > 2 else []


def _section(parser: argparse.ArgumentParser, words: str, level: int, summary: str) -> list[str]:
    """The Markdown for one command and, below it, each of its sub-commands."""
    out = [f"{'#' * level} `{words}`", ""]
    for text in dict.fromkeys(t for t in (summary, parser.description) if t):
        out += [text, ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    out += _options_table(parser)
    out.append("")
    for name, (sub, help_text) in _subcommands(parser).items():
        out += _section(sub, f"{words} {name}", min(level + 1, 4), help_text)
    return out


def pages() -> dict[str, str]:
    """Page path → Markdown, one page per top-level command plus an index."""
    root = build_parser()
    result: dict[str, str] = {}
    index = [
        "# Command reference",
        "",
        "Generated from the `saelab` argument parsers when the site is built: what `--help` says.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for name, (sub, help_text) in _subcommands(root).items():
        body = _section(sub, f"saelab {name}", 1, help_text)
        result[f"{SECTION}/{name}.md"] = "\n".join(body) + "\n"
        index.append(f"| [`saelab {name}`]({name}.md) | {_cell(help_text)} |")
    result[f"{SECTION}/index.md"] = "\n".join(index) + "\n"
    return result


def on_files(files, config):
    """Add the generated reference pages to the site."""
    for path, text in pages().items():
        files.append(File.generated(config, path, content=text))
    return files
