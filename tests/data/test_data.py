"""Activation stores and the shuffled stream."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from saelab.data.store import ActivationStore, split_rows
from saelab.data.stream import BatchStream
from saelab.errors import DataError


def _data(n=5000, d=6):
    return np.arange(n * d, dtype=np.float32).reshape(n, d)


def test_npy_safetensors_and_shard_folder_read_the_same_rows(tmp_path):
    x = _data()
    np.save(tmp_path / "a.npy", x)
    save_file({"activations": x.astype(np.float16)}, str(tmp_path / "a.safetensors"))
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "s0.npy", x[:1234])
    save_file({"x": x[1234:]}, str(tmp_path / "shards" / "s1.safetensors"))
    rows = np.array([4999, 0, 1234, 1233, 17])
    for path in ("a.npy", "shards"):
        store = ActivationStore(tmp_path / path)
        assert store.n_rows == 5000 and store.d_in == 6
        np.testing.assert_array_equal(store.read(rows), x[rows])
    half = ActivationStore(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(half.read(rows), x[rows].astype(np.float16).astype(np.float32))
    assert ActivationStore(tmp_path / "shards").locate(1300)[1] == 66


def test_non_finite_rows_are_named_with_file_and_row(tmp_path):
    x = _data(300)
    x[207, 3] = np.nan
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(DataError, match=r"bad\.npy: row 207 .*nan"):
        ActivationStore(tmp_path / "bad.npy").scan_finite(chunk_rows=64)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: np.save(p / "e.npy", np.zeros((0, 4), np.float32)) or p / "e.npy", "no rows"),
        (lambda p: np.save(p / "i.npy", np.zeros((4, 4), np.int32)) or p / "i.npy", "dtype int32"),
        (lambda p: np.save(p / "v.npy", np.zeros(4, np.float32)) or p / "v.npy", "expected \\[N, d_in\\]"),
        (lambda p: (p / "t.txt").write_text("x") and p / "t.txt", "unsupported file type"),
        (lambda p: p / "missing.npy", "no such file"),
    ],
)
def test_bad_files_get_one_line_errors(tmp_path, make, match):
    with pytest.raises(DataError, match=match):
        ActivationStore(make(tmp_path))


@pytest.mark.parametrize("buffer_rows", [100_000, 2048])
def test_stream_visits_every_row_once_per_epoch_and_resumes_anywhere(tmp_path, buffer_rows):
    x = _data(5000)
    np.save(tmp_path / "a.npy", x)
    store = ActivationStore(tmp_path / "a.npy")
    split = split_rows(store.n_rows, 0.1)
    stream = BatchStream(store, split.train, 100, seed=3, buffer_rows=buffer_rows)
    assert stream.steps_per_epoch == 45
    seen = np.concatenate([stream.batch(p)[1] for p in range(45)])
    assert len(np.unique(seen)) == 4500 and seen.max() < 4500
    second = np.concatenate([stream.batch(p)[1] for p in range(45, 90)])
    assert not np.array_equal(seen, second)  # reshuffled
    fresh = BatchStream(store, split.train, 100, seed=3, buffer_rows=buffer_rows)
    batch, rows = fresh.batch(61)
    np.testing.assert_array_equal(batch, x[rows])
    np.testing.assert_array_equal(rows, stream.batch(61)[1])
