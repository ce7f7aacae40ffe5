"""`saelab reproduce NAME [--budget quick|full] [--model PATH_OR_NAME] [--out DIR] [--json] [--layer L] [--epochs E]`: check a paper's claims."""

from __future__ import annotations

import sys

from saelab.experiments.reproduce.budget import BUDGETS
from saelab.experiments.reproduce.claims import claims_markdown
from saelab.experiments.reproduce.run import DEFAULT_TEXT, PAPERS, claims_json, run_reproduce
from saelab.util import distributed


def register(sub) -> None:
    """Add `reproduce` to the top-level subparsers."""
    p = sub.add_parser(
        "reproduce", help="run a paper's headline experiments and say which of its claims hold (claims.md, claims.json)"
    )
    p.add_argument("name", choices=list(PAPERS), help="the paper: " + ", ".join(PAPERS))
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="quick",
        help="quick: a smoke version (≤ 15 min on 2 cores; may say 'not separable'); full: hours, resumes if killed",
    )
    p.add_argument(
        "--model",
        default=None,
        help="also run the language-model claims on this model (name or path, e.g. the SmolLM2 GGUF of docs/offline_lm.md) "
        "or on an activation cache folder from `saelab lm activations`",
    )
    p.add_argument(
        "--text",
        default=DEFAULT_TEXT,
        help=f"text to harvest --model on (default {DEFAULT_TEXT}, docs/offline_lm.md step 2)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for data, sweeps and claims (default runs/reproduce/NAME-BUDGET); rerun to resume",
    )
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="OthelloGPT residual stream after this block (default 3, the report's choice; 1 and 2 find the most pairs here)",
    )
    p.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="passes over the training games (default: the budget's; full makes one, the OthelloGPT report made 4); "
        "the output folder gets the suffix -eE",
    )
    p.add_argument(
        "--json", action="store_true", help="print the claims as JSON: a list of {claim, paper, ours, ci, verdict}"
    )
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args) -> int:
    """Run the reproduction and print its claims table (or JSON)."""
    results = run_reproduce(
        args.name,
        budget=args.budget,
        out=args.out,
        model=args.model,
        text=args.text,
        say=lambda m: print(f"[reproduce] {m}", file=sys.stderr, flush=True),
        progress=args.progress,
        layer=args.layer,
        epochs=args.epochs,
    )
    if distributed.current().is_main:  # under torchrun rank 0 holds the claims
        print(claims_json(results) if args.json else claims_markdown(results))
    return 0
