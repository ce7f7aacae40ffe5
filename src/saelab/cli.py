"""The `saelab` command line: builds the parser from the command groups and applies shared options once."""

from __future__ import annotations

import argparse
import os
import sys

from saelab.commands import core, demo, lm, othello
from saelab.commands.common import set_threads
from saelab.errors import SaelabError

# Each group module exposes register(subparsers); the order is the order of `saelab --help`.
GROUPS = (core, demo, othello, lm)


def build_parser() -> argparse.ArgumentParser:
    """The full `saelab` parser."""
    parser = argparse.ArgumentParser(prog="saelab", description="Train, compare and evaluate sparse autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a sub-command; user errors become one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        set_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)
    except SaelabError as e:
        print(f"saelab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saelab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) left: stop quietly, and keep the interpreter's final flush
        # from raising again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
