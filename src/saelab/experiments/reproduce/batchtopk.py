"""The BatchTopK post: top k·B over the batch instead of top k per token, at equal L0 (both with AuxK)."""

from __future__ import annotations

from pathlib import Path

from saelab.experiments.reproduce.budget import Budget
from saelab.experiments.reproduce.claims import Claim
from saelab.experiments.reproduce.measures import difference

NAME = "batchtopk"
TITLE = "BatchTopK"
PAPER_FILE = "batchtopk.txt"
# The full budget's games, one pass (4.9 M positions) instead of four: its claims compare reconstruction at
# matched L0 (BatchTopK and TopK compared on the same batches), and one pass keeps `--budget full` within a few hours here.
FULL_OVERRIDES = {"epochs": 1.0}  # replaces the full budget's fields for this paper
SWEEP = "topk-vs-batchtopk"
LM_SWEEP = "lm-topk-vs-batchtopk"


def settings(b: Budget) -> list[tuple[int, int]]:
    """(k, n_latents) pairs: the matched L0 at two dictionary sizes, and half of it at the larger size."""
    t, small, big = b.target_l0, b.n_latents // 2, b.n_latents * 2
    return [(t, small), (t, big), (max(1, t // 2), big)]


def _tables(pairs: list[tuple[int, int]]) -> list[dict]:
    return [
        {"name": f"{m} k{k} n{n}", "method": m, "k": k, "n_latents": n, "auxk": True, "dead_tokens": 200_000}
        for k, n in pairs
        for m in ("topk", "batchtopk")
    ]


def sweeps(b: Budget, data: Path, lm: Path | None = None) -> dict[str, dict]:
    """TopK and BatchTopK (AuxK, as the post) at each setting on OthelloGPT; at k = L0 on --model's cache when given."""
    out = {SWEEP: {"activations": str(data), **b.training(), "eval": {"board": False}, "sae": _tables(settings(b))}}
    if lm is not None:
        lm_cfg = b.lm_training(lm)
        out[LM_SWEEP] = {**lm_cfg, "sae": _tables([(b.target_l0, lm_cfg["n_latents"])])}
    return out


def _claim(sweep: str, k: int, n: int, where: str, text: str, paper: str) -> Claim:
    return Claim(
        text,
        paper,
        f"NMSE: BatchTopK − TopK, k={k}, n={n}, both at L0 above ε within ±10% of {k} on every seed ({where})",
        difference(sweep, f"batchtopk k{k} n{n}", f"topk k{k} n{n}", "nmse", match_l0=True, target=k),
        "<",
        paper_measure="normalized MSE of BatchTopK and TopK SAEs trained at the same k (BatchTopK's inference threshold "
        "set to give that L0)",
    )


def claims(b: Budget, lm: bool = False) -> list[Claim]:
    """BatchTopK has lower NMSE than TopK at equal L0, across dictionary sizes and k."""
    fixed_l0 = (
        "For a fixed number of active features (L0=32) the BatchTopK SAE has a lower normalized MSE than the TopK SAE"
    )
    fixed_n = "for fixed dictionary size (12288) BatchTopK outperforms TopK for different values of k"
    paper_l0 = "lower NMSE at L0 32, expansion 4–32 (GPT-2 small L8)"
    (t, small), (_, big), (half, _) = settings(b)
    out = [
        _claim(SWEEP, t, small, "OthelloGPT", fixed_l0, paper_l0),
        _claim(SWEEP, t, big, "OthelloGPT", fixed_l0, paper_l0),
        _claim(SWEEP, half, big, "OthelloGPT", fixed_n, "lower NMSE at k 16, 32, 64 (n 12288)"),
    ]
    if lm:
        out.append(_claim(LM_SWEEP, t, b.lm_latents, "--model", fixed_l0, paper_l0))
    return out
