"""The `saelab` command line: builds the parser from the command groups and applies shared options once."""

from __future__ import annotations

import argparse
import os
import sys

from saelab.commands import core, demo, features, hub, lm, othello, report, reproduce, scaling, sweep
from saelab.commands.common import set_threads
from saelab.errors import SaelabError
from saelab.training.interrupt import TrainingInterrupted
from saelab.util import distributed
from saelab.util.progress import quiet_library_bars

# Each group module exposes register(subparsers); the order is the order of `saelab --help`.
GROUPS = (core, sweep, report, scaling, features, demo, othello, lm, reproduce, hub)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one `saelab: error:` line (exit 2), like every other user error."""

    def error(self, message: str):
        """Print one line naming the problem and where help is, then exit 2."""
        self.exit(2, f"saelab: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full `saelab` parser."""
    parser = OneLineParser(prog="saelab", description="Train, compare and evaluate sparse autoencoders.")
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
        quiet_library_bars()
        return int(args.func(args) or 0)
    except SaelabError as e:
        print(f"saelab: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        if distributed.current().is_main:  # under torchrun every rank stops at the same step, with this same line
            print(f"saelab: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("saelab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) left: stop quietly, and keep the interpreter's final flush
        # from raising again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        # A full or read-only disk met outside the places that name it themselves: still one line, exit 2.
        print(f"saelab: error: {e.filename or 'output'}: {e.strerror or ' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
