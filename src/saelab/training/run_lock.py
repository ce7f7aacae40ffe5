"""One training per output folder: a lock file naming its owner, removed on exit, stale ones taken over.

A run locks every folder it writes (its own and each SAE folder inside it) and respects locks held
above and below them: a run into `parent/` refuses while another process trains into `parent/sub/`,
and the other way round. A process never blocks itself (a sweep's trainings nest in one process).
The lock is filelock's SoftFileLock, a marker file holding the owner's PID, host and process start
time rather than an flock: the error must name the holder, and flock is advisory-only or absent on
some network file systems. A marker whose owner on this host is gone is stale and taken over; one
from another host is respected (it cannot be checked from here); a malformed one counts after 2 s.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import SoftFileLock, Timeout

from saelab.errors import ConfigError

LOCK_FILE = ".saelab-lock"


def _holder(lock_path: Path) -> int | str | None:
    """The PID of another live process holding the lock at `lock_path` ("unknown" if unrecorded), else None."""
    if not lock_path.is_file():
        return None
    lock = SoftFileLock(str(lock_path), timeout=0)
    if lock.is_lock_held_by_us:
        return None  # this process: a sweep's training nested in it
    try:
        lock.acquire()  # free or stale: taken (a stale marker is removed) and let go at once
    except Timeout:
        return lock.pid or "unknown"
    except OSError:
        return None  # cannot be taken from here (read-only folder): nobody can be writing under it through us
    lock.release()
    return None


def check_nested(folder: Path) -> None:
    """ConfigError when another live training holds a lock on a folder above `folder` or inside it."""
    folder = Path(folder)
    for above in Path(os.path.abspath(folder)).parents:
        pid = _holder(above / LOCK_FILE)
        if pid is not None:
            raise ConfigError(
                "out",
                str(folder),
                f"inside {above}, which another saelab training (pid {pid}) is writing; "
                f"wait for it to finish (or delete {above / LOCK_FILE} if that process is not saelab)",
            )
    if not folder.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(folder):  # links are not followed
        here = Path(dirpath)
        pid = _holder(here / LOCK_FILE) if here != folder and LOCK_FILE in filenames else None
        if pid is not None:
            raise ConfigError(
                "out",
                str(folder),
                f"holds {here}, which another saelab training (pid {pid}) is writing; "
                f"wait for it to finish (or delete {here / LOCK_FILE} if that process is not saelab)",
            )


class RunLocks:
    """Context manager: the RunLock of each folder in order (a run's folder, then each SAE folder), released in reverse."""

    def __init__(self, folders):
        self.locks = [RunLock(f) for f in dict.fromkeys(Path(f) for f in folders)]

    def __enter__(self) -> "RunLocks":
        taken = []
        try:
            for lock in self.locks:
                lock.acquire()
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for lock in reversed(self.locks):
            lock.release()


class RunLock:
    """Context manager: hold `folder/.saelab-lock` for the duration of one training.

    A second training into the same folder gets a one-line ConfigError naming the owner's PID.
    A lock whose process is gone (killed, machine rebooted) is stale and is taken over.
    The folder is created if needed, and removed again on exit if the run left nothing in it.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.created_folder = False
        self.held = False
        self.lock: SoftFileLock | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise ConfigError (another live training holds it, or the folder cannot be written)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError("out", str(self.folder), "exists and is not a folder")
        check_nested(self.folder)  # before the folder is created: a refused run leaves no trace
        try:
            self.created_folder = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError("out", str(self.folder), f"cannot create the folder ({e.strerror or e})") from None
        self.lock = SoftFileLock(str(self.path), timeout=0)
        try:
            self.lock.acquire()
        except Timeout:
            self._remove_created_folder()
            raise ConfigError(
                "out",
                str(self.folder),
                f"another saelab training (pid {self.lock.pid or 'unknown'}) is writing to this folder; "
                f"wait for it to finish (or delete {self.path} if that process is not saelab)",
            ) from None
        except OSError as e:
            self._remove_created_folder()
            raise ConfigError("out", str(self.folder), f"cannot write in the folder ({e.strerror or e})") from None
        self.held = True

    def release(self) -> None:
        """Remove the lock (and the folder, if this lock created it and nothing else was written)."""
        if not self.held:
            return
        self.held = False
        self.lock.release()
        self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        if self.created_folder:
            try:
                self.folder.rmdir()  # only succeeds when empty: a failed first run leaves no trace
            except OSError:
                pass
