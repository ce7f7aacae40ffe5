"""The main job: train several sparsity methods on one stream and compare them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.io import atomic_write_json
from saelab.report import markdown_table, plot_frontier, write_markdown


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
    from saelab.data.toy import ToyConfig, write_toy
    from saelab.evals.reconstruction import evaluate_store
    from saelab.data.store import ActivationStore
    from saelab.train import Trainer

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
    store = ActivationStore(paths["activations"])
    rows = []
    for m in members:
        r = evaluate_store(m.sae, store, trainer.eval_range, dictionary=dictionary).to_dict()
        rows.append({"name": m.cfg.display_name(), "label": m.cfg.display_name(), "method": m.cfg.method, "params": {**m.cfg.method_params, **m.cfg.penalty_params}, **{k_: v for k_, v in r.items() if not isinstance(v, dict)}})
    return rows


def run_demo(out: str | Path = "runs/demo", quick: bool = False, toy: bool = False) -> list[dict]:
    """Run the comparison, write results.json, results.md and plots to `out`, print the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = run_toy_demo(out, quick)
    columns = [("name", "SAE"), ("l0", "L0"), ("nmse", "NMSE"), ("explained_variance", "expl. var."), ("dead_fraction", "dead"), ("dense_fraction", "dense"), ("mmcs", "MMCS")]
    table = markdown_table(rows, columns)
    atomic_write_json(out / "results.json", rows)
    write_markdown(out / "results.md", f"# saelab demo (toy data, known dictionary)\n\nMetrics on held-out rows; {time.time() - start:.0f} s.\n\n{table}\n![frontier](frontier.png)\n")
    plot_frontier(rows, out / "frontier.png", label="name", title="Toy data: sparsity vs reconstruction")
    print()
    print(table)
    print(f"results in {out}/ (results.json, results.md, frontier.png)")
    _ = json
    return rows
