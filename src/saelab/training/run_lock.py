"""One training per output folder: a lock file holding the owner's PID, removed on exit, stale ones detected.

A run locks every folder it writes (its own and each SAE folder inside it) and respects locks held
above and below them: a run into `parent/` refuses while another process trains into `parent/sub/`,
and the other way round. A process never blocks itself (a sweep's trainings nest in one process).
The lock is a PID file rather than an flock (filelock): it must say who holds it in the error, and
survive on file systems where flock is advisory-only or absent; a lock whose owner is gone is stale
and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from saelab.errors import ConfigError

LOCK_FILE = ".saelab-lock"
YOUNG_LOCK_S = 5.0


def _process_start(pid: int) -> str | None:
    # The start time tells a live owner from an unrelated process that reused its PID (Linux /proc only).
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    return True


def _owner_alive(info: dict) -> bool:
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if info.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process on a shared file system: cannot be checked, so respected
    if not _alive(pid):
        return False
    started = info.get("started")
    return started is None or _process_start(pid) in (None, started)


def _holder(lock_path: Path) -> dict | None:
    """The live owner's info of the lock file at `lock_path` when another process holds it, else None."""
    if not lock_path.is_file():
        return None
    info = RunLock(lock_path.parent)._read()
    if info.get("pid") == os.getpid() and info.get("host") in (None, socket.gethostname()):
        return None  # this process: a sweep's training nested in it
    return info if info.get("starting") or _owner_alive(info) else None


def check_nested(folder: Path) -> None:
    """ConfigError when another live training holds a lock on a folder above `folder` or inside it."""
    folder = Path(folder)
    for above in Path(os.path.abspath(folder)).parents:
        info = _holder(above / LOCK_FILE)
        if info is not None:
            raise ConfigError(
                "out",
                str(folder),
                f"inside {above}, which another saelab training (pid {info.get('pid')}) is writing; "
                f"wait for it to finish (or delete {above / LOCK_FILE} if that process is not saelab)",
            )
    if not folder.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(folder):  # links are not followed
        here = Path(dirpath)
        info = _holder(here / LOCK_FILE) if here != folder and LOCK_FILE in filenames else None
        if info is not None:
            raise ConfigError(
                "out",
                str(folder),
                f"holds {here}, which another saelab training (pid {info.get('pid')}) is writing; "
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
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = self._read()
                if info.get("starting") or _owner_alive(info):
                    raise ConfigError(
                        "out",
                        str(self.folder),
                        f"another saelab training (pid {info.get('pid')}) is writing to this folder; "
                        f"wait for it to finish (or delete {self.path} if that process is not saelab)",
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            except OSError as e:
                self._remove_created_folder()
                raise ConfigError("out", str(self.folder), f"cannot write in the folder ({e.strerror or e})") from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            self.held = True
            return
        raise ConfigError(
            "out", str(self.folder), f"could not take the lock {self.path}; another training is starting there"
        )

    def _read(self) -> dict:
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return {}
        try:
            info = json.loads(text)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            # Empty or garbage: a lock a moment old may be one another process has created and not yet
            # written, so it is respected; an older one proves no owner and is stale.
            return {"pid": "unknown", "starting": True} if age < YOUNG_LOCK_S else {}
        return info

    def release(self) -> None:
        """Remove the lock (and the folder, if this lock created it and nothing else was written)."""
        if not self.held:
            return
        self.held = False
        self.path.unlink(missing_ok=True)
        self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        if self.created_folder:
            try:
                self.folder.rmdir()  # only succeeds when empty: a failed first run leaves no trace
            except OSError:
                pass
