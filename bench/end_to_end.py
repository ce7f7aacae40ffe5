"""Tokens/s of `saelab train` on an activation cache against the bare step loop (not part of the test suite).

    .venv/bin/python bench/end_to_end.py                     # d 768, 4,096 latents, k 32, batch 4096, 24 steps
    .venv/bin/python bench/end_to_end.py --sync              # also the trainer with prefetch off
    .venv/bin/python bench/end_to_end.py --json > r.jsonl    # one record per line; the table goes to stderr

In one process, on one cache (a folder of .npy shards plus manifest.json, as `saelab lm cache`
writes; toy rows, written once under --dir and reused):
  bare step loop   saelab.training.member.train_step on a member from saelab.training.member.build_member (the
                   trainer's step), over batches already in memory: the ceiling
  saelab train     saelab.training.trainer.Trainer(...).fit() on the cache with the same SAE and batch: its
                   loop's wall time (first batch asked for → last step's bookkeeping; reading,
                   shuffling, moving, logging included, start-up and final evaluation not), and the
                   time inside its steps, which the trainer measures itself
  --sync           the same trainer with prefetch_depth = 0 (each batch read when its step starts)
The default shuffle buffer (128 MiB here, 1024 MiB in TrainConfig) is smaller than the training
rows, so the run crosses buffer boundaries and the refills are part of what is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.data.cache import CacheMeta, CacheWriter, read_manifest
from saelab.data.store import ActivationStore, split_rows
from saelab.data.stream import BatchStream
from saelab.training.member import build_member, train_step
from saelab.training.trainer import Trainer

CHUNK_ROWS = 8192
DISTINCT_BATCHES = 8  # the bare loop cycles through these: a step's cost does not depend on which rows it sees


def build_cache(folder: Path, rows: int, d: int, seed: int = 0) -> Path:
    """A float32 activation cache of `rows` toy rows (sparse sums of unit directions plus noise); reused when present."""
    meta = CacheMeta(
        model="toy", site="toy", layer=0, dtype="float32", d_in=d, context=1, tokenizer="-", text_source="toy"
    )
    if (folder / "manifest.json").exists():
        m = read_manifest(str(folder))
        if m.get("complete") and m["n_rows"] == rows and m["d_in"] == d:
            return folder
        shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    features, active = 4 * d, 16
    dictionary = rng.standard_normal((features, d)).astype(np.float32)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    writer = CacheWriter(str(folder), meta)
    for lo in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - lo)
        idx = rng.integers(0, features, size=(n, active))
        mags = rng.uniform(0.5, 1.5, size=(n, active)).astype(np.float32)
        x = np.einsum("na,nad->nd", mags, dictionary[idx]) + rng.standard_normal((n, d), dtype=np.float32) * (
            0.05 / d**0.5
        )
        writer.append(x.astype(np.float32))
    writer.close()
    return folder


def sae_config(a) -> SAEConfig:
    """The SAE both loops train."""
    return SAEConfig(n_latents=a.n, method="topk", method_params={"k": a.k})


def train_config(a, cache: Path, out: Path) -> TrainConfig:
    """The trainer's config (the bare loop uses its batch size and optimizer settings)."""
    return TrainConfig(
        activations=str(cache), out=str(out), batch_size=a.batch, steps=a.steps, shuffle_buffer_mb=a.buffer_mb
    )


def buffers_touched(stream: BatchStream, steps: int) -> int:
    """Shuffle buffers the first `steps` batches read (the first fill included)."""
    starts, _ = stream._epoch_layout(0)
    ends = {
        int(np.searchsorted(starts, p * stream.batch_size + off, side="right"))
        for p in range(steps)
        for off in (0, stream.batch_size - 1)
    }
    return len(ends)


