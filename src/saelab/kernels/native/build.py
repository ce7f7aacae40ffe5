"""Compile rows.cpp once per machine into saelab's cache folder and load it with ctypes.

No Python extension API and no torch headers: a plain C ABI over data pointers compiles in about
two seconds with the system's C++ compiler (torch.utils.cpp_extension takes about a minute for the
same kernels, most of it parsing torch's headers). `make install` builds it ahead of time
(`python -m saelab.kernels.native`); otherwise the first sparse step that can use it does.
It is compiled with -march=native (the vector width is chosen at compile time), so the library's
name carries a digest of the source, the compiler's version, the flags and this CPU's feature
flags: a changed source, compiler or CPU (a home folder shared between machines) builds a new one.
A compiler that refuses -march=native builds without it. It is built with OpenMP (-fopenmp) where the
compiler has it and torch runs on GNU libgomp (its Linux wheels), so its threads are the pool torch's
CPU operators already keep (one runtime: the library asks for libgomp.so.1, which torch has loaded).
Where torch brings another OpenMP runtime, or that build or its load fails, a build without OpenMP
(on std::threads) is used: two OpenMP pools would fight over the cores as threads of our own do. A finished build is renamed into place,
so a concurrent or interrupted build never leaves a half-written library behind.

SAELAB_NATIVE=0 switches the kernels off (the torch path runs, as it does without a compiler);
CXX names the compiler (default: c++, then g++, then clang++).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from filelock import FileLock

from saelab.util.cache_dir import cache_dir

SOURCE = Path(__file__).with_name("rows.cpp")
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-pthread"]
NATIVE = ["-march=native"]
OPENMP = ["-fopenmp"]
BUILD_TIMEOUT_S = 300

_P, _I, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
SIGNATURES = {
    "sl_sort_by_latent": [_P, _I, _I, _P, _P],
    "sl_rows_in_order": [_P, _I, _P, _I, _P],
    "sl_segment_dots_sums": [_P, _P, _I, _P, _P, _P, _P, _I, _I, _P, _P, _INT],
    "sl_gather_sum": [_P, _INT, _I, _P, _P, _P, _I, _P, _INT],
    "sl_segment_sums_columns": [_P, _I, _P, _P, _P, _P, _I, _P, _I, _INT],
    "sl_topk_among": [_P, _INT, _I, _I, _P, _I, _I, _P, _P, _P, _INT],
    "sl_project_rows": [_P, _P, _I, _I, _INT],
    "sl_select_rows": [_P, _INT, _I, _I, _P, _I, _I, _INT, _P, _P, _P, _I, _I, _P, _P, _P, _INT],
}


class Unavailable(Exception):
    """The native kernels cannot be used here; the message says why."""


def enabled() -> bool:
    """Whether SAELAB_NATIVE allows the native kernels (anything but 0/off/false/no)."""
    return os.environ.get("SAELAB_NATIVE", "1").strip().lower() not in ("0", "off", "false", "no")


def compiler() -> str | None:
    """The C++ compiler to use: $CXX, else the first of c++, g++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)


def cpu_flags() -> str:
    """This CPU's feature flags (Linux: /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


def library_path(cxx: str, extra: list[str] = OPENMP) -> Path:
    """Where the library built by `cxx` (with the `extra` flags) from today's source for this CPU lives."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = SOURCE.read_bytes() + version.encode() + " ".join(FLAGS + NATIVE + extra).encode() + cpu_flags().encode()
    return cache_dir() / "native" / f"saelab_rows-{hashlib.sha256(key).hexdigest()[:16]}.so"


def build(cxx: str, target: Path, extra: list[str] = OPENMP) -> None:
    """Compile rows.cpp with the `extra` flags into `target` (atomically; under a file lock so concurrent processes build once)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            for native in (NATIVE, []):
                done = subprocess.run(
                    [cxx, *FLAGS, *native, *extra, "-o", tmp, str(SOURCE)],
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT_S,
                )
                if done.returncode == 0:
                    break
            if done.returncode != 0:
                first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:200])
                raise Unavailable(f"{Path(cxx).name} failed on rows.cpp: {first}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def load() -> ctypes.CDLL:
    """The loaded library, built first if needed; raises Unavailable (one attempt per process)."""
    if not enabled():
        raise Unavailable("switched off by SAELAB_NATIVE")
    found = _load_once()
    if isinstance(found, Unavailable):
        raise found
    return found


@functools.cache
def _load_once() -> ctypes.CDLL | Unavailable:
    try:
        return _build_and_load()
    except Unavailable as err:
        return err


def torch_uses_libgomp() -> bool:
    """Whether GNU libgomp is loaded in this process once torch is (Linux: /proc/self/maps)."""
    import torch  # noqa: F401  (loads torch's OpenMP runtime if it has not been loaded yet)

    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


def _build_and_load() -> ctypes.CDLL:
    cxx = compiler()
    if cxx is None:
        raise Unavailable("no C++ compiler found (set CXX)")
    failed: Unavailable | None = None
    for extra in (OPENMP, []) if torch_uses_libgomp() else ([],):  # without OpenMP if its build or load fails
        try:
            path = library_path(cxx, extra)
            build(cxx, path, extra)
            lib = ctypes.CDLL(str(path))
            break
        except Unavailable as err:
            failed = failed or err
        except (OSError, subprocess.SubprocessError) as err:
            failed = failed or Unavailable(f"could not build or load the library: {err}")
    else:
        assert failed is not None
        raise failed
    for name, args in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, None
    lib.sl_openmp.argtypes, lib.sl_openmp.restype = [], _INT
    return lib
