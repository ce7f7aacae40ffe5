"""What a training finds in its output folder before it writes: leftovers to clean, runs not to clobber."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from saelab.errors import ConfigError
from saelab.util.atomic import TEMP_PREFIX


def check_folders(dirs: Iterable[Path]) -> None:
    """ConfigError for any output path that exists but is not a folder."""
    for d in dirs:
        if d.exists() and not d.is_dir():
            raise ConfigError("out", str(d), "exists and is not a folder")


def clean_temp_files(dirs: Iterable[Path]) -> list[Path]:
    """Delete temporary files an interrupted atomic write left in `dirs`; return them."""
    removed = []
    for d in dirs:
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(TEMP_PREFIX) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def existing_run(dirs: Iterable[Path], run_files: Iterable[str], checkpoint: str) -> str | None:
    """What run these folders already hold ('a run', 'a run in …', 'a partial run (…)'), or None when they hold none."""
    dirs = list(dirs)
    run_files = list(run_files)
    found = [d / name for d in dirs for name in run_files if (d / name).exists()]
    if not found:
        return None
    if (dirs[0] / checkpoint).exists():
        return "a run"
    with_checkpoint = [d for d in dirs[1:] if (d / checkpoint).exists()]
    if with_checkpoint:
        return f"a run in {with_checkpoint[0]}"
    return f"a partial run ({found[0].name} in {found[0].parent} but no checkpoint to resume from)"


def remove_run_files(dirs: Iterable[Path], run_files: Iterable[str], keep: Iterable[Path] = ()) -> None:
    """Delete the files a previous run wrote in `dirs`, except the paths in `keep`."""
    keep = {Path(p) for p in keep}
    for d in dirs:
        for name in run_files:
            if d / name not in keep:
                (d / name).unlink(missing_ok=True)
