"""A paper's claim, what we measured for it, and the verdict its 95% interval supports.

A claim is tested as the sign of one measured quantity against a null value (0 for a
difference): it *holds* when the whole interval lies on the side the paper predicts, *does not
hold* when the whole interval lies on the other side, and is *not separable at this budget* when
the interval covers the null value or has no spread to judge by (a single seed, an unbounded
interval). No verdict is ever written by hand: each comes from `verdict(interval, ...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from saelab.errors import ConfigError, DataError
from saelab.util.intervals import NOT_SEPARABLE, Comparison, Interval, format_interval

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
VERDICTS = (HOLDS, DOES_NOT_HOLD, NOT_SEPARABLE)
DIRECTIONS = (">", "<")
JSON_KEYS = ("claim", "paper", "ours", "ci", "verdict")


@dataclass(frozen=True)
class Evidence:
    """What the measures read: the results rows of each sweep and its folder."""

    rows: Mapping[str, list[dict]]
    roots: Mapping[str, Path] = field(default_factory=dict)

    def sweep(self, name: str) -> list[dict]:
        """The rows of one sweep (DataError when the sweep did not run)."""
        if name not in self.rows:
            raise DataError(f"no results for sweep {name!r} (have: {', '.join(sorted(self.rows)) or 'none'})")
        return self.rows[name]


@dataclass(frozen=True)
class Claim:
    """One headline claim: its words, the paper's number, and how ours is measured and judged."""

    claim: str  # quoted from the paper, short
    paper: str  # the paper's figure for it
    measure_text: str  # what `measure` returns, in words (e.g. "NMSE BatchTopK − TopK, k = 32")
    measure: Callable[[Evidence], Interval]
    holds_if: str = ">"  # the claim holds when the measured quantity lies above (">") or below ("<") null
    null: float = 0.0

    def __post_init__(self):
        if self.holds_if not in DIRECTIONS:
            raise ConfigError("holds_if", self.holds_if, "must be '>' or '<'")
        if not math.isfinite(self.null):
            raise ConfigError("null", self.null, "must be a finite number")


def verdict(iv: Interval, holds_if: str, null: float = 0.0) -> str:
    """holds / does not hold / not separable at this budget, from where [lo, hi] lies against null."""
    if holds_if not in DIRECTIONS:
        raise ConfigError("holds_if", holds_if, "must be '>' or '<'")
    if iv.method == "single" or not (math.isfinite(iv.lo) and math.isfinite(iv.hi)):
        return NOT_SEPARABLE  # no spread was measured: nothing to separate by
    above, below = iv.lo > null, iv.hi < null
    if not (above or below):
        return NOT_SEPARABLE
    return HOLDS if above == (holds_if == ">") else DOES_NOT_HOLD


@dataclass(frozen=True)
class ClaimResult:
    """A claim with the interval we measured and the verdict it supports (or why it has none)."""

    claim: Claim
    interval: Interval | None
    verdict: str
    error: str | None = None  # why nothing was measured (a verdict of "not separable" then)

    def ours(self) -> str:
        """"mean ± half-width" (the larger side of the 95% interval), or the reason there is none."""
        if self.interval is None:
            return f"– ({self.error})"
        return format_interval(self.interval)

    def to_json(self) -> dict:
        """The five keys printed by --json: claim, paper, ours (the estimate), ci ([lo, hi]), verdict."""
        iv = self.interval
        num = lambda v: float(v) if v is not None and math.isfinite(v) else None
        return {
            "claim": self.claim.claim,
            "paper": self.claim.paper,
            "ours": None if iv is None else num(iv.estimate),
            "ci": None if iv is None else [num(iv.lo), num(iv.hi)],
            "verdict": self.verdict,
        }

    def to_record(self) -> dict:
        """to_json plus what was measured, how, and the direction that counts as holding (claims.json)."""
        return {**self.to_json(), "measure": self.claim.measure_text, "holds_if": f"{self.claim.holds_if} {self.claim.null:g}",
                "interval": None if self.interval is None else self.interval.to_dict(), "error": self.error}


def evaluate_claim(claim: Claim, evidence: Evidence) -> ClaimResult:
    """Measure one claim; a measure that cannot be computed (missing or degenerate data) is reported, not raised."""
    try:
        iv = claim.measure(evidence)
    except DataError as e:
        return ClaimResult(claim, None, NOT_SEPARABLE, error=str(e))
    return ClaimResult(claim, iv, verdict(iv, claim.holds_if, claim.null))


def comparison_interval(c: Comparison, n: int) -> Interval:
    """The interval of a Comparison's difference a − b, as an Interval (n: the smaller side's seeds or units)."""
    return Interval(c.diff, c.lo, c.hi, int(n), c.method)


def claims_markdown(results: list[ClaimResult]) -> str:
    """The claims table: claim | paper's figure | ours (mean ± 95% CI) | verdict."""
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| claim | paper's figure | ours (mean ± 95% CI) | verdict |", "|---|---|---|---|"]
    for r in results:
        ours = f"{r.ours()} — {r.claim.measure_text} ({r.claim.holds_if} {r.claim.null:g} holds)"
        lines.append(f"| “{cell(r.claim.claim)}” | {cell(r.claim.paper)} | {cell(ours)} | **{r.verdict}** |")
    return "\n".join(lines) + "\n"
