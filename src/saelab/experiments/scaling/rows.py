"""Scaling fits from results rows: reading results.jsonl files, grouping, and fitting each group."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from saelab.errors import ConfigError, DataError
from saelab.experiments.scaling.fits import JointFit, PowerFit, fit_joint, fit_power, fit_power_const
from saelab.experiments.scaling.models import FORMS, KEY_ALIASES
from saelab.util.jsonl import jsonl_objects

# --- rows ----------------------------------------------------------------------------------------


def read_results(paths: Sequence[str | Path]) -> list[dict]:
    """Rows of one or more results.jsonl files; each row gets "_source" = "file:line" for error messages."""
    rows: list[dict] = []
    for path in paths:
        p = Path(path)
        for lineno, row in jsonl_objects(p):
            row["_source"] = f"{p}:{lineno}"
            rows.append(row)
    if not rows:
        raise DataError(f"no result rows in {', '.join(str(p) for p in paths)}")
    return rows


def row_value(row: Mapping, key: str):
    """A row's value for key: top level first, then row["params"]; "compute" reads "flops"; "a.b" walks objects."""
    key = KEY_ALIASES.get(key, key)
    if key in row:
        return row[key]
    params = row.get("params")
    if isinstance(params, Mapping) and key in params:
        return params[key]
    if "." in key:
        cur = row
        for part in key.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                return None
            cur = cur[part]
        return cur
    return None


def _group_label(value) -> str:
    """A group value as a stable string: 32.0 and 32 are the same group "32"; a missing value is "none"."""
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _sort_key(label: str):
    """Numeric labels in numeric order, then the others alphabetically."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def group_by(rows: Iterable[Mapping], key: str | None) -> dict[str, list[Mapping]]:
    """Rows grouped by row_value(row, key) as a label ("none" when missing; one group "all" when key is None)."""
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        label = "all" if key is None else _group_label(row_value(row, key))
        groups.setdefault(label, []).append(row)
    return {label: groups[label] for label in sorted(groups, key=_sort_key)}


def _number(v) -> float | None:
    """A finite float from a JSON value, or None (missing, null, NaN, text, bool)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _row_points(rows: Sequence[Mapping], keys: Sequence[str]) -> tuple[np.ndarray, int]:
    """[points, len(keys)] of rows having every key as a finite number, and how many rows were skipped."""
    points, skipped = [], 0
    for i, row in enumerate(rows):
        vals = [_number(row_value(row, k)) for k in keys]
        if any(v is None for v in vals):
            skipped += 1
            continue
        for k, v in zip(keys, vals):
            if v <= 0:
                where = row.get("_source", f"row {i}")
                raise DataError(f"{where}: {k}={v!r} is not positive; a fit in log space needs positive values")
        points.append(vals)
    return np.array(points, dtype=np.float64).reshape(-1, len(keys)), skipped


def fit_rows(
    rows: Sequence[Mapping],
    x: str,
    y: str,
    by: str | None = None,
    form: str = "power+const",
    *,
    exclude: int | str = 0,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, PowerFit | JointFit]:
    """Fit y against x per group of rows (joint: x is n, k from params.k); rows lacking a value are skipped.

    Rows lacking the `by` key belong to no group and are not fitted (group_by(rows, by)["none"] holds them);
    within a group, rows lacking x, y (or k) are skipped and counted in the result's n_skipped.
    """
    if form not in FORMS:
        raise ConfigError("form", form, f"must be one of {', '.join(FORMS)}")
    keys = (x, "k", y) if form == "joint" else (x, y)
    out: dict[str, PowerFit | JointFit] = {}
    groups = group_by(rows, by)
    if by is not None:
        groups.pop("none", None)
        if not groups:
            raise DataError(f"no row has a value for {by!r} to group by")
    for label, group_rows in groups.items():
        pts, skipped = _row_points(group_rows, keys)
        name = "all rows" if by is None else f"group {by}={label}"
        if len(pts) == 0:
            raise DataError(f"{name}: no row has numeric {' and '.join(keys)} ({skipped} row(s) skipped)")
        try:
            if form == "joint":
                res = fit_joint(pts[:, 0], pts[:, 1], pts[:, 2], exclude=exclude, n_boot=n_boot, seed=seed, level=level)
            elif form == "power":
                res = fit_power(pts[:, 0], pts[:, 1], exclude=exclude, n_boot=n_boot, seed=seed, level=level)
            else:
                res = fit_power_const(pts[:, 0], pts[:, 1], exclude=exclude, n_boot=n_boot, seed=seed, level=level)
        except DataError as e:
            raise DataError(f"{name}: {e}") from None
        out[label] = replace(res, n_skipped=skipped, x_key=x, y_key=y, group=label)
    return out
