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
import os
from pathlib import Path
from typing import Callable

from saelab.config import RunConfig, TrainConfig
from saelab.data.store import ActivationStore
from saelab.errors import ConfigError
from saelab.experiments.grid import (
    PlannedSAE,
    SweepPlan,
    pack_by_memory,
    plan_sweep,
)
from saelab.experiments.sweep_rows import Evaluators, _finite, _row
from saelab.experiments.sweep_state import (
    CHECKPOINTS_PER_RUN,
    EVAL_KEYS,
    INPUTS,
    RANK_RESULTS,
    RESULTS,
    SPREAD,
    _agrees,
    _claim,
    _finished,
    _finished_folders,
    _inputs,
    _member_folders,
    _read_rows,
    _reuse,
    _settle_deal,
    _split_removed,
    _write_rows,
    available_memory_bytes,
)
from saelab.formats.folder import load_sae, read_saelab_record
from saelab.training.trainer import CHECKPOINT, Trainer
from saelab.util import distributed
from saelab.util.config_files import read_config


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
