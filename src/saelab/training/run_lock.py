"""One training per output folder: a lock file holding the owner's PID, removed on exit, stale ones detected."""

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
                    raise ConfigError("out", str(self.folder), f"another saelab training (pid {info.get('pid')}) is writing to this folder; "
                                      f"wait for it to finish (or delete {self.path} if that process is not saelab)") from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            except OSError as e:
                self._remove_created_folder()
                raise ConfigError("out", str(self.folder), f"cannot write in the folder ({e.strerror or e})") from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            self.held = True
            return
        raise ConfigError("out", str(self.folder), f"could not take the lock {self.path}; another training is starting there")

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
