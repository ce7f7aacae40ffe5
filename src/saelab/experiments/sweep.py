"""Run a sweep: train the planned SAEs seed by seed on shared batches, evaluate each on held-out
data, append one row per SAE to DIR/results.jsonl, and build the report.

Layout of DIR: `sweep.json` (the config and the expanded plan; a resumed sweep must match it),
`runs/seed{S}[-part{i}]/` (one multi-SAE training run per seed and memory-sized part; the SAE
folders inside), `results.jsonl` and `report/`. A killed sweep continues with `resume=True`:
parts whose SAEs all have their eval.json are not retrained, a part killed mid-training resumes
from its checkpoint (sweeps checkpoint every tenth of training unless told otherwise), and SAEs
already in results.jsonl are not evaluated again.

A resume never mixes: sweep.json also records the fingerprint of the data (every byte, see
fingerprint.py) and the data's source record, and a resume on other data is refused; a row of
results.jsonl is reused only when it equals what its folder's saelab.json (and othello_score.json)
say, else the SAE is evaluated again; an SAE trained and evaluated in any run folder of the sweep is
reused wherever a new packing (another memory budget) would put it. A sweep that stopped before any
training started leaves nothing to resume, so running it again (with or without --resume) starts over.

Under torchrun every part trains data-parallel on all ranks. With `spread_over_ranks` each rank
instead trains its own share of each seed's SAEs (`runs/seed{S}-rank{r}[-part{i}]/`), alone, on the
same batches as every other rank (same stream, same seed; no gradient exchange), so each SAE ends
with the weights a one-process sweep gives it. Each rank also evaluates the SAEs it trained (the
board-state score costs about as much as training a small SAE), keeping its rows in
`results.rank{r}.jsonl` as it goes; when all ranks are done rank 0 merges them into results.jsonl
(in the one-process order) and writes the report. The deal (which rank trains which SAE, by
estimated step time: a dense step costs about three sparse ones) is recorded in sweep.json, so such a
sweep resumes with the same number of ranks and finds its folders where it left them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

from saelab.config import RunConfig, TrainConfig
from saelab.data.source_info import read_source_info
from saelab.data.store import ActivationStore
from saelab.errors import ConfigError, DataError
from saelab.experiments.grid import (
    PlannedSAE,
    SweepPlan,
    memory_estimate,
    pack_by_memory,
    plan_sweep,
    spread_over_ranks,
    step_cost_estimate,
)
from saelab.experiments.sweep_rows import OTHELLO_SCORE, Evaluators, _finite, _row
from saelab.formats.folder import SAELAB_CFG, load_sae, read_saelab_record
from saelab.training.fingerprint import data_fingerprint
from saelab.training.trainer import CHECKPOINT, RUN_CONFIG, Trainer
from saelab.util import distributed
from saelab.util.atomic import atomic_write_json, atomic_write_text
from saelab.util.config_files import read_config
from saelab.util.json_files import read_json_object
from saelab.util.jsonl import jsonl_objects

RESULTS = "results.jsonl"
PLAN = "sweep.json"
EVAL_KEYS = (
    "games",
    "downstream",
    "text",
    "tokens",
    "batch_size",
    "skip_windows",
    "n_boot",
    "model",
    "board",
    "games_seed",
)
CHECKPOINTS_PER_RUN = 10
SPREAD = "spread_over_ranks"  # key of sweep.json: the number of ranks a spread sweep's SAEs were dealt to
DEAL = "spread_deal"  # key of sweep.json: seed → each rank's SAE names (kept, so a resume finds every folder)
REDO_SUFFIX = "-redo"  # run folder of SAEs retrained after their folders were deleted from a finished part
RANK_RESULTS = "results.rank{rank}.jsonl"  # a spread rank's rows until rank 0 merges them into RESULTS
INPUTS = "inputs"  # key of sweep.json: the data's fingerprints and source record; a resume must match them


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (8 GiB where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def _read_rows(path: Path) -> dict[str, dict]:
    # A row without a name says nothing a folder can confirm: its SAE is evaluated again.
    return (
        {row["name"]: row for _, row in jsonl_objects(path) if isinstance(row.get("name"), str)}
        if path.exists()
        else {}
    )


OTHELLO_ROW_KEYS = (
    "good_classifiers",
    "good_findable",
    "findable",
    "good_classifier_latents",
    "coverage",
    "good_classifiers_frac",
)


def _agrees(prior: dict, fresh: dict, folder: Path) -> bool:
    """Whether an earlier results row says what the SAE's folder says (saelab.json, and othello_score.json when there)."""
    fresh = json.loads(json.dumps(fresh))
    ci = prior.get("ci")
    if not isinstance(ci, dict) or any(ci.get(k) != v for k, v in fresh.pop("ci", {}).items()):
        return False
    if any(prior.get(k) != v for k, v in fresh.items()):
        return False
    if (folder / OTHELLO_SCORE).exists():
        try:
            score = read_json_object(folder / OTHELLO_SCORE)
        except DataError:
            return False
        return all(prior.get(k) == score.get(k) for k in OTHELLO_ROW_KEYS)
    return True


