"""Helpers shared by the reliability and fuzz tests: run `saelab` in this process and read what it said."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

from saelab.cli import main


def cli(*args) -> tuple[int, str, list[str]]:
    """(exit status, stdout, non-empty stderr lines) of `saelab ARGS`, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library warnings are not saelab's messages
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse exits on its own
            code = e.code if isinstance(e.code, int) else 2
    return code, out.getvalue(), [line for line in err.getvalue().splitlines() if line.strip()]


def error_line(result: tuple[int, str, list[str]]) -> str:
    """The single `saelab: error:` line of a refused command (asserts exit status 2 and exactly one line)."""
    code, _, err = result
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("saelab: error: "), err
    return err[0]


def ok_or_one_line_error(result: tuple[int, str, list[str]]) -> None:
    """Every CLI entry point either succeeds or exits 2 with one `saelab: error:` line."""
    if result[0] != 0:
        error_line(result)


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as a strict reader (JavaScript, jq) would."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """{relative path: sha256} of every file under `root`, except those under `skip`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            p = here / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        out.update({str((here / d).relative_to(root)) + "/": "dir" for d in dirnames if here / d != skip})
    return out


def train_args(data, out, *extra, steps=6):
    """Arguments of a tiny `saelab train` run (TopK k 2, 8 latents, batch 32) on `data` into `out`."""
    return [
        "train",
        "--activations",
        data,
        "--n-latents",
        "8",
        "--steps",
        str(steps),
        "--batch-size",
        "32",
        "--out",
        out,
        "--no-progress",
        "--method",
        "topk",
        "--k",
        "2",
        *extra,
    ]


# What a torchrun rank printed when it died at exit still in gloo's process group (fixed by
# util.distributed leaving the group at exit; tests/util/test_distributed_exit.py).
NATIVE_ABORT = "terminate called without an active exception"


TORCHRUN = Path(sys.executable).with_name("torchrun")


def run_torchrun(args: list[str], nproc: int = 2, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run of `torchrun --nproc-per-node NPROC` on 127.0.0.1 at a free port, then `args` (a script or `-m module` and its arguments)."""
    launcher = [str(TORCHRUN), "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1"]
    return subprocess.run([*launcher, "--master-port", str(free_port()), *args], **kwargs)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
