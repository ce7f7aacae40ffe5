"""The OthelloGPT report's hyperparameter search, automated: screen cheaply, score the finalists, keep the best.

The report trained a batch of 8–16 guesses per method, "weeded out weaker candidates" by sparsity
and unexplained variance on held-out data, scored only the promising ones for good classifiers,
and kept the best. Here that is three stages, each resumable:

1. *screen* — every candidate setting of every method trains once (seed 0) at the budget's screen
   length, in one sweep without the costly board-state score (L0 and NMSE on held-out rows only);
2. *finalists* — within each method (sparsity read as L0 above ε, `l0_eps`, where the rows have it),
   candidates that collapsed (NMSE ≥ COLLAPSED_NMSE, or no
   active latent) are dropped, then those another candidate of the same method beats on both L0
   and NMSE (Pareto-dominated); at most `finalists` of the rest stay, spread along the front;
3. *score* — each finalist's screen SAE gets the board-state score; the method's best setting is
   the finalist with the most good classifiers; ties go to the higher mean over findable pairs of
   the best latent's AUROC (the count's continuous form: a short screen may leave every count near
   zero, and the lower NMSE, the tie-break until 2026-12-02, then picked the densest setting), then
   to the lower NMSE.

The chosen settings are then trained with every seed at the full length by the caller (the
`best` sweep of `sparsity_methods`). DIR/search/search.json records every candidate, why it was
dropped or kept, its score and the choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from saelab.errors import ConfigError, DataError
from saelab.experiments.reproduce.measures import target_measured_l0
from saelab.experiments.sweep import run_sweep
from saelab.formats.folder import load_sae, read_saelab_record
from saelab.sources.othello.source import OTHELLO_SCORE, BoardScore
from saelab.util import distributed
from saelab.util.atomic import atomic_write_json
from saelab.util.json_files import read_json_object

COLLAPSED_NMSE = 0.99  # a code that explains (almost) nothing is not a candidate, however sparse
SEARCH_FILE = "search.json"


@dataclass(frozen=True)
class Candidate:
    """One setting of one method to screen: `method` groups the candidates, `table` is its [[sae]] table."""

    method: str  # the role it competes for (e.g. "leaky"), not the activation's registry name
    table: dict  # an [[sae]] table with a unique "name"

    @property
    def name(self) -> str:
        """The candidate's sweep group name."""
        return str(self.table["name"])


@dataclass(frozen=True)
class Screened:
    """A candidate after the screen: its held-out L0 and NMSE, whether it is a finalist and why (not)."""

    candidate: Candidate
    l0: float | None
    nmse: float | None
    status: str  # "finalist", "collapsed", "dominated by NAME", "not kept (front had more than N)"
    folder: str | None = None  # the screen SAE's folder, relative to the screen sweep

    @property
    def finalist(self) -> bool:
        """Whether it goes on to the board-state score."""
        return self.status == "finalist"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def select_finalists(candidates: list[Candidate], rows: list[dict], per_method: int) -> list[Screened]:
    """The screen's verdict on each candidate (rows: the screen sweep's results, one seed)."""
    if per_method < 1:
        raise ConfigError("finalists", per_method, "must be ≥ 1")
    by_name = {r.get("group"): r for r in rows}
    out: dict[str, Screened] = {}
    methods: dict[str, list[Candidate]] = {}
    for c in candidates:
        methods.setdefault(c.method, []).append(c)
    for cands in methods.values():
        alive: list[tuple[Candidate, float, float, str | None]] = []
        for c in cands:
            r = by_name.get(c.name)
            if r is None:
                raise DataError(f"the screen has no result for candidate {c.name!r}")
            # Activations above ε (0.01) count, as in the report's sparsity: leaky and dimension-reduction
            # codes keep tiny values on every latent that plain L0 would count as dense; smoothed-L0's
            # above its own level (δ/2), where its target counts them.
            l0 = target_measured_l0(r)
            nmse = r.get("nmse")
            if not (_finite(l0) and _finite(nmse)) or l0 <= 0 or nmse >= COLLAPSED_NMSE:
                out[c.name] = Screened(
                    c, l0 if _finite(l0) else None, nmse if _finite(nmse) else None, "collapsed", r.get("folder")
                )
            else:
                alive.append((c, float(l0), float(nmse), r.get("folder")))
        front = []
        for c, l0, nmse, folder in alive:
            # Dominated: another candidate is at least as sparse and as accurate, and strictly better in one.
            better = [
                o
                for o, ol0, onmse, _ in alive
                if o is not c and ol0 <= l0 and onmse <= nmse and (ol0 < l0 or onmse < nmse)
            ]
            if better:
                out[c.name] = Screened(c, l0, nmse, f"dominated by {better[0].name}", folder)
            else:
                front.append((c, l0, nmse, folder))
        front.sort(key=lambda t: t[1])
        keep = _spread(len(front), per_method)
        for i, (c, l0, nmse, folder) in enumerate(front):
            status = "finalist" if i in keep else f"not kept (front had more than {per_method})"
            out[c.name] = Screened(c, l0, nmse, status, folder)
    return [out[c.name] for c in candidates]


