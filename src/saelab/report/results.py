"""Read sweep outputs: DIR/results.jsonl rows and, per SAE folder, eval.json and the metrics.jsonl training curve."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from saelab.errors import DataError
from saelab.util.jsonl import jsonl_objects

RESULTS = "results.jsonl"
EVAL = "eval.json"
CURVE = "metrics.jsonl"
REQUIRED = ("name", "group", "method")


@dataclass(frozen=True)
class ResultRow:
    """One SAE's row of a results.jsonl, with where it came from (to resolve its folder and to name it in errors)."""

    data: dict
    source: Path  # the results.jsonl
    line: int

    @property
    def name(self) -> str:
        """The SAE's unique name."""
        return str(self.data["name"])

    def folder(self) -> Path | None:
        """The SAE folder (relative `folder` resolved against the sweep directory), None when the row has none."""
        f = self.data.get("folder")
        return None if not f else self.source.parent / str(f)


def read_results(result_dir: str | Path) -> list[ResultRow]:
    """Every row of DIR/results.jsonl; DataError naming the file and line of the first bad one."""
    result_dir = Path(result_dir)
    path = result_dir / RESULTS
    if not result_dir.is_dir():
        raise DataError(f"{result_dir}: no such folder (expected a sweep output folder holding {RESULTS})")
    if not path.is_file():
        rows = run_folder_rows(result_dir)
        if rows:
            return rows
        raise DataError(
            f"{result_dir}: no {RESULTS} and no SAE folder (saelab.json) in this folder (not a sweep or run output folder?)"
        )
    rows = []
    names: dict[str, int] = {}
    for lineno, data in jsonl_objects(path):
        for key in REQUIRED:
            if data.get(key) in (None, ""):
                raise DataError(f"{path}:{lineno}: missing {key!r}")
        bad = _non_finite(data)
        if bad:
            raise DataError(f"{path}:{lineno}: {bad} is not finite (results store missing values as null)")
        name = str(data["name"])
        if name in names:
            raise DataError(f"{path}:{lineno}: name {name!r} repeats line {names[name]} (names must be unique)")
        names[name] = lineno
        rows.append(ResultRow(data, path, lineno))
    if not rows:
        raise DataError(f"{path}: no result rows")
    return rows


RUN_RECORD = "saelab.json"
RUN_DEPTH = 2  # a run's SAE folders: DIR, DIR/NAME (a multi-SAE run), DIR/SITE/NAME (`saelab lm train` sweeps)


def run_folder_rows(run_dir: Path) -> list[ResultRow]:
    """Rows for a plain run folder (`saelab train` / `saelab lm train` output): one per SAE folder in it, each its own group."""
    folders = [run_dir] if (run_dir / RUN_RECORD).is_file() else []
    level = [run_dir]
    for _ in range(RUN_DEPTH):
        level = sorted(p for d in level for p in d.iterdir() if p.is_dir())
        folders += [p for p in level if (p / RUN_RECORD).is_file()]
    rows = []
    for lineno, folder in enumerate(folders, 1):
        try:
            record = json.loads((folder / RUN_RECORD).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{folder / RUN_RECORD}: unreadable ({type(e).__name__})") from None
        sae, ev = record.get("sae") or {}, record.get("eval") or {}
        rel = folder.relative_to(run_dir).as_posix()
        name = run_dir.resolve().name if rel == "." else f"{run_dir.resolve().name}/{rel}"
        params = {**(sae.get("method_params") or {}), **(sae.get("penalty_params") or {})}
        if sae.get("penalty"):
            params.update(penalty=sae["penalty"], alpha=sae.get("alpha"))
        data = {
            "name": name,
            "group": name,
            "method": sae.get("method") or "unknown",
            "params": params,
            "n_latents": sae.get("n_latents"),
            "seed": None,
            "target_l0": sae.get("target_l0"),
            **{
                k: ev.get(k)
                for k in (
                    "l0",
                    "l0_eps",
                    "nmse",
                    "mse",
                    "explained_variance",
                    "cos_sim",
                    "dead_fraction",
                    "dense_fraction",
                )
            },
            "tokens": record.get("tokens"),
            "steps": record.get("steps"),
            "flops": record.get("flops"),
            "folder": rel,
            "ci": dict(ev.get("ci") or {}),
        }
        data = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}
        rows.append(ResultRow(data, run_dir / RESULTS, lineno))
    return rows


def read_all_results(result_dirs: Sequence[str | Path]) -> list[ResultRow]:
    """Rows of several sweep folders; a group's seeds may come from different folders, but never the same seed twice."""
    if not result_dirs:
        raise DataError("no result folders given")
    rows = [r for d in result_dirs for r in read_results(d)]
    seen: dict[tuple[str, str], ResultRow] = {}
    for r in rows:
        if r.data.get("seed") is None:
            continue
        key = (str(r.data["group"]), json.dumps(r.data["seed"]))
        if key in seen:
            first = seen[key]
            # The same configuration and seed twice would count one run as two independent seeds.
            raise DataError(
                f"{r.source}:{r.line}: group {key[0]!r} seed {r.data['seed']} already read from {first.source}:{first.line}"
            )
        seen[key] = r
    return rows


def read_eval(row: ResultRow) -> dict | None:
    """The SAE folder's eval.json, or None when the row has no folder or the folder no eval.json."""
    folder = row.folder()
    if folder is None or not (folder / EVAL).is_file():
        return None
    path = folder / EVAL
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: unreadable JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def read_curve(row: ResultRow) -> list[dict] | None:
    """The SAE folder's metrics.jsonl (one dict per logged step), or None when absent."""
    folder = row.folder()
    if folder is None or not (folder / CURVE).is_file():
        return None
    return [step for _, step in jsonl_objects(folder / CURVE)]


def _non_finite(data: dict, prefix: str = "") -> str | None:
    """The first key holding NaN or ±inf (json.loads accepts them), searched through nested objects."""
    for k, v in data.items():
        if isinstance(v, float) and not math.isfinite(v):
            return f"{prefix}{k}"
        if isinstance(v, dict):
            inner = _non_finite(v, f"{prefix}{k}.")
            if inner:
                return inner
    return None
