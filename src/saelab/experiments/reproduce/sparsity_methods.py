"""The OthelloGPT report "Alternative sparsity methods for sparse autoencoders with OthelloGPT":
every sparsity method at one matched L0, scored by the board-state pairs single latents classify."""

from __future__ import annotations

from pathlib import Path

from saelab.experiments.reproduce.budget import Budget
from saelab.experiments.reproduce.claims import Claim
from saelab.experiments.reproduce.measures import difference

NAME = "sparsity-methods"
TITLE = "Alternative sparsity methods for sparse autoencoders with OthelloGPT"
PAPER_FILE = "alternative-sparsity-methods-othellogpt.txt"
SWEEP = "methods"
LEAKY_EPS = 0.05  # relative leak; the README's sweep found ε = 0.2 worse and 0.5 almost dense on our model


def names(b: Budget) -> dict[str, str]:
    """Readable configuration names (the sweep's groups) by role."""
    t = b.target_l0
    return {"none": "relu no penalty", "l1": f"relu+l1 L0 {t}", "sl0": f"smoothed_l0 L0 {t}", "fresh": f"freshman L0 {t}",
            "wtk": f"without_topk L0 {t}", "leaky": f"leaky_topk eps{LEAKY_EPS:g} L0 {t}", "topk": f"topk L0 {t}",
            "dimred": f"dimred L0 {t}", "dimred_half": f"dimred L0 {t // 2}"}


def sweeps(b: Budget, data: Path, lm: Path | None = None) -> dict[str, dict]:
    """One sweep on OthelloGPT: the report's methods (full budget: also BatchTopK, JumpReLU, Multi-TopK) at target L0."""
    n, t = names(b), b.target_l0
    tables = [
        {"name": n["none"], "method": "relu"},
        {"name": n["l1"], "method": "relu", "penalty": "l1", "target_l0": t},
        {"name": n["sl0"], "method": "relu", "penalty": "smoothed_l0", "eps": 0.01, "target_l0": t},
        {"name": n["fresh"], "method": "relu", "penalty": "freshman", "p": 2.0, "target_l0": t},
        {"name": n["wtk"], "method": "relu", "penalty": "without_topk", "k": t, "p": 1, "target_l0": t},
        {"name": n["leaky"], "method": "leaky_topk", "eps": LEAKY_EPS, "target_l0": t},
        {"name": n["topk"], "method": "topk", "target_l0": t},  # ε = 0 without AuxK, as the report trained it
        {"name": n["dimred"], "method": "dimred", "p_threshold": 10, "target_l0": t},
        {"name": n["dimred_half"], "method": "dimred", "p_threshold": 10, "target_l0": t // 2},
    ]
    if b.name == "full":
        tables += [
            {"name": f"batchtopk L0 {t}", "method": "batchtopk", "target_l0": t, "auxk": True},
            {"name": f"jumprelu L0 {t}", "method": "jumprelu", "target_l0": t},
            {"name": f"multi_topk L0 {t}", "method": "multi_topk", "target_l0": t},
        ]
    return {SWEEP: {"activations": str(data), **b.training(), "n_latents": b.n_latents,
                    "eval": {"games": b.eval_games, "n_boot": b.n_boot}, "sae": tables}}


def claims(b: Budget, lm: bool = False) -> list[Claim]:
    """The report's findings: the ranking against L1, ε > 0 and dead latents, dimension reduction at lower L0."""
    n, t = names(b), b.target_l0
    good = "good classifiers / findable pairs"
    return [
        Claim("I also trained another SAE without sparsity loss; it found only one good classifier",
              "L1: 29 good classifiers, no sparsity loss: 1",
              f"{good}: ReLU+L1 (L0 {t}) − ReLU without penalty", difference(SWEEP, n["l1"], n["none"], "good_findable"), ">"),
        Claim("Leaky top-k activation takes the cake with 45 good classifiers, compared to L1 sparsity loss's 29",
              "45 vs 29 (+16)", f"{good}: leaky TopK ε={LEAKY_EPS:g} − ReLU+L1, matched L0 {t}",
              difference(SWEEP, n["leaky"], n["l1"], "good_findable"), ">"),
        Claim("smoothed-L0 sparsity loss ... performed significantly better [than L1]", "38 vs 29 (+9)",
              f"{good}: smoothed-L0 − ReLU+L1, matched L0 {t}", difference(SWEEP, n["sl0"], n["l1"], "good_findable"), ">"),
        Claim("dimension reduction activation ... performed significantly better [than L1]", "43 vs 29 (+14)",
              f"{good}: dimension reduction − ReLU+L1, matched L0 {t}", difference(SWEEP, n["dimred"], n["l1"], "good_findable"), ">"),
        Claim("Out of those trained with ϵ=0 ..., the best one found 34 good classifiers", "leaky (ε>0) 45 vs TopK (ε=0) 34 (+11)",
              f"{good}: leaky TopK − TopK, matched L0 {t}", difference(SWEEP, n["leaky"], n["topk"], "good_findable"), ">"),
        Claim("all of the SAEs trained with ϵ>0 had no dead neurons, whereas all of the SAEs trained with ϵ=0 had a significant number",
              "dead: 0% (ε>0) vs 15.1% (ε=0, k=85)", "dead fraction: leaky TopK − TopK (no AuxK)",
              difference(SWEEP, n["leaky"], n["topk"], "dead_fraction"), "<"),
        Claim("the best SAEs using this method had much lower sparsity and higher unexplained variance",
              "dimred 43 at 3.8% active, 18.5% unexpl. var. (L1: 29)",
              f"{good}: dimension reduction at L0 {t // 2} − ReLU+L1 at L0 {t}",
              difference(SWEEP, n["dimred_half"], n["l1"], "good_findable"), ">"),
        Claim("[dimension reduction's best had] higher unexplained variance than the best SAEs trained with other methods",
              "18.5% vs 7.7–13.2%", f"NMSE: dimension reduction at L0 {t // 2} − leaky TopK at L0 {t}",
              difference(SWEEP, n["dimred_half"], n["leaky"], "nmse"), ">"),
    ]
