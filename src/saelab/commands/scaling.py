"""`saelab scaling ...`: scaling-law fits of results.jsonl rows (fit) and the largest-stable-lr trend (lr)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from saelab.errors import ConfigError
from saelab.experiments.scaling import (
    FORMS,
    JOINT_PARAMS,
    JointFit,
    LrFit,
    PowerFit,
    fit_rows,
    group_by,
    largest_stable_lr,
    plot_fit,
    read_results,
)

X_CHOICES = ("n_latents", "tokens", "compute")
Y_CHOICES = ("nmse", "mse", "kl", "ce_delta", "tokens_to_convergence")


def _exclude(text: str) -> int | str:
    """--exclude: a non-negative integer or "auto"."""
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a non-negative integer nor 'auto'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _non_negative_int(text: str) -> int:
    """argparse type for counts that may be zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def register(subparsers: Any) -> None:
    """Add the `scaling` command and its sub-commands (fit, lr) to the top-level saelab parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser("scaling", help="scaling-law fits of results.jsonl files", formatter_class=fmt)
    sub = p.add_subparsers(dest="scaling_command", metavar="{fit,lr}")
    sub.required = True

    f = sub.add_parser(
        "fit", help="fit y = a x^b (+ e), or the joint L(n, k), with bootstrap intervals", formatter_class=fmt
    )
    f.add_argument("results", nargs="+", metavar="RESULTS.jsonl", help="one JSON object per SAE")
    f.add_argument("--x", choices=X_CHOICES, default="n_latents", help="compute reads the rows' flops")
    f.add_argument("--y", choices=Y_CHOICES, default="nmse", help="quantity fitted against --x")
    f.add_argument("--by", default=None, metavar="KEY", help="fit each value of this key separately (k: params.k)")
    f.add_argument(
        "--form", choices=FORMS, default="power+const", help="joint: L(n,k) with n from --x and k from params.k"
    )
    f.add_argument(
        "--exclude",
        type=_exclude,
        default=0,
        metavar="N|auto",
        help="drop the N smallest sizes, or auto: drop off-trend smallest sizes (at most a third)",
    )
    f.add_argument("--n-boot", type=_non_negative_int, default=500, help="bootstrap resamples of the points (0: none)")
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    f.add_argument("--plot", default=None, metavar="FILE", help="also write a log-log PNG of points and fits")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=cmd_fit)

    lr = sub.add_parser(
        "lr", help="largest stable learning rate per n_latents and its power-law trend", formatter_class=fmt
    )
    lr.add_argument("results", nargs="+", metavar="RESULTS.jsonl", help="rows of an lr sweep")
    lr.add_argument("--y", choices=Y_CHOICES, default="nmse", help="quality measure compared to the best at each n")
    lr.add_argument("--tolerance", type=float, default=1.5, help="stable: y at most this multiple of the best at n")
    lr.add_argument("--n-boot", type=_non_negative_int, default=500, help="bootstrap resamples of the points (0: none)")
    lr.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    lr.add_argument("--json", action="store_true", help="print one JSON object")
    lr.set_defaults(func=cmd_lr)


def _g(v: float | None) -> str:
    """Compact number for tables."""
    if v is None or not math.isfinite(v):
        return "–"
    if float(v).is_integer() and abs(v) < 1e7:
        return str(int(v))  # sizes and counts read better whole
    return f"{v:.4g}"


def _ci_text(ci) -> str:
    """[lo, hi] for tables."""
    lo, hi = ci
    return f"[{_g(lo)}, {_g(hi)}]"


def _table(header: list[str], lines: list[list[str]]) -> str:
    """Left-aligned columns."""
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


def _fit_table(fits: dict[str, PowerFit | JointFit], by: str | None) -> str:
    """Readable summary of the fits, one row per group (joint: one row per parameter)."""
    first = next(iter(fits.values()))
    group = by or "group"
    if isinstance(first, JointFit):
        blocks = []
        for label, r in fits.items():
            head = (f"{group}={label}: " if by else "") + (
                f"{r.n_points} points, {len(r.excluded_n)} excluded, {r.n_skipped} skipped, "
                f"log-residual RMS {_g(r.residual_rms)}"
            )
            lines = [
                [name, _g(getattr(r, name)), _ci_text((r.intervals[name].lo, r.intervals[name].hi))]
                for name in JOINT_PARAMS
            ]
            blocks.append(head + "\n" + _table(["parameter", "estimate", "95% interval"], lines))
        return "\n\n".join(blocks)
    lines = []
    for label, r in fits.items():
        iv = r.intervals
        irr = (
            "0"
            if r.form == "power"
            else f"{_g(r.irreducible)} {_ci_text((iv['irreducible'].lo, iv['irreducible'].hi))}"
        )
        if r.irreducible_at_bound:
            irr += " (at min y)"
        lines.append(
            [
                label,
                str(r.n_points),
                str(len(r.excluded_x)),
                str(r.n_skipped),
                f"{_g(r.coefficient)} {_ci_text((iv['coefficient'].lo, iv['coefficient'].hi))}",
                f"{_g(r.exponent)} {_ci_text(r.exponent_ci)}",
                irr,
                _g(r.residual_rms),
            ]
        )
    text = _table(
        [group, "points", "excluded", "skipped", "coefficient", "exponent [95%]", "irreducible", "rms(log)"], lines
    )
    if any(getattr(r, "irreducible_at_bound", False) for r in fits.values()):
        text += (
            "\n(at min y): the irreducible term ran into the smallest y, so the points show no floor of their"
            " own; the power form may describe them better"
        )
    return text


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit the chosen form per group and print a table or one JSON object."""
    rows = read_results(args.results)
    fits = fit_rows(
        rows, args.x, args.y, by=args.by, form=args.form, exclude=args.exclude, n_boot=args.n_boot, seed=args.seed
    )
    if args.plot:
        plot_fit(fits, rows, args.plot)
    if args.json:
        out = {
            "files": list(args.results),
            "x": args.x,
            "y": args.y,
            "form": args.form,
            "by": args.by,
            "exclude": args.exclude,
            "n_boot": args.n_boot,
            "seed": args.seed,
            "n_rows": len(rows),
            "groups": {label: r.to_dict() for label, r in fits.items()},
        }
        if args.by is not None:
            out["n_rows_without_by"] = len(group_by(rows, args.by).get("none", []))
        if args.plot:
            out["plot"] = args.plot
        print(json.dumps(out, allow_nan=False))
    else:
        print(
            f"{args.y} vs {args.x}, form {args.form}, {len(rows)} rows, 95% case-bootstrap intervals "
            f"({args.n_boot} resamples)"
        )
        print(_fit_table(fits, args.by))
        if args.by is not None and group_by(rows, args.by).get("none"):
            print(f"{len(group_by(rows, args.by)['none'])} row(s) without {args.by} were not fitted")
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _lr_text(res: LrFit) -> str:
    """Readable lr sweep summary."""
    lines = [
        [
            _g(p.n_latents),
            _g(p.lr_max) + (" (largest tried)" if p.censored else ""),
            f"{p.n_stable}/{p.n_runs}",
            _g(p.best),
        ]
        for p in res.points
    ]
    f = res.fit
    if res.inverse_sqrt_in_ci is None:
        trend = f"lr_max = {_g(f.coefficient)} * n^{_g(f.exponent)} (no interval without bootstrap resamples)"
    else:
        verdict = "consistent with" if res.inverse_sqrt_in_ci else "not consistent with"
        trend = (
            f"lr_max = {_g(f.coefficient)} * n^{_g(f.exponent)}, exponent 95% interval {_ci_text(f.exponent_ci)}: "
            f"{verdict} the paper's 1/sqrt(n) (exponent -0.5)"
        )
    return "\n".join(
        [
            _table(["n_latents", "largest stable lr", "stable/runs", "best"], lines),
            "",
            trend,
        ]
        + ([f"{res.n_skipped} row(s) skipped (no n_latents or lr)"] if res.n_skipped else [])
        + (
            ["sizes marked (largest tried) are lower bounds: the sweep did not reach an unstable lr"]
            if any(p.censored for p in res.points)
            else []
        )
    )


def cmd_lr(args: argparse.Namespace) -> int:
    """Largest stable lr per size, its power-law fit, and whether -1/2 lies in the exponent's interval."""
    if not (math.isfinite(args.tolerance) and args.tolerance >= 1.0):
        raise ConfigError("--tolerance", args.tolerance, "must be a number >= 1")
    rows = read_results(args.results)
    res = largest_stable_lr(rows, y_key=args.y, tolerance=args.tolerance, n_boot=args.n_boot, seed=args.seed)
    if args.json:
        print(
            json.dumps(
                {"files": list(args.results), "y": args.y, "tolerance": args.tolerance, **res.to_dict()},
                allow_nan=False,
            )
        )
    else:
        print(_lr_text(res))
    return 0
