"""A paper's claim, what we measured for it, and the verdict its family-wise adjusted p-value supports.

A claim is tested as the sign of one measured quantity against a null value (0 for a
difference). Each measure gives a p-value (its test's own, else read from its 95% interval) and
one paper's claims form one family: the p-values are Holm-adjusted and a claim *holds* when its
adjusted p is below 5% with the estimate on the side the paper predicts, *does not hold* when below
5% on the other side, and is *not separable at this budget* otherwise (also when nothing was
measured, or with no spread to judge by). No verdict is ever written by hand: each comes from
`judge_family`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from saelab.errors import ConfigError, DataError
from saelab.util.comparisons import Comparison, holm, p_from_interval
from saelab.util.intervals import NOT_SEPARABLE, Interval, format_interval

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
VERDICTS = (HOLDS, DOES_NOT_HOLD, NOT_SEPARABLE)
DIRECTIONS = (">", "<")
JSON_KEYS = ("claim", "paper", "ours", "ci", "verdict", "p", "p_adjusted", "measure", "paper_measure", "family")
FAMILY_ALPHA = 0.05  # family-wise error rate of one paper's claims (Holm)
EXTENSION = "saelab's extension, not the paper's reading: "  # prefix of a measure the paper did not make


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
    paper_measure: str | None = None  # what the paper computed for it (None: as its figure `paper` states)

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
    p: float | None = None  # the measure's p-value of the null (None: nothing measured)
    p_adjusted: float | None = None  # Holm-adjusted within the family
    family: str = ""  # the family it is adjusted in (the paper's name)

    def ours(self) -> str:
        """ "mean ± half-width" (the larger side of the 95% interval), or the reason there is none."""
        if self.interval is None:
            return f"– ({self.error})"
        return format_interval(self.interval)

    def to_json(self) -> dict:
        """The keys printed by --json: claim, paper, ours (the estimate), ci ([lo, hi]), verdict, p, p_adjusted, measure,
        paper_measure, family."""
        iv = self.interval
        num = lambda v: float(v) if v is not None and math.isfinite(v) else None
        return {
            "claim": self.claim.claim,
            "paper": self.claim.paper,
            "ours": None if iv is None else num(iv.estimate),
            "ci": None if iv is None else [num(iv.lo), num(iv.hi)],
            "verdict": self.verdict,
            "p": num(self.p),
            "p_adjusted": num(self.p_adjusted),
            "measure": self.claim.measure_text,
            "paper_measure": self.claim.paper_measure if self.claim.paper_measure is not None else self.claim.paper,
            "family": self.family,
        }

    def to_record(self) -> dict:
        """to_json plus how it was measured and the direction that counts as holding (claims.json)."""
        return {
            **self.to_json(),
            "holds_if": f"{self.claim.holds_if} {self.claim.null:g}",
            "interval": None if self.interval is None else self.interval.to_dict(),
            "error": self.error,
        }


def claim_p(iv: Interval, null: float = 0.0) -> float:
    """The measure's p-value of `null`: its test's own (Interval.p, a test of 0) or read from its 95% interval."""
    if iv.p is not None and null == 0.0:
        return float(iv.p)
    if iv.method == "single":
        return 1.0  # no spread was measured
    return p_from_interval(iv.estimate, iv.lo, iv.hi, null)


def evaluate_claim(claim: Claim, evidence: Evidence) -> ClaimResult:
    """Measure one claim, judged alone (a family of one); a measure that cannot be computed is reported, not raised."""
    return judge_family([measure_claim(claim, evidence)])[0]


def measure_claim(claim: Claim, evidence: Evidence) -> ClaimResult:
    """One claim's interval and raw p-value, not yet judged (verdict "not separable" until judge_family)."""
    try:
        iv = claim.measure(evidence)
    except DataError as e:
        return ClaimResult(claim, None, NOT_SEPARABLE, error=str(e))
    return ClaimResult(claim, iv, NOT_SEPARABLE, p=claim_p(iv, claim.null))


def judge_family(results: list[ClaimResult], family: str = "", alpha: float = FAMILY_ALPHA) -> list[ClaimResult]:
    """Holm-adjust the p-values of one family of claims and give each its verdict at family-wise `alpha`.

    Every claim counts in the family, an unmeasured one as p = 1 (so a partial run is no less strict).
    """
    adj = holm([r.p for r in results])
    out = []
    for r, q in zip(results, adj):
        v = NOT_SEPARABLE
        if r.interval is not None and r.p is not None and q < alpha and math.isfinite(r.interval.estimate):
            above = r.interval.estimate > r.claim.null
            v = HOLDS if above == (r.claim.holds_if == ">") else DOES_NOT_HOLD
        out.append(ClaimResult(r.claim, r.interval, v, r.error, r.p, None if r.p is None else q, family))
    return out


def evaluate_family(
    claims: list[Claim], evidence: Evidence, family: str = "", alpha: float = FAMILY_ALPHA
) -> list[ClaimResult]:
    """Measure every claim of one paper and judge them as one Holm family."""
    return judge_family([measure_claim(c, evidence) for c in claims], family, alpha)


def comparison_interval(c: Comparison, n: int) -> Interval:
    """The interval of a Comparison's difference a − b, as an Interval (n: the smaller side's seeds or units)."""
    return Interval(c.diff, c.lo, c.hi, int(n), c.method, p=c.p)


def claims_markdown(results: list[ClaimResult]) -> str:
    """The claims table: claim | paper's figure | ours (mean ± 95% CI) | p (Holm) | verdict."""
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    pf = lambda v: "–" if v is None else f"{v:.2g}"
    lines = ["| claim | paper's figure | ours (mean ± 95% CI) | p (Holm-adjusted) | verdict |", "|---|---|---|---|---|"]
    for r in results:
        ours = f"{r.ours()} — {r.claim.measure_text} ({r.claim.holds_if} {r.claim.null:g} holds)"
        lines.append(
            f"| “{cell(r.claim.claim)}” | {cell(r.claim.paper)} | {cell(ours)} | {pf(r.p)} ({pf(r.p_adjusted)}) | **{r.verdict}** |"
        )
    return "\n".join(lines) + "\n"
