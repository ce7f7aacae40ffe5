"""Why board-state pairs stay unfound: the findable pairs no single latent classifies, diagnosed.

A findable (square, state) pair is one a linear probe at the layer classifies (AUROC ≥ 0.9); it is
found when some single latent does. For each findable pair that is not found this module asks
whether the information is in the dictionary at all, and in what shape:

- `split`: the sum of two latents classifies it (AUROC ≥ 0.9) — the feature is split across
  latents (for example "mine" on a square by the move that flipped it), so a single-latent count
  misses it although the SAE holds it. Latents are scaled by their maximum on these positions before
  summing, so neither one dominates by units alone; candidates are each pair's `candidates`
  best single latents, every two of them tried.
- `inverse`: one latent classifies the pair's negation (AUROC ≤ 0.1, i.e. it fires where the pair
  does not hold): the dictionary holds the complement as a feature and the pair only as its absence.
- `complement`: the square's two other states are each classified by a latent, and minus their
  scaled sum classifies this one ("theirs" = neither empty nor mine) — encoded, but only by elimination.
- `near`: none of the above, but but the best single latent is ≥ `near` (0.8 by default): the
  direction is there, too noisy or too mixed with others to pass the threshold. (The kinds are
  tried in this order; the first that holds is the pair's.)
- `absent`: neither — no latent (or pair of latents) carries the pair with any precision; the probe
  reads it from directions the dictionary did not learn.

For split pairs `overlap` is the share of the pair's positive positions on which both latents of
the best two fire: near 0 means the two latents split the positives between them (two contexts of
one feature); near 1 means they fire together (two noisy copies of one direction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
import torch

from saelab.sources.othello.auroc import GOOD_AUROC, N_PAIRS, auroc_columns, pair_indicators

STATES = ("empty", "mine", "theirs")
CANDIDATES = 8
NEAR_AUROC = 0.8
KINDS = ("split", "inverse", "complement", "near", "absent")


@dataclass
class PairDiagnosis:
    """One findable pair that no single latent classifies."""

    square: int
    state: str
    best_latent: int
    best_auroc: float
    best_two: list[int]  # the two latents whose scaled sum classifies best
    best_two_auroc: float
    overlap: float  # share of the pair's positives on which both of the best two fire
    kind: str  # split | inverse | complement | near | absent
    inverse_auroc: float = float("nan")  # best AUROC of one latent read negatively (fires where the pair does not hold)
    complement_auroc: float = float(
        "nan"
    )  # AUROC of −(scaled sum of the best latents of the square's other two states)


@dataclass
class UnfoundReport:
    """The unfound findable pairs of one SAE, each diagnosed, with the counts per kind."""

    findable: int
    found: int  # findable pairs some single latent classifies
    unfound: int
    split: int  # unfound pairs a scaled sum of two latents classifies
    inverse: int
    complement: int
    near: int
    absent: int
    found_with_pairs: int  # found + split: the count if two-latent sums were allowed
    found_any_reading: int  # found + split + inverse + complement: pairs the dictionary encodes in some simple reading
    candidates: int
    threshold: float
    near_threshold: float
    by_state: dict = field(default_factory=dict)  # state → {split, near, absent}
    pairs: list[PairDiagnosis] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return asdict(self)

    def markdown(self) -> str:
        """A short table: counts per kind and state, then the unfound pairs, worst first."""
        lines = [
            f"findable {self.findable}, found by one latent {self.found}, unfound {self.unfound}: "
            f"split over two latents {self.split}, inverse {self.inverse}, complement {self.complement}, "
            f"near (best single ≥ {self.near_threshold}) {self.near}, absent {self.absent}; "
            f"allowing sums of two latents: {self.found_with_pairs} / {self.findable}; in any of these readings: "
            f"{self.found_any_reading} / {self.findable}",
            "",
            "| state | " + " | ".join(KINDS) + " |",
            "|---|" + "---|" * len(KINDS),
        ]
        for state, c in self.by_state.items():
            lines.append(f"| {state} | " + " | ".join(str(c[k]) for k in KINDS) + " |")
        lines += [
            "",
            "| square | state | best latent (AUROC) | best two (AUROC of sum) | overlap | inverse | complement | kind |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in sorted(self.pairs, key=lambda p: p.best_two_auroc):
            lines.append(
                f"| {p.square} | {p.state} | {p.best_latent} ({p.best_auroc:.3f}) | {p.best_two[0]}+{p.best_two[1]} "
                f"({p.best_two_auroc:.3f}) | {p.overlap:.2f} | {p.inverse_auroc:.3f} | {p.complement_auroc:.3f} | {p.kind} |"
            )
        return "\n".join(lines)


def _check(codes: torch.Tensor, labels: np.ndarray, auc: torch.Tensor, findable: np.ndarray) -> np.ndarray:
    """Validate shapes; the findable mask as bool [192]."""
    if codes.ndim != 2 or codes.shape[0] != len(labels):
        raise ValueError(f"codes.shape={tuple(codes.shape)}: expected [P, n] with P = {len(labels)} labelled positions")
    if tuple(auc.shape) != (codes.shape[1], N_PAIRS):
        raise ValueError(f"auroc.shape={tuple(auc.shape)}: expected [{codes.shape[1]}, {N_PAIRS}]")
    mask = np.asarray(findable, dtype=bool).reshape(-1)
    if mask.size != N_PAIRS:
        raise ValueError(f"findable size={mask.size}: expected {N_PAIRS}")
    return mask


def diagnose_unfound(
    codes,
    labels,
    auroc,
    findable,
    candidates: int = CANDIDATES,
    threshold: float = GOOD_AUROC,
    near: float = NEAR_AUROC,
) -> UnfoundReport:
    """Diagnose every findable pair without a single-latent classifier (codes [P, n], auroc [n, 192])."""
    if candidates < 2:
        raise ValueError(f"candidates={candidates}: need at least 2 latents to try sums of two")
    codes = torch.as_tensor(codes).float()
    auc = torch.nan_to_num(torch.as_tensor(auroc).float(), nan=-1.0)
    mask = _check(codes, labels, auc, findable)
    y = pair_indicators(labels)
    best_val, best_idx = auc.max(0)
    found = (best_val >= threshold).numpy()
    raw_auc = torch.as_tensor(auroc).float()
    # A latent read negatively: AUROC of −z is 1 − AUROC of z (NaN pairs stay out of reach).
    inverse_best = torch.nan_to_num(1.0 - raw_auc, nan=-1.0).max(0).values
    unfound = np.nonzero(mask & ~found)[0]
    scale = codes.amax(0).clamp_min(1e-12)  # a latent's maximum on these positions: sums compare shapes, not units
    m = min(candidates, codes.shape[1])
    pairs: list[PairDiagnosis] = []
    for p in unfound.tolist():
        cand = torch.topk(auc[:, p], m).indices
        combos = list(combinations(cand.tolist(), 2))
        scaled = codes[:, cand] / scale[cand]
        pos = {c: i for i, c in enumerate(cand.tolist())}
        sums = torch.stack([scaled[:, pos[a]] + scaled[:, pos[b]] for a, b in combos], dim=1)
        target = y[:, p : p + 1].expand(-1, len(combos))
        two = torch.nan_to_num(auroc_columns(sums, target), nan=-1.0)
        j = int(two.argmax())
        a, b = combos[j]
        positives = y[:, p] > 0
        both = ((codes[:, a] > 0) & (codes[:, b] > 0) & positives).sum()
        overlap = float(both) / max(int(positives.sum()), 1)
        two_auc = max(float(two[j]), float(best_val[p]))
        inverse = float(inverse_best[p])
        square = p - p % 3
        others = [square + t for t in range(3) if square + t != p]
        if all(found[o] for o in others):
            minus = -sum(codes[:, int(best_idx[o])] / scale[int(best_idx[o])] for o in others)
            complement = float(torch.nan_to_num(auroc_columns(minus.unsqueeze(1), y[:, p : p + 1]), nan=-1.0)[0])
        else:
            complement = float("nan")
        if two_auc >= threshold:
            kind = "split"
        elif inverse >= threshold:
            kind = "inverse"
        elif complement >= threshold:
            kind = "complement"
        else:
            kind = "near" if float(best_val[p]) >= near else "absent"
        pairs.append(
            PairDiagnosis(
                square=p // 3,
                state=STATES[p % 3],
                best_latent=int(best_idx[p]),
                best_auroc=round(float(best_val[p]), 4),
                best_two=[int(a), int(b)],
                best_two_auroc=round(two_auc, 4),
                overlap=round(overlap, 3),
                kind=kind,
                inverse_auroc=round(inverse, 4),
                complement_auroc=round(complement, 4),
            )
        )
    counts = {k: sum(1 for d in pairs if d.kind == k) for k in KINDS}
    by_state = {s: {k: sum(1 for d in pairs if d.kind == k and d.state == s) for k in KINDS} for s in STATES}
    n_found = int((mask & found).sum())
    return UnfoundReport(
        findable=int(mask.sum()),
        found=n_found,
        unfound=len(pairs),
        split=counts["split"],
        inverse=counts["inverse"],
        complement=counts["complement"],
        near=counts["near"],
        absent=counts["absent"],
        found_with_pairs=n_found + counts["split"],
        found_any_reading=n_found + counts["split"] + counts["inverse"] + counts["complement"],
        candidates=m,
        threshold=threshold,
        near_threshold=near,
        by_state=by_state,
        pairs=pairs,
    )


def diagnose_folder(folder, games: int = 2000, seed: int | None = None, candidates: int = CANDIDATES) -> UnfoundReport:
    """Diagnose a saved OthelloGPT SAE on held-out games (findable: probes cross-fitted on the same positions)."""
    from saelab.formats.folder import load_sae, read_saelab_record
    from saelab.sources.othello.auroc import auroc_matrix
    from saelab.sources.othello.held_out import held_out_data
    from saelab.sources.othello.score import latent_activations
    from saelab.util.progress import stage

    with stage(f"unfound: harvest {games} held-out games and their findable pairs (cross-fitted probes; cached)"):
        data, mask = held_out_data(read_saelab_record(folder).get("source"), games, seed)
    with stage("unfound: encode"):
        codes, _ = latent_activations(load_sae(folder), data.activations)
    with stage("unfound: AUROC of every latent"):
        auc = auroc_matrix(codes, data.labels)
    with stage("unfound: diagnose the unfound pairs"):
        return diagnose_unfound(codes.to_dense(), data.labels, auc, mask, candidates=candidates)
