"""`saelab sweep CONFIG.toml --out DIR [--resume]`: a grid of SAEs trained on shared batches, evaluated, reported."""

from __future__ import annotations

import sys

from saelab.devices import DEVICES, DTYPES
from saelab.experiments.sweep import run_sweep
from saelab.util import distributed
from saelab.util.loggers import LOGGERS


def register(sub) -> None:
    """Add `sweep` to the top-level subparsers."""
    p = sub.add_parser(
        "sweep",
        help="train a grid of SAEs (lists in a train config expand), evaluate each, write results.jsonl and a report",
    )
    p.add_argument(
        "config", help="TOML in the format of `saelab train --config`; SAE parameters and `seed` may be lists"
    )
    p.add_argument("--out", required=True, help="sweep folder: runs/, results.jsonl, report/")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed sweep: finished SAEs are kept, a killed run resumes from its checkpoint",
    )
    p.add_argument(
        "--max-memory-gb",
        type=float,
        default=None,
        help="memory budget for SAEs trained together (default: half of free RAM)",
    )
    p.add_argument("--no-report", action="store_true", help="skip building report/ at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--device",
        metavar="{" + ",".join(DEVICES) + "}",
        default=None,
        help="where every run trains (default: the config's, else cpu)",
    )
    p.add_argument(
        "--dtype",
        metavar="{" + ",".join(DTYPES) + "}",
        default=None,
        help="compute precision of every run (default: the config's, else float32)",
    )
    p.add_argument(
        "--log",
        metavar="{" + ",".join(LOGGERS) + "}",
        default=None,
        help="also send each SAE's metrics to an experiment logger",
    )
    p.add_argument(
        "--spread-over-ranks",
        action="store_true",
        help="under torchrun: each rank trains its own share of the SAEs on the same batches, instead of every part data-parallel",
    )
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    """Run the sweep and say where its results are."""
    rows = run_sweep(
        args.config,
        args.out,
        resume=args.resume,
        max_memory_gb=args.max_memory_gb,
        progress=not args.no_progress,
        say=lambda m: print(f"[sweep] {m}", file=sys.stderr, flush=True),
        report=not args.no_report,
        device=args.device,
        dtype=args.dtype,
        log=args.log,
        spread=args.spread_over_ranks,
    )
    if distributed.current().is_main:  # torchrun: rank 0 wrote the results
        print(f"{len(rows)} SAEs → {args.out}/results.jsonl")
    return 0
