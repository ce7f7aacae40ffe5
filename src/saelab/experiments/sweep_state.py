"""A sweep's state on disk: its plan and inputs, which rows and folders a resume may trust, and which it reuses."""

from __future__ import annotations

import json
from pathlib import Path

from saelab.data.source_info import read_source_info
from saelab.data.store import ActivationStore
from saelab.errors import ConfigError, DataError
from saelab.experiments.grid import (
    PlannedSAE,
    SweepPlan,
    memory_estimate,
    spread_over_ranks,
    step_cost_estimate,
)
from saelab.formats.folder import SAELAB_CFG, read_saelab_record
from saelab.sources.registry import score_files
from saelab.training.fingerprint import data_fingerprint
from saelab.training.trainer import CHECKPOINT, RUN_CONFIG
from saelab.util.atomic import atomic_write_json, atomic_write_text
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


def _agrees(prior: dict, fresh: dict, folder: Path) -> bool:
    """Whether an earlier results row says what the SAE's folder says (saelab.json, and each source's score file there)."""
    fresh = json.loads(json.dumps(fresh))
    ci = prior.get("ci")
    if not isinstance(ci, dict) or any(ci.get(k) != v for k, v in fresh.pop("ci", {}).items()):
        return False
    if any(prior.get(k) != v for k, v in fresh.items()):
        return False
    for name, keys in score_files().items():
        if (folder / name).exists():
            try:
                score = read_json_object(folder / name)
            except DataError:
                return False
            if any(prior.get(k) != score.get(k) for k in keys):
                return False
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
