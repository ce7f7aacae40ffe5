"""Run one paper's reproduction: prepare the data, run (or resume) its sweeps, judge its claims, write
DIR/claims.md and DIR/claims.json."""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Callable

from saelab.errors import ConfigError
from saelab.experiments.reproduce import batchtopk, l1_sqrt, scaling_laws, sparsity_methods
from saelab.experiments.reproduce.budget import DEFAULT_LAYER, Budget, lm_data, othello_data
from saelab.experiments.reproduce.budget import budget as get_budget
from saelab.experiments.reproduce.claims import FAMILY_ALPHA, ClaimResult, Evidence, claims_markdown, evaluate_family
from saelab.experiments.reproduce.clock import WallClock, describe
from saelab.experiments.sweep import run_sweep
from saelab.formats.folder import read_saelab_record
from saelab.report.summary import summarize
from saelab.util import distributed
from saelab.util.atomic import atomic_write_json, atomic_write_text
from saelab.util.intervals import format_interval

PAPERS: dict[str, ModuleType] = {m.NAME: m for m in (sparsity_methods, scaling_laws, l1_sqrt, batchtopk)}
DEFAULT_TEXT = "data/sword.txt"  # docs/offline_lm.md, step 2
SUMMARY_COLUMNS = (
    ("l0", "L0"),
    ("l0_eps", "L0 (>ε)"),
    ("nmse", "NMSE"),
    ("dead_fraction", "dead"),
    ("dead_fraction_eps", "dead (>ε)"),
    ("good_findable", "good / findable"),
    ("coverage", "coverage"),
    ("l2_ratio", "L2 ratio"),
)


def paper(name: str) -> ModuleType:
    """The paper module called `name` (ConfigError naming the choices otherwise)."""
    if name not in PAPERS:
        raise ConfigError("name", name, f"must be one of {', '.join(PAPERS)}")
    return PAPERS[name]


def _with_l2_ratio(rows: list[dict], root: Path) -> list[dict]:
    """Rows with the held-out L2 ratio (in saelab.json, not in results.jsonl) added."""
    out = []
    for r in rows:
        ev = read_saelab_record(root / r["folder"]).get("eval") or {}
        out.append({**r, "l2_ratio": ev.get("l2_ratio")})
    return out


def run_reproduce(
    name: str,
    budget: str | Budget = "quick",
    out: str | Path | None = None,
    model: str | None = None,
    text: str = DEFAULT_TEXT,
    say: Callable[[str], None] = print,
    progress: bool = False,
    layer: int | None = None,
    epochs: float | None = None,
) -> list[ClaimResult]:
    """Run (or resume) paper `name` at `budget` into `out`; write claims.md / claims.json; return the judged claims.

    `layer`: harvest OthelloGPT after this block instead of the budget's (the report's layer 3).
    `epochs`: passes over the training games instead of the budget's length (`full` makes one; the
    OthelloGPT report made four), for every sweep and the search's screen (its share of it).

    Under torchrun every sweep's SAEs (and the search's finalist scores) are spread over the ranks:
    a reproduction is many small SAEs, which one process each trains faster than all processes
    together. Rank 0 harvests and writes the claims; the other ranks return no claims.
    """
    world = distributed.init_from_env()
    if not world.is_main:
        say = lambda message: None  # noqa: E731 — rank 0 reports
    mod = paper(name)
    b = budget.validate() if isinstance(budget, Budget) else get_budget(budget)  # a Budget object: tests' smaller sizes
    b, changed = adjusted_budget(mod, b, layer, epochs)
    root = Path(out) if out is not None else Path("runs") / "reproduce" / f"{name}-{b.name}{folder_suffix(changed)}"
    if model and not hasattr(mod, "LM_SWEEP"):
        lm_papers = ", ".join(n for n, m in PAPERS.items() if hasattr(m, "LM_SWEEP"))
        raise ConfigError("model", model, f"{name} makes no language-model claim; --model applies to {lm_papers}")
    if model and not (Path(model) / "manifest.json").exists() and not Path(text).exists():
        # Checked before any harvesting or training, so a typo costs nothing.
        raise ConfigError("text", text, "no such text file to harvest --model on (docs/offline_lm.md, step 2)")
    root.mkdir(parents=True, exist_ok=True)
    # Rank 0 times the run, adding to the time of the runs it resumes.
    with WallClock(root) if world.is_main else contextlib.nullcontext() as clock:
        return _reproduce(
            world, mod, b, root, model, text, rerun_command(name, b, changed, model), say, progress, clock
        )


