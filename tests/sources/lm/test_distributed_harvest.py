"""Distributed LM harvest: 2 gloo ranks under torchrun write one cache holding the one-process harvest's rows.

The ranks write rows in another order (each its own shards), so caches are compared as sets of
rows: sorted by their (window, position) index, the indexes must be equal and the rows equal to
float rounding (the same batches pass through the same model; 1e-6 leaves room for BLAS blocking).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from _features_util import CTX, text_file, tiny_model_dir  # noqa: E402
from cli_harness import run_torchrun

from saelab.data.cache import read_row_index, verify_cache  # noqa: E402
from saelab.sources.lm.harvest import HarvestConfig, harvest  # noqa: E402

# 2 windows of 16 tokens per batch, position 0 dropped: 30 rows a batch, 60 a round of 2 ranks.
BATCH, SHARD_ROWS = 2, 64


@pytest.fixture(scope="module")
def lm_and_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("harvest")
    return tiny_model_dir(root), text_file(root, lines=80)


def _torchrun_harvest(model: str, text: str, out: Path, tokens: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        "-m",
        "saelab",
        "lm",
        "activations",
        "--model",
        model,
        "--text",
        text,
        "--out",
        str(out),
        "--layer",
        "1",
        "--tokens",
        str(tokens),
        "--context",
        str(CTX),
        "--batch-size",
        str(BATCH),
        "--shard-rows",
        str(SHARD_ROWS),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = run_torchrun(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _harvest_here(model: str, text: str, out: Path, tokens: int, outliers: float | None = None) -> None:
    torch.set_num_threads(1)
    harvest(
        HarvestConfig(
            model=model,
            layer=1,
            site="resid_post",
            text=text,
            tokens=tokens,
            out=str(out),
            context=CTX,
            batch_size=BATCH,
            shard_rows=SHARD_ROWS,
            outlier_factor=outliers,
        )
    )


def _rows_by_index(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(index, rows) of a verified cache, sorted by (window, position)."""
    manifest = verify_cache(str(folder))
    index = read_row_index(str(folder), manifest)
    rows = np.concatenate([np.load(folder / s["file"]) for s in manifest["shards"]])
    order = np.lexsort((index[:, 2], index[:, 1]))
    return index[order], rows[order]


def _assert_same_rows(got: Path, want: Path) -> None:
    (gi, gr), (wi, wr) = _rows_by_index(got), _rows_by_index(want)
    np.testing.assert_array_equal(gi, wi)
    np.testing.assert_allclose(gr, wr, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # two torchrun launches of the model take ~30 s on a shared 2-core machine
def test_two_ranks_harvest_the_one_process_rows(lm_and_text, tmp_path):
    model, text = lm_and_text
    # Outlier screening makes the rows per batch uneven (a per-batch median), and 250 rows end mid-batch.
    _harvest_here(model, text, tmp_path / "one", 250, outliers=1.05)
    done = _torchrun_harvest(model, text, tmp_path / "two", 250, "--drop-outliers", "1.05")
    one, two = verify_cache(str(tmp_path / "one")), verify_cache(str(tmp_path / "two"))
    assert two["n_rows"] == one["n_rows"] == 250 and two["complete"]
    assert two["cursor"] == one["cursor"]  # the same windows were read, so a resume or --extend continues alike
    assert one["cursor"]["windows"] > 2 * 9  # the screen dropped rows (9 full batches would do): the counts were uneven
    _assert_same_rows(tmp_path / "two", tmp_path / "one")
    # Only rank 0 wrote the manifest and reported; the shards are numbered densely, nothing else is left.
    assert done.stdout.count("wrote 250 rows") == 1, done.stdout
    files = sorted(os.listdir(tmp_path / "two"))
    listed = sorted(["manifest.json", *(s["file"] for s in two["shards"]), *(s["index_file"] for s in two["shards"])])
    assert files == listed
    assert [s["file"] for s in two["shards"]] == [f"shard-{i:05d}.npy" for i in range(len(two["shards"]))]


@pytest.mark.slow
def test_killed_two_rank_harvest_resumes_to_the_one_process_rows(lm_and_text, tmp_path):
    model, text = lm_and_text
    _harvest_here(model, text, tmp_path / "one", 250)
    # What a kill after the second round's commit leaves: the manifest of 120 rows, still incomplete,
    # and a shard a rank wrote for the next round that rank 0 never listed.
    _torchrun_harvest(model, text, tmp_path / "two", 120)
    path = tmp_path / "two" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["cursor"] == {"windows": 8}
    path.write_text(json.dumps({**manifest, "complete": False}))
    np.save(tmp_path / "two" / f"shard-{len(manifest['shards']):05d}.npy", np.zeros((3, 32), np.float32))
    _torchrun_harvest(model, text, tmp_path / "two", 250)
    resumed = verify_cache(str(tmp_path / "two"))
    assert resumed["n_rows"] == 250 and resumed["complete"]
    assert resumed["shards"][: len(manifest["shards"])] == manifest["shards"]  # finished shards kept as they were
    _assert_same_rows(tmp_path / "two", tmp_path / "one")
