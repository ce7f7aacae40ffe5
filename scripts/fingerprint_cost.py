"""Cost of the full-byte data fingerprint: a 512 MiB .npy, hashed cold-cache-free (page cache warm), then from the digest cache."""

import os
import tempfile
import time

import numpy as np

os.environ["SAELAB_CACHE_DIR"] = tempfile.mkdtemp()
from saelab.data.store import ActivationStore
from saelab.training.fingerprint import data_fingerprint

d = tempfile.mkdtemp()
p = os.path.join(d, "x.npy")
np.save(p, np.random.default_rng(0).standard_normal((512 * 2**20 // (4 * 768), 768)).astype(np.float32))
size = os.path.getsize(p)
with open(p, "rb") as f:  # warm the page cache, and time a plain read as the reference
    t = time.perf_counter()
    while f.read(1 << 22):
        pass
    read_s = time.perf_counter() - t
store = ActivationStore(p)
t = time.perf_counter()
data_fingerprint(store)
first = time.perf_counter() - t
t = time.perf_counter()
data_fingerprint(store)
cached = time.perf_counter() - t
gb = size / 2**30
print(
    f"file {size / 2**20:.0f} MiB; plain read {read_s / gb:.2f} s/GiB; fingerprint first {first / gb:.2f} s/GiB ({first / read_s:.1f}x the read); cached {cached * 1e3:.1f} ms"
)
os.remove(p)