def _write_rows(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))


def _member_folders(run_dir: Path, part: list[PlannedSAE]) -> list[Path]:
    # The trainer writes a single SAE into the run folder itself, several into named subfolders.
    return [run_dir] if len(part) == 1 else [run_dir / p.name for p in part]


def _finished(folder: Path) -> bool:
    """Whether a member's folder holds a trained and evaluated SAE."""
    return (folder / "eval.json").exists() and (folder / SAELAB_CFG).exists()


def _split_removed(run_dir: Path, part: list[PlannedSAE]) -> list[tuple[Path, list[PlannedSAE], list[Path]]]:
    """(run folder, SAEs, their folders) to train or read on resume: the part whole, or its finished members and those whose folders were deleted.

    Deleting a trained SAE's folder from a finished part of several asks for that SAE again (a fixed
    method, a bad run): it trains alone, beside the part, in `<run>-redo`, the same batches and seed
    as the first time, and the members kept are not trained again. Anything else (a part killed in
    training, a member evaluated but not its neighbours) resumes the part as one run.
    """
    folders = _member_folders(run_dir, part)
    if len(part) < 2:
        return [(run_dir, part, folders)]
    kept = [(p, f) for p, f in zip(part, folders) if _finished(f)]
    removed = [p for p, f in zip(part, folders) if not f.exists()]
    if not kept or not removed or len(kept) + len(removed) != len(part):
        return [(run_dir, part, folders)]
    redo = run_dir.with_name(run_dir.name + REDO_SUFFIX)
    return [(run_dir, [p for p, _ in kept], [f for _, f in kept]), (redo, removed, _member_folders(redo, removed))]


def _started(root: Path) -> bool:
    """Whether a sweep in `root` got as far as training or evaluating anything (else a rerun starts it over)."""
    runs = root / "runs"
    return (
        (runs.is_dir() and any(runs.iterdir()))
        or (root / RESULTS).exists()
        or any(root.glob(RANK_RESULTS.format(rank="*")))
    )


def _check_same_inputs(root: Path, saved: dict, inputs: dict) -> None:
    """ConfigError naming the first recorded input (data fingerprint, source record) that differs now."""
    recorded = saved.get(INPUTS)
    if recorded is None:
        return  # a sweep started before inputs were recorded: they are recorded from this resume on
    now = json.loads(json.dumps(inputs))
    for key in sorted(set(now) | set(recorded if isinstance(recorded, dict) else {})):
        if not isinstance(recorded, dict) or recorded.get(key) != now.get(key):
            field = "eval_activations" if key == "eval_activations" else "activations"
            what = "its source record" if key == "source" else "its content (a fingerprint of every byte)"
            raise ConfigError(
                field,
                saved.get("config", {}).get(field),
                f"not the data the sweep in {root} was trained on ({what} differs); "
                "resume needs the same data, or start a new sweep in another folder",
            )


def _claim(root: Path, plan_record: dict, data: dict, config, resume: bool) -> dict | None:
    """Check that `root` is new, or holds this sweep when resuming; write its plan; return the saved plan (None if new)."""
    saved = None
    if (root / PLAN).exists():
        saved = read_json_object(root / PLAN, {"config": dict, "saes": list})
        if not _started(root):
            saved = None  # it stopped before its first SAE (a bad option, missing data): nothing to keep or match
        elif not resume:
            raise ConfigError(
                "out", str(root), "already holds a sweep; pass --resume to continue it or choose another folder"
            )
    if saved is not None:
        if saved.get("saes") != plan_record["saes"] or saved.get("config") != json.loads(json.dumps(data)):
            raise ConfigError(
                "config", str(config), f"differs from the sweep in {root} (its {PLAN}); resume needs the same config"
            )
        _check_same_inputs(root, saved, plan_record[INPUTS])
        if saved.get(SPREAD) != plan_record.get(SPREAD):
            # Which rank trains which SAE, and so each run's folder, depends on the number of ranks.
            was, now = saved.get(SPREAD), plan_record.get(SPREAD)
            how = lambda n: f"spread over {n} ranks" if n else "not spread over ranks"  # noqa: E731
            raise ConfigError(
                SPREAD, now, f"the sweep in {root} was {how(was)}, this run is {how(now)}; resume it as it started"
            )
        if DEAL in saved:
            plan_record = {**plan_record, DEAL: saved[DEAL]}
    elif root.exists() and any(p.name != PLAN for p in root.iterdir()) and not resume:
        raise ConfigError("out", str(root), "is not empty; choose a new folder for the sweep")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / PLAN, plan_record)
    return saved


