"""The main job: train several sparsity methods on one stream and compare them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.data.toy import ToyConfig, write_toy
from saelab.evals.evaluate import evaluate
from saelab.io import atomic_write_json
from saelab.othello.boards import plot_boards
from saelab.othello.harvest import HarvestConfig, harvest, write_harvest
from saelab.othello.score import EVAL_SEED_OFFSET, findable_mask, score_sae
from saelab.report import markdown_table, plot_frontier, write_markdown
from saelab.train import Trainer


def toy_suite(k: int, n_latents: int) -> list[SAEConfig]:
    """One SAE per sparsity method at comparable sparsity (penalty coefficients tuned to L0 ≈ k on toy data)."""
    lr = 2e-3
    return [
        SAEConfig(n_latents=n_latents, method="relu", penalty="l1", alpha=0.05, lr=lr, name="relu+l1"),
        SAEConfig(n_latents=n_latents, method="relu", penalty="lp", penalty_params={"p": 0.5}, alpha=0.04, lr=lr, name="relu+l1(sqrt)"),
        SAEConfig(n_latents=n_latents, method="relu", penalty="smoothed_l0", penalty_params={"delta": 0.5}, alpha=1.0, lr=lr, name="relu+smoothed_l0"),
        SAEConfig(n_latents=n_latents, method="topk", method_params={"k": k}, auxk=True, dead_tokens=50_000, lr=lr, name=f"topk k={k}"),
        SAEConfig(n_latents=n_latents, method="batchtopk", method_params={"k": k}, auxk=True, dead_tokens=50_000, lr=lr, name=f"batchtopk k={k}"),
        SAEConfig(n_latents=n_latents, method="leaky_topk", method_params={"k": k, "eps": 0.01}, lr=lr, name=f"leaky_topk k={k}"),
        SAEConfig(n_latents=n_latents, method="multi_topk", method_params={"k": k}, lr=lr, name=f"multi_topk k={k}"),
        SAEConfig(n_latents=n_latents, method="dimred", method_params={"p": 0.15, "p_threshold": 10}, lr=lr, name="dimred"),
        SAEConfig(n_latents=n_latents, method="jumprelu", method_params={"l0_coef": 0.02}, lr=lr, name="jumprelu"),
    ]


def run_toy_demo(out: Path, quick: bool) -> list[dict]:
    """Sparse-superposition data with a known dictionary; every method, one pass, MMCS against the truth."""

    toy = ToyConfig(n_features=256, d=64, n_samples=40_000 if quick else 200_000, mean_active=5.0, decay=1.0, noise=0.02, seed=0)
    paths = write_toy(toy, out / "data")
    k = 5
    run = RunConfig(
        TrainConfig(activations=str(paths["activations"]), out=str(out / "saes"), batch_size=512, epochs=1.0 if quick else 2.0, log_every=50),
        toy_suite(k, n_latents=512),
    )
    trainer = Trainer(run, progress=True)
    members = trainer.fit(overwrite=True)
    dictionary = torch.from_numpy(np.load(paths["dictionary"]))
    rows = []
    for m in members:
        r = evaluate(m.sae, trainer.store, rows=trainer.eval_range, true_dictionary=dictionary, scan=False).to_dict()
        rows.append({"name": m.cfg.display_name(), "label": m.cfg.display_name(), "method": m.cfg.method, "params": {**m.cfg.method_params, **m.cfg.penalty_params}, **{k_: v for k_, v in r.items() if not isinstance(v, dict)}})
    return rows


OTHELLO_COLUMNS = [
    ("name", "SAE"),
    ("l0", "L0"),
    ("nmse", "NMSE"),
    ("dead_fraction", "dead"),
    ("found", "good classifiers / findable"),
    ("good_classifier_latents", "good latents"),
    ("coverage", "coverage"),
]


@dataclass
class OthelloDemoPlan:
    """Sizes of the OthelloGPT demo (quick: a smoke test; full: the README's main job)."""

    train_games: int
    eval_games: int
    n_latents: int
    k: int
    l1_alphas: tuple[float, ...]
    steps: int
    batch_size: int
    leaky_eps: float  # bound on leaky TopK's non-top entries (relative form: each stays below ε)


# Sizes chosen by a sweep on this testbed (README; run on the previous model checkpoint): at 1,500
# steps × 2,048 or k = 10 almost no latent reaches AUROC 0.9; at 3,000 steps (≈ 6 epochs of 20k
# games) TopK at k = 32 found ~21 pairs, k = 20 found 8, k = 64 found 15, and 512 latents did as
# well as 1,024 in half the time.
QUICK = OthelloDemoPlan(train_games=1500, eval_games=400, n_latents=256, k=32, l1_alphas=(0.5,), steps=150, batch_size=1024, leaky_eps=0.05)
FULL = OthelloDemoPlan(train_games=20_000, eval_games=2000, n_latents=512, k=32, l1_alphas=(0.5, 2.0), steps=3000, batch_size=2048, leaky_eps=0.05)


def othello_suite(plan: OthelloDemoPlan) -> list[SAEConfig]:
    """ReLU+L1 (one SAE per coefficient), TopK, BatchTopK and leaky TopK at the same k, all scalar-normalized."""
    common = dict(n_latents=plan.n_latents, normalize="scalar", lr=1e-3)
    saes = [SAEConfig(method="relu", penalty="l1", alpha=a, name=f"relu+l1 α={a:g}", **common) for a in plan.l1_alphas]
    saes += [
        SAEConfig(method="topk", method_params={"k": plan.k}, auxk=True, dead_tokens=200_000, name=f"topk k={plan.k}", **common),
        SAEConfig(method="batchtopk", method_params={"k": plan.k}, auxk=True, dead_tokens=200_000, name=f"batchtopk k={plan.k}", **common),
        SAEConfig(method="leaky_topk", method_params={"k": plan.k, "eps": plan.leaky_eps}, name=f"leaky_topk k={plan.k} ε={plan.leaky_eps:g}", **common),
    ]
    return saes


def run_othello_demo(out: Path, quick: bool) -> list[dict]:
    """Harvest the committed OthelloGPT, train the suite on one stream, score every SAE on held-out games."""

    plan = QUICK if quick else FULL
    say = lambda msg: print(f"[demo] {msg}", flush=True)
    say(f"harvesting {plan.train_games} games from the committed OthelloGPT")
    train_data = harvest(HarvestConfig(games=plan.train_games, seed=0))
    write_harvest(train_data, out / "data")
    say(f"{len(train_data.activations):,} positions × d_model {train_data.activations.shape[1]} (layer {train_data.source['layer']}); training {len(othello_suite(plan))} SAEs on one stream")
    run = RunConfig(
        TrainConfig(activations=str(out / "data"), out=str(out / "saes"), batch_size=plan.batch_size, steps=plan.steps, log_every=25, eval_fraction=0.02),
        othello_suite(plan),
    )
    trainer = Trainer(run, progress=True)
    members = trainer.fit(overwrite=True)
    say(f"scoring on {plan.eval_games} held-out games")
    eval_data = harvest(HarvestConfig(games=plan.eval_games, seed=EVAL_SEED_OFFSET))
    findable = findable_mask(int(train_data.source["layer"]))
    rows = []
    for m in members:
        score = score_sae(m.sae, trainer.source, data=eval_data, findable=findable)
        row = {"name": m.cfg.display_name(), "method": m.cfg.method, "params": {**m.cfg.method_params, **m.cfg.penalty_params, **({"alpha": m.cfg.alpha} if m.cfg.penalty else {})}}
        row.update(score.to_dict())
        row["found"] = f"{score.good_classifiers} / {score.findable}"
        rows.append(row)
        say(f"{row['name']}: L0 {score.l0:.1f}, NMSE {score.nmse:.3f}, good classifiers {score.good_classifiers}/{score.findable}, coverage {score.coverage:.3f}")
    plot_boards(rows, out / "boards.png")
    return rows


def run_demo(out: str | Path = "runs/demo", quick: bool = False, toy: bool = False) -> list[dict]:
    """Run the comparison, write results.json, results.md and plots to `out`, print the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if toy:
        rows = run_toy_demo(out, quick)
        columns = [("name", "SAE"), ("l0", "L0"), ("nmse", "NMSE"), ("explained_variance", "expl. var."), ("dead_fraction", "dead"), ("dense_fraction", "dense"), ("mmcs", "MMCS")]
        title, pictures = "saelab demo (toy data, known dictionary)", "![frontier](frontier.png)\n"
    else:
        rows = run_othello_demo(out, quick)
        columns = OTHELLO_COLUMNS
        title, pictures = "saelab demo: SAEs on OthelloGPT, scored by board-state recovery", "![frontier](frontier.png)\n\n![boards](boards.png)\n"
    table = markdown_table(rows, columns)
    atomic_write_json(out / "results.json", rows)
    note = "Metrics on held-out data, in each SAE's normalized input space"
    write_markdown(out / "results.md", f"# {title}\n\n{note}; {time.time() - start:.0f} s on this machine.\n\n{table}\n{pictures}")
    plot_frontier(rows, out / "frontier.png", label="name", title=title)
    print()
    print(table)
    print(f"results in {out}/ (results.json, results.md, frontier.png{'' if toy else ', boards.png'}) after {time.time() - start:.0f} s")
    return rows
