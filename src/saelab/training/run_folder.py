"""What a training finds in its output folder before it writes: leftovers to clean, runs not to clobber, links not to follow,
and how `--overwrite` builds the new run beside the old one and swaps it in only once it is complete."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from saelab.errors import ConfigError, DataError
from saelab.util.atomic import TEMP_PREFIX, atomic_write_json


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


def check_no_links(out: Path, dirs: Iterable[Path], run_files: Iterable[str]) -> None:
    """ConfigError for an SAE folder or output file that is a symbolic link: saelab writes nothing through links.

    `out` itself may be a link (the user named it); every path below it must be a plain folder or file,
    so no write lands outside what `out` resolves to.
    """
    out = Path(out)
    run_files = list(run_files)
    for d in dirs:
        d = Path(d)
        if d != out and d.is_symlink():
            raise ConfigError(
                "out",
                str(d),
                "is a symbolic link; saelab writes no output through links (remove it or choose another folder)",
            )
        for name in run_files:
            if (d / name).is_symlink():
                raise ConfigError(
                    "out", str(d / name), "is a symbolic link; saelab writes no output through links (remove it)"
                )


# ---- --overwrite: the new run is built beside the old one and swapped in once complete -------------

STAGING = ".saelab-new"  # inside the run folder: the replacing run, until it is complete
ASIDE = ".saelab-old"  # inside the run folder: the replaced run's files, during the swap only
COMPLETE = ".saelab-complete"  # in STAGING, written once the new run is complete: the swap's plan


def staging_dir(out: Path) -> Path:
    """Where a run that replaces the one in `out` is built (a fresh, empty folder)."""
    staging = Path(out) / STAGING
    drop_staging(out)
    staging.mkdir(parents=True)  # fails (FileExistsError) rather than build into a complete run awaiting its swap
    return staging


def drop_staging(out: Path) -> None:
    """Delete a replacing run that never completed (the old run in `out` was never touched); a complete one is kept for its swap."""
    staging = Path(out) / STAGING
    if (staging / COMPLETE).is_file():
        return
    if staging.is_symlink() or staging.is_file():
        staging.unlink()
    elif staging.exists():
        shutil.rmtree(staging)


def commit_staged(out: Path, member_names: list[str], run_files: Iterable[str], extra: Iterable[str] = ()) -> None:
    """Swap the complete staged run into `out`: its files replace the old run's, which are deleted only afterwards.

    The plan (which old paths go aside, which new ones come in) is written first, so a swap cut short
    (killed, power lost) is finished by `recover_swap` on the next run into `out`.
    """
    out, staging = Path(out), Path(out) / STAGING
    old_names = [*run_files, *extra]
    # A member folder may be nested (<hook>/<name>): it and every folder above it are walked, not moved whole.
    levels = [""] + sorted({"/".join(n.split("/")[: i + 1]) for n in member_names for i in range(n.count("/") + 1)})
    new = [
        f"{lvl}/{p.name}".lstrip("/")
        for lvl in levels
        for p in sorted((staging / lvl).iterdir())
        if p.name != COMPLETE and not (f"{lvl}/{p.name}".lstrip("/") in levels and p.is_dir())
    ]
    aside = sorted(
        {
            f"{lvl}/{n}".lstrip("/")
            for lvl in levels
            for n in old_names
            if (out / lvl / n).exists() or (out / lvl / n).is_symlink()
        }
        | {rel for rel in new if (out / rel).exists()}
    )
    atomic_write_json(staging / COMPLETE, {"aside": aside, "in": new, "members": member_names})
    recover_swap(out)


def recover_swap(out: Path) -> bool:
    """Finish a swap `commit_staged` began (its plan is on disk); drop a staged run that never completed. True if a swap was finished."""
    out, staging, aside_dir = Path(out), Path(out) / STAGING, Path(out) / ASIDE
    plan_path = staging / COMPLETE
    if not plan_path.is_file():
        drop_staging(out)
        if (out / ASIDE).is_dir() and not staging.exists():
            shutil.rmtree(out / ASIDE)  # a swap that had finished all but deleting the replaced files
        return False
    try:
        plan = json.loads(plan_path.read_text())
        paths = [*plan["aside"], *plan["in"]]
        if not all(isinstance(p, str) and p and not os.path.isabs(p) and ".." not in p.split("/") for p in paths):
            raise ValueError("a path outside the run folder")
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise DataError(
            f"{plan_path}: unreadable swap plan ({e}); move the old run's files back by hand or delete {staging}"
        ) from None
    new = set(plan["in"])
    aside_dir.mkdir(exist_ok=True)
    for i, rel in enumerate(plan["aside"]):
        # An old path goes aside unless its replacement already came in (a swap resumed after that rename).
        if (out / rel).exists() or (out / rel).is_symlink():
            if rel not in new or (staging / rel).exists():
                os.replace(out / rel, aside_dir / f"{i}-{rel.replace('/', '__')}")
    for rel in plan["in"]:
        if (staging / rel).exists():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, out / rel)
    shutil.rmtree(aside_dir)
    shutil.rmtree(staging)
    return True


def append_no_follow(path: Path):
    """`path` opened for appending, refusing a symbolic link (a planted link never redirects the log)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError:
        if path.is_symlink():
            raise ConfigError(
                "out", str(path), "is a symbolic link; saelab writes no output through links (remove it)"
            ) from None
        raise
    return os.fdopen(fd, "a")