def _reproduce(
    world,
    mod: ModuleType,
    b: Budget,
    root: Path,
    model: str | None,
    text: str,
    command: str,
    say: Callable[[str], None],
    progress: bool,
    clock: WallClock | None,
) -> list[ClaimResult]:
    """run_reproduce's body: harvest, search, sweep, judge and write (`clock` is rank 0's, None elsewhere)."""
    data = world.on_main(lambda: othello_data(b, root / "data" / "othello", say))
    lm = (
        lm_data(b, model, text, root / "data" / "lm", say) if model else None
    )  # a harvest under torchrun is shared by the ranks
    rows, roots = {}, {}
    # A paper whose settings were searched for (the OthelloGPT report) runs its search first; the
    # chosen settings become one more sweep over every seed.
    found = mod.search(b, data, root / "search", say=say, progress=progress) if hasattr(mod, "search") else None
    plans = mod.sweeps(b, data, lm, search=found) if found is not None else mod.sweeps(b, data, lm)
    results: list[ClaimResult] = []
    for i, (sweep_name, cfg) in enumerate(plans.items()):
        roots[sweep_name] = root / "sweeps" / sweep_name
        say(f"sweep {sweep_name}: {len(cfg['sae'])} configurations × {b.seeds} seeds")
        # resume=True both starts a new sweep and continues a killed one (same config, same folder).
        got = run_sweep(cfg, roots[sweep_name], resume=True, progress=progress, say=say, report=False, spread=True)
        if world.is_main:  # rank 0 judges the claims
            rows[sweep_name] = _with_l2_ratio(got, roots[sweep_name])
            # Judged after every sweep: a run stopped before its last sweep still leaves the claims its finished ones support.
            results = _judge(
                mod, b, root, rows, roots, found, lm is not None, clock, command, pending=list(plans)[i + 1 :]
            )
    return results


def _judge(
    mod: ModuleType,
    b: Budget,
    root: Path,
    rows: dict[str, list[dict]],
    roots: dict[str, Path],
    found,
    lm: bool,
    clock: WallClock,
    command: str,
    pending: list[str],
) -> list[ClaimResult]:
    """Judge the claims on the sweeps finished so far (`pending`: those still to run) and write claims.md / .json."""
    rows, roots, notes = {k: list(v) for k, v in rows.items()}, dict(roots), []
    for target, links in (mod.reused(b, found) if found is not None and hasattr(mod, "reused") else {}).items():
        roots.setdefault(target, root / "sweeps" / target)
        rows.setdefault(target, [])
        for group, source, source_group in links:
            if source not in rows:
                continue  # its source sweep has not run yet
            rows[target] += [
                _renamed(r, group, roots[source], roots[target]) for r in rows[source] if r["group"] == source_group
            ]
            notes.append(
                f"`{group}` of sweep `{target}` is `{source_group}` of sweep `{source}` (the same setting and training, not trained twice)."
            )
    results = evaluate_family(mod.claims(b, lm=lm), Evidence(rows, roots), family=mod.NAME)
    write_claims(root, mod, b, results, rows, clock.segments, command, found, notes, pending)
    return results


def _renamed(row: dict, group: str, source_root: Path, target_root: Path) -> dict:
    """A results row of one sweep as a row of group `group` in another (its folder relative to the other's root)."""
    folder = os.path.relpath(source_root / row["folder"], target_root)
    return {**row, "name": f"{group}-s{row['seed']}", "group": group, "folder": folder}


def check_layer(layer: int) -> None:
    """ConfigError unless `layer` is a residual-stream site of the committed OthelloGPT (0 = embeddings … n_layer)."""
    from saelab.sources.othello.model import load_default_model

    n_layer = load_default_model().cfg.n_layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n_layer:
        raise ConfigError(
            "layer", layer, f"must lie in 0..{n_layer} (0 = embeddings, i = after block i of the committed OthelloGPT)"
        )


def adjusted_budget(
    mod: ModuleType, b: Budget, layer: int | None = None, epochs: float | None = None
) -> tuple[Budget, dict[str, float]]:
    """The budget paper `mod` runs with (its own full length, `--layer`, `--epochs`), and the options that
    make it differ from the paper's default at that budget ({"layer": L} and/or {"epochs": E})."""
    if b.name == "full":
        b = replace(b, **getattr(mod, "FULL_OVERRIDES", {}))  # e.g. one pass instead of the report's four
    changed: dict[str, float] = {}
    if layer is not None and layer != b.layer:
        check_layer(layer)
        b = replace(b, layer=int(layer))
    if b.layer != DEFAULT_LAYER:
        changed["layer"] = b.layer
    if epochs is not None:
        check_epochs(epochs)
        if b.steps is not None or float(epochs) != b.epochs:
            b = replace(b, steps=None, epochs=float(epochs))
            changed["epochs"] = float(epochs)
    return b, changed


def folder_suffix(changed: dict[str, float]) -> str:
    """The default output folder's suffix for non-default options: another layer or length is another result."""
    return "".join(f"-layer{v:g}" if k == "layer" else f"-e{v:g}" for k, v in changed.items())


def rerun_command(name: str, b: Budget, changed: dict[str, float], model: str | None) -> str:
    """The command line that reruns (or resumes) this reproduction."""
    opts = "".join(f" --{k} {v:g}" for k, v in changed.items())
    return f"saelab reproduce {name} --budget {b.name}{opts}" + (f" --model {model}" if model else "")


def check_epochs(epochs) -> None:
    """ConfigError unless `epochs` is a positive, finite number of passes."""
    ok = isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and math.isfinite(epochs) and epochs > 0
    if not ok:
        raise ConfigError(
            "epochs", epochs, "must be a positive number of passes over the training games (e.g. 4, the report's)"
        )