def bare_loop(a, cache: Path) -> dict:
    """Time saelab.training.member.train_step over batches already in memory (the trainer's own batches, cycled)."""
    t = train_config(a, cache, Path("-"))
    store = ActivationStore(cache)
    split = split_rows(store.n_rows, t.eval_fraction)
    stream = BatchStream(store, split.train, a.batch, t.seed, t.shuffle_buffer_mb * 2**20 // (4 * store.d_in))
    batches = [torch.from_numpy(stream.batch(p)[0]) for p in range(min(a.steps, DISTINCT_BATCHES))]
    cfg = sae_config(a)
    cfg.d_in = store.d_in
    sample = torch.from_numpy(store.read(np.arange(split.train[0], min(split.train[1], split.train[0] + 16384))))
    member = build_member(cfg, t, sample, 0, Path("-"))
    refills = buffers_touched(stream, a.steps) - 1
    del stream
    start = time.perf_counter()
    for step in range(a.steps):
        train_step(member, batches[step % len(batches)], member.base_lr, t.grad_clip)
    wall = time.perf_counter() - start
    return {
        "what": "bare",
        "tokens_per_s": a.steps * a.batch / wall,
        "ms_per_step": 1000 * wall / a.steps,
        "refills": refills,
    }


def trainer_run(a, cache: Path, depth: int) -> dict:
    """Time Trainer.fit on the cache; the loop's throughput as the trainer measured it."""
    run = RunConfig(train_config(a, cache, Path(a.dir) / f"run-depth{depth}"), [sae_config(a)])
    trainer = Trainer(run, progress=False)
    trainer.prefetch_depth = depth
    start = time.perf_counter()
    trainer.fit(overwrite=True)
    th = trainer.throughput
    return {
        "what": f"train-depth{depth}",
        "prefetch_depth": depth,
        "tokens_per_s": th.tokens_per_s,
        "step_tokens_per_s": th.step_tokens_per_s,
        "throughput_ratio": th.ratio,
        "ms_per_step": 1000 * th.wall_s / a.steps,
        "step_ms_per_step": 1000 * th.step_s / a.steps,
        "wait_s": th.wait_s,
        "loop_s": th.wall_s,
        "command_s": time.perf_counter() - start,
    }


def main() -> None:
    """Build the cache, time both loops, print the table (and JSON records)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--n", type=int, default=4096, help="latents")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--rows", type=int, default=200_000, help="rows in the cache (5%% held out)")
    p.add_argument("--buffer-mb", type=int, default=128, help="shuffle buffer (TrainConfig's default is 1024)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sync", action="store_true", help="also time the trainer with prefetch off")
    p.add_argument("--dir", default="/tmp/saelab-bench-end-to-end", help="where the cache and runs go")
    p.add_argument("--json", action="store_true", help="one JSON record per line on stdout (table on stderr)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    began = time.perf_counter()
    cache = build_cache(Path(a.dir) / "cache", a.rows, a.d)
    print(f"cache: {a.rows:,} × {a.d} float32 in {cache} ({time.perf_counter() - began:.1f} s)", file=sys.stderr)
    load = os.getloadavg()[0]
    results = []
    for phase in [lambda: bare_loop(a, cache), lambda: trainer_run(a, cache, depth=2)] + (
        [lambda: trainer_run(a, cache, depth=0)] if a.sync else []
    ):
        began = time.perf_counter()
        results.append(phase())
        print(
            f"{results[-1]['what']}: {results[-1]['ms_per_step']:.0f} ms/step ({time.perf_counter() - began:.1f} s in all)",
            file=sys.stderr,
        )
    load = (load + os.getloadavg()[0]) / 2
    bare = results[0]["tokens_per_s"]
    meta = {
        "d_in": a.d,
        "n": a.n,
        "k": a.k,
        "batch": a.batch,
        "steps": a.steps,
        "rows": a.rows,
        "buffer_mb": a.buffer_mb,
        "threads": a.threads,
        "load_avg": round(load, 2),
    }

    print(
        f"\n(d_in, n, k) = ({a.d}, {a.n}, {a.k}), batch {a.batch}, {a.steps} steps, {a.rows:,} rows, shuffle buffer {a.buffer_mb} MiB "
        f"({results[0]['refills']} refill(s) after the first fill), {a.threads} threads, load average ≈ {load:.1f}",
        file=sys.stderr,
    )
    print(
        f"{'what':<38} {'tokens/s':>9} {'ms/step':>8} {'× bare':>7} {'× own steps':>11} {'waited s':>9}",
        file=sys.stderr,
    )
    print(
        f"{'bare step loop (batches in memory)':<38} {bare:>9,.0f} {results[0]['ms_per_step']:>8.0f} {1:>7.2f} {'':>11} {'':>9}",
        file=sys.stderr,
    )
    for r in results[1:]:
        label = "saelab train, end to end" + (" (no prefetch)" if r["prefetch_depth"] == 0 else "")
        r["vs_bare"] = r["tokens_per_s"] / bare
        print(
            f"{label:<38} {r['tokens_per_s']:>9,.0f} {r['ms_per_step']:>8.0f} {r['vs_bare']:>7.2f} {r['throughput_ratio']:>11.2f} {r['wait_s']:>9.2f}",
            file=sys.stderr,
        )
        print(
            f"{'  its steps alone':<38} {r['step_tokens_per_s']:>9,.0f} {r['step_ms_per_step']:>8.0f} {r['step_tokens_per_s'] / bare:>7.2f} {'':>11} {'':>9}",
            file=sys.stderr,
        )
    if a.json:
        for r in results:
            print(json.dumps({**meta, **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}}))


if __name__ == "__main__":
    main()
