"""`saelab demo`: the README's main job."""

from __future__ import annotations

from saelab.config import require_positive_int
from saelab.demo import run_demo


def register(sub) -> None:
    """Add `demo` to the top-level subparsers."""
    p = sub.add_parser("demo", help="the main job: train several methods on the default source and compare them")
    p.add_argument("--quick", action="store_true", help="a short version for smoke tests")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--toy", action="store_true", help="use sparse toy data instead of OthelloGPT")
    p.add_argument("--seeds", type=int, default=1, help="seeds per method (intervals across seeds from 2 on)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    """Run the comparison and print its table."""

    require_positive_int("seeds", args.seeds)
    run_demo(out=args.out, quick=args.quick, toy=args.toy, seeds=args.seeds)
    return 0