def _settle_deal(
    root: Path, plan: SweepPlan, saved: dict | None, d_in: int, batch_size: int, ranks: int
) -> dict[str, list[list[str]]]:
    """Which rank trains which SAE, seed by seed: the deal sweep.json holds, else a new one by estimated step time, recorded."""
    if saved is not None and DEAL in saved:
        return saved[DEAL]
    # A spread sweep started before deals were recorded was dealt by memory; its resume must find the same folders.
    cost = memory_estimate if saved is not None else step_cost_estimate
    deal = {
        str(seed): [[s.name for s in share] for share in spread_over_ranks(saes, d_in, batch_size, ranks, cost)]
        for seed, saes in plan.by_seed().items()
    }
    atomic_write_json(root / PLAN, {**read_json_object(root / PLAN), DEAL: deal})
    return deal


def run_sweep(
    config: str | Path | dict,
    out: str | Path,
    resume: bool = False,
    max_memory_gb: float | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    report: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    log: str | None = None,
    spread: bool = False,
) -> list[dict]:
    """Train and evaluate every SAE of a sweep config into `out`; return the results rows.

    `spread`: under torchrun, each rank trains and evaluates a share of the SAEs alone instead of
    every part data-parallel (the module docstring says how), and every rank returns every row; in
    one process it changes nothing.

    `device`, `dtype` and `log` override the config's train fields of the same names. `dtype`
    changes what is trained, so it is part of the sweep's config (a resume must match it);
    `device` and `log` only place and watch the training, so a resume may change them.
    """
    data = read_config(config) if isinstance(config, (str, Path)) else dict(config)
    data.pop("out", None)  # the sweep chooses each run's folder
    if dtype is not None:
        data["dtype"] = dtype
    placement = {k: v for k, v in (("device", device), ("log", log)) if v is not None}
    # Checked before the sweep folder is claimed: a machine without the device leaves nothing behind.
    TrainConfig.from_dict(
        {
            **{k: v for k, v in data.items() if k in ("device", "dtype", "log")},
            **placement,
            "activations": "-",
            "out": "-",
        }
    ).validate()
    plan: SweepPlan = plan_sweep({**data, "out": str(out)})
    if "activations" not in plan.train:
        raise ConfigError("activations", None, "required in the sweep config")
    root = Path(out)
    plan_record = {"config": data, "saes": [s.name for s in plan.saes]}
    # torchrun: every part trains data-parallel on all ranks, or (spread) each rank trains its share;
    # rank 0 alone claims the folder, evaluates and writes.
    world = distributed.init_from_env()
    spread = spread and world.parallel
    if spread:
        plan_record[SPREAD] = world.size
    if not world.is_main:
        say = lambda message: None  # noqa: E731 — rank 0 reports
    unknown = sorted(set(plan.eval) - set(EVAL_KEYS))
    if unknown:
        raise ConfigError(
            f"eval.{unknown[0]}", plan.eval[unknown[0]], f"unknown [eval] option (known: {', '.join(EVAL_KEYS)})"
        )
    store = ActivationStore(plan.train["activations"])
    plan_record[INPUTS] = world.on_main(lambda: _inputs(store, plan.train))
    saved = world.on_main(lambda: _claim(root, plan_record, data, config, resume))
    # Rank 0's budget on every rank: the SAEs must be packed into the same parts everywhere. Spread
    # ranks train at once, so those on one machine share its budget.
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", world.size)) if spread else 1
    budget = world.on_main(
        lambda: int((max_memory_gb * 2**30) if max_memory_gb is not None else available_memory_bytes() / 2) // sharing
    )
    batch_size = int(plan.train.get("batch_size", TrainConfig.__dataclass_fields__["batch_size"].default))
    done = {}
    if resume:
        # A killed spread sweep left each rank's evaluated rows beside results.jsonl.
        for path in [root / RESULTS, *sorted(root.glob(RANK_RESULTS.format(rank="*")))]:
            done.update(_read_rows(path))
    rows: list[dict] = []
    evaluators = None
    # Where this process keeps its rows as it evaluates: results.jsonl, or its own file when spread.
    rows_file = root / (RANK_RESULTS.format(rank=world.rank) if spread else RESULTS)

    def collect(part: list[PlannedSAE], folders: list[Path]) -> None:
        """The results row of each SAE of a trained part (evaluated unless an earlier run's rows have it)."""
        nonlocal evaluators
        for planned, folder in zip(part, folders):
            record = read_saelab_record(folder)
            row = _row(planned, folder, root, record)
            if planned.name in done and _agrees(done[planned.name], row, folder):
                rows.append(done[planned.name])  # what its folder says: its extra evaluations need not run again
                continue
            if evaluators is None:
                evaluators = Evaluators(record.get("source"), plan.eval, say)
            extra = evaluators.extra(load_sae(folder), folder)
            row["ci"].update(extra.pop("ci", {}))
            row.update({k: _finite(v) for k, v in extra.items()})
            rows.append(row)
            # One process keeps the earlier run's rows in results.jsonl; a spread rank's file holds its own rows.
            _write_rows(
                rows_file, rows if spread else rows + [r for n, r in done.items() if n not in {x["name"] for x in rows}]
            )
            say(_summary(row))

    deal = (
        world.on_main(lambda: _settle_deal(root, plan, saved, store.d_in, batch_size, world.size)) if spread else None
    )
    runs = _runs(plan, root, store.d_in, batch_size, budget, deal)
    if spread:
        shares = [sum(len(part) for owner, _, _, part in runs if owner == r) for r in range(world.size)]
        say(f"spreading {len(plan.saes)} SAEs over {world.size} ranks: {', '.join(map(str, shares))} SAE(s) each")
    pieces = [
        (owner, seed, piece)
        for owner, seed, run_dir, part in runs
        for piece in (_split_removed(run_dir, part) if resume else [(run_dir, part, _member_folders(run_dir, part))])
    ]
    if resume:  # another packing (memory budget) than the first run's: SAEs finished anywhere are kept where they are
        found = world.on_main(lambda: _finished_folders(root))
        pieces = [(owner, seed, p) for owner, seed, piece in pieces for p in _reuse(root, *piece, found)]
    for owner, seed, (run_dir, part, folders) in pieces:
        if owner in (None, world.rank):
            finished = all(_finished(f) for f in folders)
            if not finished:
                say(f"training {len(part)} SAE(s) with seed {seed} into {run_dir}")
                train = TrainConfig.from_dict({**plan.train, "seed": seed, "out": str(run_dir), **placement})
                # Spread: this rank trains the part alone (its own one-process World), on the batches every rank reads.
                trainer = Trainer(
                    RunConfig(train, [dataclasses.replace(p.cfg) for p in part]),
                    progress=progress and world.is_main,
                    world=distributed.World() if spread else None,
                )
                if train.checkpoint_every == 0:
                    trainer.run.train.checkpoint_every = max(1, trainer.total_steps // CHECKPOINTS_PER_RUN)
                # A part that never reached its first checkpoint leaves a partial folder: start it over.
                has_ckpt = (run_dir / CHECKPOINT).exists()
                trainer.fit(resume=resume and has_ckpt, overwrite=not has_ckpt)
            if spread:
                collect(part, folders)
        if world.is_main and not spread:
            collect(part, folders)
    if spread:
        world.wait_for_all()  # ranks finish their shares at different times, possibly hours apart
        rows = [r for share in world.all_gather(rows) for r in share]
        # The one-process sweep's row order: seed by seed, each seed's SAEs in plan order.
        order = {s.name: i for i, s in enumerate(s for saes in plan.by_seed().values() for s in saes)}
        rows.sort(key=lambda r: order[r["name"]])
    if not world.is_main:
        return rows
    _write_rows(root / RESULTS, rows)
    for path in root.glob(RANK_RESULTS.format(rank="*")):
        path.unlink()  # merged: results.jsonl now holds every rank's rows
    if report:
        from saelab.report import build_report

        paths = build_report([root], root / "report", command=f"saelab sweep {config} --out {out}")
        say(f"report: {paths.html}")
    return rows


def _inputs(store: ActivationStore, train: dict) -> dict:
    """What a sweep's rows depend on beyond its config: the data's fingerprint(s) and its source record."""
    inputs = {"activations": data_fingerprint(store), "source": read_source_info(train["activations"])}
    if train.get("eval_activations"):
        inputs["eval_activations"] = data_fingerprint(ActivationStore(train["eval_activations"]))
    return inputs


def _finished_folders(root: Path) -> dict[str, Path]:
    """Each SAE name → a folder in the sweep's runs/ that holds it trained and evaluated."""
    found: dict[str, Path] = {}
    runs = root / "runs"
    for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not run_dir.is_dir() or run_dir.is_symlink():
            continue
        for folder in [
            run_dir,
            *sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")),
        ]:
            if not _finished(folder):
                continue
            try:
                name = read_saelab_record(folder).get("sae", {}).get("name")
            except (DataError, AttributeError):
                continue
            if isinstance(name, str):
                found.setdefault(name, folder)
    return found


def _saes_of_run(run_dir: Path) -> list[str] | None:
    """The SAE names a run folder's run.json holds (None when it has none or it is unreadable)."""
    try:
        saes = read_json_object(run_dir / RUN_CONFIG, {"saes": list})["saes"]
        return [s.get("name") for s in saes]
    except (DataError, AttributeError):
        return None


def _reuse(
    root: Path, run_dir: Path, part: list[PlannedSAE], folders: list[Path], found: dict[str, Path]
) -> list[tuple[Path, list[PlannedSAE], list[Path]]]:
    """`part` with its SAEs finished elsewhere in the sweep read from there, the rest trained in a run folder of their own.

    The rest resume a run folder that holds exactly them, else train in `run_dir` or, when that holds
    other SAEs, in the first free `run_dir-redo[N]`.
    """
    elsewhere = {p.name: found[p.name] for p, f in zip(part, folders) if not _finished(f) and p.name in found}
    if not elsewhere:
        return [(run_dir, part, folders)]
    reused = [p for p in part if p.name in elsewhere]
    pieces = [(run_dir, reused, [elsewhere[p.name] for p in reused])]
    rest = [p for p in part if p.name not in elsewhere]
    if rest:
        names = [p.name for p in rest]
        runs = root / "runs"
        holding = [
            d for d in sorted(runs.iterdir()) if d.is_dir() and _saes_of_run(d) == names and (d / CHECKPOINT).exists()
        ]
        target = holding[0] if holding else None
        i = 0
        while target is None:
            candidate = run_dir.with_name(
                run_dir.name + (REDO_SUFFIX + (str(i) if i else "") if i or run_dir.exists() else "")
            )
            if not candidate.exists():
                target = candidate
            i += 1
        pieces.append((target, rest, _member_folders(target, rest)))
    return pieces


def _runs(
    plan: SweepPlan, root: Path, d_in: int, batch_size: int, budget: int, deal: dict[str, list[list[str]]] | None
) -> list[tuple[int | None, int, Path, list[PlannedSAE]]]:
    """Every training run of the sweep: (the rank that trains it, None for all together; seed; folder; SAEs).

    `deal` (a spread sweep's) names each rank's SAEs per seed; None trains every SAE on all ranks together.
    """
    runs: list[tuple[int | None, int, Path, list[PlannedSAE]]] = []
    for seed, saes in plan.by_seed().items():
        owners = None if deal is None else {name: r for r, names in enumerate(deal[str(seed)]) for name in names}
        shares = (
            [saes]
            if deal is None
            else [[s for s in saes if owners.get(s.name) == r] for r in range(len(deal[str(seed)]))]
        )
        ranks = 1 if deal is None else len(shares)
        for rank, share in enumerate(shares):
            parts = pack_by_memory(share, d_in, batch_size, budget)
            name = f"seed{seed}" + (f"-rank{rank}" if ranks > 1 else "")
            for i, part in enumerate(parts):
                runs.append(
                    (
                        rank if ranks > 1 else None,
                        seed,
                        root / "runs" / (name + (f"-part{i}" if len(parts) > 1 else "")),
                        part,
                    )
                )
    return runs


def _summary(row: dict) -> str:
    parts = [f"{row['name']}: L0 {row['l0']:.1f}", f"NMSE {row['nmse']:.4f}"]
    if row.get("good_findable") is not None:
        parts.append(f"good classifiers {row['good_findable']}/{row['findable']}")
    if row.get("kl") is not None:
        parts.append(f"KL {row['kl']:.3f}")
    return ", ".join(parts)
