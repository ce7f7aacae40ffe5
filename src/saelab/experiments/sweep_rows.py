"""What a sweep records about each SAE: its results row and the evaluations its data source adds (board score, CE/KL)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from saelab.errors import ConfigError
from saelab.experiments.grid import (
    PlannedSAE,
)
from saelab.util.atomic import atomic_write_json

OTHELLO_SCORE = "othello_score.json"


def _finite(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _row(planned: PlannedSAE, folder: Path, root: Path, record: dict) -> dict[str, Any]:
    """The results.jsonl row of one trained SAE from its saelab.json record (reconstruction part)."""
    cfg = planned.cfg
    saved = record.get("sae", {})
    ev = record.get("eval", {})
    params = {**saved.get("method_params", {}), **saved.get("penalty_params", {})}
    if saved.get("penalty"):
        params.update(penalty=saved["penalty"], alpha=saved.get("alpha"))
    row = {
        "name": planned.name,
        "group": planned.group,
        "method": cfg.method,  # the activation; a penalty and its alpha are in params
        "params": params,
        "n_latents": cfg.n_latents,
        "seed": planned.seed,
        "varied": planned.varied,
        "target_l0": cfg.target_l0,
        "lr": saved.get("lr") or cfg.effective_lr,
        "l0": ev.get("l0"),
        "l0_eps": ev.get("l0_eps"),
        "eps_l0": ev.get("eps_l0"),
        **({"l0_level": ev["l0_level"], "level": ev.get("level")} if ev.get("l0_level") is not None else {}),
        "nmse": ev.get("nmse"),
        "mse": ev.get("mse"),
        "explained_variance": ev.get("explained_variance"),
        "cos_sim": ev.get("cos_sim"),
        "dead_fraction": ev.get("dead_fraction"),
        "dead_fraction_eps": ev.get("dead_fraction_eps"),
        "dense_fraction": ev.get("dense_fraction"),
        "tokens": record.get("tokens"),
        "steps": record.get("steps"),
        "flops": record.get("flops"),
        "folder": str(folder.relative_to(root)),
        "init_hash": record.get("init_hash"),  # distinct seeds: distinct initial weights ...
        "data_order_hash": record.get("data_order_hash"),  # ... and distinct batch orders
        "ci": dict(ev.get("ci") or {}),
        # The row-block bootstrap's SE of NMSE (issue 31: comparisons add each SAE's evaluation noise).
        "nmse_eval_se": _ci_se((ev.get("ci") or {}).get("nmse")),
    }
    if record.get("target_l0"):
        row["coefficient"] = record["target_l0"]
    if record.get("convergence"):
        row["tokens_to_convergence"] = record.get("tokens_to_convergence")  # None: the budget ran out first
    return {k: _finite(v) for k, v in row.items()}


def _ci_se(ci) -> float | None:
    """Standard error read off a 95% bootstrap interval dict: (hi − lo) / (2 · 1.96); None without one."""
    if not isinstance(ci, dict) or ci.get("lo") is None or ci.get("hi") is None:
        return None
    return (float(ci["hi"]) - float(ci["lo"])) / (2.0 * 1.959963984540054)


class Evaluators:
    """The held-out evaluations a source allows, set up once per sweep and shared by every SAE."""

    def __init__(self, source: dict | None, options: dict[str, Any], say: Callable[[str], None]):
        self.source = source or {}
        self.options = options
        self.say = say
        self._othello = None
        self._lm = None

    def othello(self, sae, folder: Path) -> dict[str, Any]:
        """Board-state score on held-out games (harvested once, findable pairs fitted once)."""
        from saelab.sources.othello.bootstrap import findable_on_positions
        from saelab.sources.othello.harvest import config_from_source, harvest
        from saelab.sources.othello.score import EVAL_SEED_OFFSET, score_sae

        if self._othello is None:
            games = int(self.options.get("games", 2000))
            self.say(f"harvesting {games} held-out games for the board-state score")
            # games_seed: another draw of held-out games (a search's choice is then scored on games it never saw).
            seed = int(self.source.get("seed", 0)) + EVAL_SEED_OFFSET + int(self.options.get("games_seed", 0))
            data = harvest(config_from_source(self.source, games=games, seed=seed))
            self._othello = (data, findable_on_positions(data.activations, data.labels, data.positions[:, 0]))
        data, findable = self._othello
        s = score_sae(
            sae, self.source, data=data, findable=findable, n_boot=int(self.options.get("n_boot", 200))
        ).to_dict()
        atomic_write_json(folder / OTHELLO_SCORE, s)  # the full score (per-pair AUROC, pairs found) beside the SAE
        keys = (
            "good_classifiers",
            "good_findable",
            "findable",
            "good_classifier_latents",
            "coverage",
            "good_classifiers_frac",
            "count_method",
            "good_classifiers_naive",
            "good_findable_naive",
            "coverage_naive",
            "good_classifiers_eval_se",
            "good_findable_eval_se",
            "coverage_eval_se",
        )
        return {
            **{k: s[k] for k in keys},
            "ci": {k: v for k, v in s["ci"].items() if k.startswith("good") or k == "coverage"},
        }

    def lm(self, sae) -> dict[str, Any]:
        """Downstream CE/KL with the SAE spliced into the recorded model, on text after the harvested windows."""
        from saelab.sources.lm.downstream import evaluate_downstream
        from saelab.sources.lm.model import LMSpec, load_lm
        from saelab.sources.lm.text import TextConfig, take_windows

        src = self.source
        if self._lm is None:
            model = self.options.get("model", src.get("model"))
            text = self.options.get("text", str(src.get("text_source", "")).split(" [")[0])
            if not model or not text:
                raise ConfigError(
                    "eval.text",
                    text,
                    "downstream evaluation needs the model and text (recorded in the cache, or [eval] model/text)",
                )
            lm = load_lm(LMSpec(model))
            opts = src.get("options") or {}
            context = int(src.get("context", 64))
            skip = int(self.options.get("skip_windows", (src.get("cursor") or {}).get("windows", 0)))
            n_windows = max(1, int(self.options.get("tokens", 4096)) // context)
            text_cfg = TextConfig(text, context, bool(opts.get("prepend_bos", True)))
            batches = take_windows(lm.tokenizer, text_cfg, int(self.options.get("batch_size", 8)), n_windows, skip=skip)
            self._lm = (lm, lm.site(int(src["layer"]), src["site"]), batches, opts.get("outlier_factor"))
        lm, site, batches, outliers = self._lm
        r = evaluate_downstream(lm, site, sae, batches, outliers).to_dict()
        out = {k: r.get(k) for k in ("ce_clean", "ce_sae", "ce_zero", "ce_recovered_zero", "ce_recovered_mean", "kl")}
        if out["ce_sae"] is not None and out["ce_clean"] is not None:
            out["ce_delta"] = out["ce_sae"] - out["ce_clean"]
        return out

    def extra(self, sae, folder: Path) -> dict[str, Any]:
        """Every evaluation beyond reconstruction that this source and the [eval] options call for."""
        if self.source.get("source") == "othello":
            # `board = false`: a sweep that claims only reconstruction skips the costly board-state score.
            return self.othello(sae, folder) if self.options.get("board", True) else {}
        if self.options.get("downstream") and self.source.get("site"):
            return self.lm(sae)
        return {}