def summary_markdown(rows: list[dict]) -> str:
    """Per-configuration table: mean ± 95% CI over seeds of the metrics the claims read."""
    groups = summarize(rows)
    cols = [(k, h) for k, h in SUMMARY_COLUMNS if any(k in g.metrics for g in groups)]
    lines = ["| SAE | seeds | " + " | ".join(h for _, h in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for g in groups:
        lines.append(
            f"| {g.group} | {g.n_seeds} | " + " | ".join(format_interval(g.metrics.get(k)) for k, _ in cols) + " |"
        )
    return "\n".join(lines) + "\n"


def write_claims(
    root: Path,
    mod: ModuleType,
    b: Budget,
    results: list[ClaimResult],
    rows: dict[str, list[dict]],
    segments: list[dict],
    command: str,
    search=None,
    notes: list[str] = (),
    pending: list[str] = (),
) -> None:
    """DIR/claims.md (the claims table, each sweep's per-configuration table, the search's table) and DIR/claims.json.

    `segments`: the wall time of every run that built the result ({started, seconds}, DIR/time.json);
    `pending`: sweeps not run yet (the claims that read them say "no results" until they have).
    """
    seconds = sum(s["seconds"] for s in segments)
    md = [
        f"# {mod.TITLE}: claims at the {b.name} budget",
        "",
        f"`{command}` — {describe(segments)} on this machine. {training_line(b)} Ours is the mean ± the larger side of a 95% interval "
        "(Welch t over seeds for a difference between configurations, each side's variance of the mean widened by its SAEs' "
        "evaluation SE — the game bootstrap for counts, the row-block bootstrap for reconstruction — since every seed is "
        "scored on the same held-out data; a case bootstrap for a fitted exponent; a paired block bootstrap for an ablation; "
        "an exact permutation test for a rank correlation). No interval has zero width: a side with one seed, or whose seeds "
        "agree with no evaluation SE recorded, is unbounded.",
        "",
        (
            f"**Multiplicity.** The {len(results)} claims below form one family (`{mod.NAME}`). Each has a p-value of its null "
            "(two-sided; one-sided for a rank agreement), read from its test or from its 95% interval; the family's p-values are "
            f"Holm-adjusted (step-down), and a claim *holds* when its adjusted p is below {FAMILY_ALPHA:g} with the estimate on the "
            "paper's side of the null, *does not hold* when below it on the other side, and is *not separable at this budget* "
            f"otherwise — so the family-wise chance of any false holds / does not hold is at most {FAMILY_ALPHA:.0%}. The 95% "
            "intervals shown are not adjusted: one may exclude the null where the adjusted verdict is still not separable. "
            "A claim that could not be measured counts in the family with p = 1."
        ),
        "",
        claims_markdown(results),
    ]
    if pending:
        md[-1:-1] = [
            f"**Partial:** sweep{'s' if len(pending) > 1 else ''} {', '.join(f'`{p}`' for p in pending)} not run yet; "
            f"the claims that read {'them' if len(pending) > 1 else 'it'} say so. The same command resumes the run.",
            "",
        ]
    for sweep_name, sweep_rows in rows.items():
        md += [f"## Sweep `{sweep_name}`", "", summary_markdown(sweep_rows)]
    if notes:
        md += ["Reused rows:", "", *[f"- {n}" for n in notes], ""]
    if search is not None:
        md += [
            "## Search",
            "",
            "Each candidate trained once (seed 0) for the screen, then judged on held-out L0 and NMSE: "
            "collapsed codes and Pareto-dominated settings drop out, the rest (at most the budget's finalists per method) "
            "get the board-state score, and the best-scoring finalist is the method's setting in sweep `best`.",
            "",
            search.markdown(),
        ]
    atomic_write_text(root / "claims.md", "\n".join(md))
    atomic_write_json(
        root / "claims.json",
        {
            "paper": mod.TITLE,
            "name": mod.NAME,
            "budget": b.name,
            "command": command,
            "seconds": round(seconds, 1),
            "runs": segments,
            "pending": list(pending),
            "claims": [r.to_record() for r in results],
            **({"search": search.to_record()} if search is not None else {}),
        },
    )


def training_line(b: Budget) -> str:
    """One sentence on what the budget trains: games, layer, length, batch, seeds."""
    length = (
        f"{b.steps:,} steps" if b.steps is not None else f"{b.epochs:g} pass{'es' if b.epochs != 1 else ''} over them"
    )
    return (
        f"The OthelloGPT sweeps trained on {b.train_games:,} games (after block {b.layer}), {length}, batches of {b.batch_size:,}, "
        f"Adam at lr {b.lr:g}, {b.seeds} seed{'s' if b.seeds != 1 else ''} per setting."
    )


def claims_json(results: list[ClaimResult]) -> str:
    """The --json output: a list of {claim, paper, ours, ci, verdict}."""
    return json.dumps([r.to_json() for r in results], indent=2, allow_nan=False)