def _spread(n: int, k: int) -> set[int]:
    """k indices of 0..n−1 spread evenly, both ends included (all of them when n ≤ k)."""
    if n <= k:
        return set(range(n))
    if k == 1:
        return {(n - 1) // 2}
    return {round(i * (n - 1) / (k - 1)) for i in range(k)}


def mean_best_auroc(score: dict) -> float | None:
    """Mean over the findable (square, state) pairs of the best single latent's AUROC, from an othello score record."""
    best, pairs = score.get("best_auroc"), score.get("findable_pairs")
    if not best or not pairs:
        return None
    values = [best[3 * sq + state] for sq, state in pairs]
    values = [v for v in values if _finite(v)]
    return sum(values) / len(values) if values else None


def choose_best(screened: list[Screened], scores: dict[str, dict]) -> dict[str, Candidate]:
    """Per method: the finalist with the most good classifiers among findable pairs (ties: the higher
    mean best AUROC over findable pairs, then the lower NMSE)."""
    best: dict[str, tuple[tuple[float, float, float], Candidate]] = {}
    for s in screened:
        if not s.finalist:
            continue
        score = scores.get(s.candidate.name)
        if score is None:
            raise DataError(f"finalist {s.candidate.name!r} has no board-state score")
        auroc = score.get("mean_best_auroc")
        key = (float(score["good_findable"]), float(auroc) if _finite(auroc) else -math.inf, -float(s.nmse))
        if s.candidate.method not in best or key > best[s.candidate.method][0]:
            best[s.candidate.method] = (key, s.candidate)
    return {m: c for m, (_, c) in best.items()}


@dataclass(frozen=True)
class SearchResult:
    """The screen's verdicts, the finalists' scores and the setting chosen for each method."""

    screened: list[Screened]
    scores: dict[str, dict]  # candidate name → {good_findable, findable, coverage}
    chosen: dict[str, Candidate]

    def to_record(self) -> dict:
        """search.json: every candidate with its screen numbers, verdict and score, then the choice per method."""
        cands = [
            {
                "method": s.candidate.method,
                "name": s.candidate.name,
                "table": s.candidate.table,
                "l0": s.l0,
                "nmse": s.nmse,
                "status": s.status,
                **({"score": self.scores[s.candidate.name]} if s.candidate.name in self.scores else {}),
            }
            for s in self.screened
        ]
        return {"candidates": cands, "chosen": {m: c.name for m, c in self.chosen.items()}}

    def markdown(self) -> str:
        """The search table: method | candidate | L0 | NMSE | screen | good classifiers and mean best AUROC (finalists) | chosen."""
        lines = [
            "| method | candidate | L0 | NMSE | screen | good / findable | mean best AUROC | chosen |",
            "|---|---|---|---|---|---|---|---|",
        ]
        fmt = lambda v, spec: format(v, spec) if _finite(v) else "–"  # noqa: E731
        for s in self.screened:
            sc = self.scores.get(s.candidate.name)
            good = f"{sc['good_findable']} / {sc['findable']}" if sc else ""
            auroc = fmt(sc.get("mean_best_auroc"), ".4f") if sc else ""
            mark = "**best**" if self.chosen.get(s.candidate.method) is s.candidate else ""
            lines.append(
                f"| {s.candidate.method} | {s.candidate.name} | {fmt(s.l0, '.1f')} | {fmt(s.nmse, '.4f')} | {s.status} | {good} | {auroc} | {mark} |"
            )
        return "\n".join(lines) + "\n"


def run_search(
    candidates: list[Candidate],
    shared: dict,
    root: Path,
    per_method: int,
    eval_opts: dict,
    say: Callable[[str], None] = print,
    progress: bool = False,
) -> SearchResult:
    """Screen every candidate (one seed, no board score), score the finalists, choose each method's best; resumable.

    `shared`: the screen sweep's shared keys (activations, training length, n_latents, …; its seed
    list is replaced by seed 0). `eval_opts`: the board-state score's games and n_boot.
    """
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ConfigError("candidates", names, "two candidates share a name")
    screen_root = root / "screen"
    cfg = {**shared, "seed": [0], "eval": {"board": False}, "sae": [c.table for c in candidates]}
    say(f"search: screening {len(candidates)} candidate settings (one seed, L0 and NMSE on held-out rows)")
    world = distributed.init_from_env()
    # Under torchrun the screen's SAEs are spread over the ranks, and so are the finalists' scores.
    rows = run_sweep(cfg, screen_root, resume=True, progress=progress, say=say, report=False, spread=True)
    screened = select_finalists(candidates, rows, per_method)
    finalists = [s for s in screened if s.finalist]
    say(f"search: {len(finalists)} finalists of {len(candidates)} get the board-state score")
    board_score = None
    for i, s in enumerate(finalists):
        folder = screen_root / str(s.folder)
        # One scored before a kill is kept: the score is a pure function of the saved SAE.
        if i % world.size == world.rank and not (folder / OTHELLO_SCORE).exists():
            if board_score is None:
                board_score = BoardScore(read_saelab_record(folder).get("source"), eval_opts, say)
            board_score(load_sae(folder), folder)  # writes OTHELLO_SCORE beside the SAE
    world.wait_for_all()
    scores: dict[str, dict] = {}
    for s in finalists:
        full = read_json_object(screen_root / str(s.folder) / OTHELLO_SCORE)
        scores[s.candidate.name] = {
            **{k: full.get(k) for k in ("good_findable", "findable", "good_classifiers", "coverage")},
            "mean_best_auroc": mean_best_auroc(full),
        }
    result = SearchResult(screened, scores, choose_best(screened, scores))
    if world.is_main:
        atomic_write_json(root / SEARCH_FILE, result.to_record())
    for m, c in result.chosen.items():
        say(
            f"search: {m} → {c.name} ({scores[c.name]['good_findable']} / {scores[c.name]['findable']} good classifiers at the screen)"
        )
    return result
