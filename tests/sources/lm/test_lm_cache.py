"""Activation cache: shards + manifest round trip, resume, checksum and row-count errors."""

import json
import os

import numpy as np
import pytest

from saelab.data.cache import CACHE_FORMAT, CacheMeta, CacheWriter, check_out_folder, verify_cache
from saelab.errors import DataError, SaelabError

META = CacheMeta(
    model="tiny", site="resid_post", layer=1, dtype="float32", d_in=8, context=16,
    tokenizer="tok", text_source="t.txt", options={"drop_first": True},
)  # fmt: skip


def _rows(n, seed=0, d=8):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_round_trip_manifest_and_mmap(tmp_path):
    out = tmp_path / "c"
    w = CacheWriter(str(out), META, shard_rows=10)
    data = _rows(25)
    for i in range(0, 25, 5):
        w.append(data[i : i + 5], cursor={"windows": i // 5 + 1})
    manifest = w.close()
    assert manifest["complete"] and manifest["n_rows"] == 25
    assert [s["rows"] for s in manifest["shards"]] == [10, 10, 5]
    on_disk = json.loads((out / "manifest.json").read_text())
    for key in ("format", "model", "site", "layer", "dtype", "d_in", "n_rows", "context", "tokenizer",
                "text_source", "shards", "complete"):  # fmt: skip
        assert key in on_disk
    assert on_disk["format"] == CACHE_FORMAT
    assert verify_cache(str(out))["n_rows"] == 25
    back = np.concatenate([np.load(out / s["file"], mmap_mode="r") for s in manifest["shards"]])
    np.testing.assert_array_equal(back, data)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]


def test_float16_cache(tmp_path):
    meta = CacheMeta(**{**META.__dict__, "dtype": "float16"})
    w = CacheWriter(str(tmp_path / "c"), meta, shard_rows=4)
    w.append(_rows(6))
    w.close()
    arr = np.load(tmp_path / "c" / "shard-00000.npy", mmap_mode="r")
    assert arr.dtype == np.float16 and verify_cache(str(tmp_path / "c"))["dtype"] == "float16"


def test_resume_after_interruption(tmp_path):
    out = str(tmp_path / "c")
    w = CacheWriter(out, META, shard_rows=4)
    w.append(_rows(5, 1), cursor={"windows": 1})  # flushed: shard 0
    w.append(_rows(3, 2), cursor={"windows": 2})  # buffered, lost in the "crash"
    # A half-written temp file and an unlisted shard, as a crash mid-write would leave.
    open(os.path.join(out, ".tmp-junk"), "wb").close()
    open(os.path.join(out, "shard-00001.npy"), "wb").close()
    del w
    assert check_out_folder(out)["n_rows"] == 5
    w2 = CacheWriter(out, META, shard_rows=4)
    assert w2.n_rows == 5 and w2.cursor == {"windows": 1}
    assert sorted(os.listdir(out)) == ["manifest.json", "shard-00000.npy"]
    w2.append(_rows(3, 2), cursor={"windows": 2})
    m = w2.close()
    assert m["n_rows"] == 8 and verify_cache(out)["complete"]


def test_resume_refuses_other_identity_and_complete_cache(tmp_path):
    out = str(tmp_path / "c")
    w = CacheWriter(out, META, shard_rows=2)
    w.append(_rows(2))
    with pytest.raises(SaelabError, match="layer=1"):
        CacheWriter(out, CacheMeta(**{**META.__dict__, "layer": 2}))
    w.close()
    with pytest.raises(SaelabError, match="complete activation cache"):
        CacheWriter(out, META)


def test_extend_appends_to_a_complete_cache_and_keeps_old_shards(tmp_path):
    out = str(tmp_path / "c")
    first = _rows(8, 1)
    w = CacheWriter(out, META, shard_rows=4)
    w.append(first, cursor={"windows": 2})
    w.close()
    before = {s["file"]: s["sha256"] for s in verify_cache(out)["shards"]}
    with pytest.raises(SaelabError, match="layer=1"):
        CacheWriter(out, CacheMeta(**{**META.__dict__, "layer": 2}), extend=True)
    w2 = CacheWriter(out, META, shard_rows=4, extend=True)
    assert w2.n_rows == 8 and w2.cursor == {"windows": 2}
    # Until it is closed the extended cache reads as incomplete: an interruption resumes without --extend.
    with pytest.raises(DataError, match="incomplete"):
        verify_cache(out)
    second = _rows(4, 2)
    w2.append(second, cursor={"windows": 3})
    m = w2.close()
    assert m["complete"] and m["n_rows"] == 12 and m["cursor"] == {"windows": 3}
    after = {s["file"]: s["sha256"] for s in verify_cache(out)["shards"]}
    assert {k: after[k] for k in before} == before
    back = np.concatenate([np.load(os.path.join(out, s["file"])) for s in m["shards"]])
    np.testing.assert_array_equal(back, np.concatenate([first, second]))


def test_refuses_non_empty_foreign_folder(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(SaelabError, match="not empty"):
        CacheWriter(str(tmp_path / "c"), META)
    assert os.listdir(tmp_path / "c") == ["notes.txt"]


def _complete_cache(tmp_path):
    out = tmp_path / "c"
    w = CacheWriter(str(out), META, shard_rows=4)
    w.append(_rows(8))
    w.close()
    return out


def test_checksum_mismatch_names_shard(tmp_path):
    out = _complete_cache(tmp_path)
    shard = out / "shard-00000.npy"
    arr = np.load(shard)
    arr[0, 0] += 1.0
    np.save(shard, arr)
    with pytest.raises(DataError, match="shard-00000.npy.*sha256") as err:
        verify_cache(str(out))
    assert "\n" not in str(err.value)
    verify_cache(str(out), checksums=False)  # shape and dtype still fine


def test_row_count_mismatch_names_shard(tmp_path):
    out = _complete_cache(tmp_path)
    np.save(out / "shard-00000.npy", _rows(3))
    with pytest.raises(DataError, match="shard-00000.npy.*shape"):
        verify_cache(str(out))


def test_missing_shard_and_incomplete_cache(tmp_path):
    out = _complete_cache(tmp_path)
    os.unlink(out / "shard-00000.npy")
    with pytest.raises(DataError, match="shard-00000.npy.*missing"):
        verify_cache(str(out))
    w = CacheWriter(str(tmp_path / "d"), META, shard_rows=2)
    w.append(_rows(2))
    with pytest.raises(DataError, match="incomplete"):
        verify_cache(str(tmp_path / "d"))


def test_store_reads_cache_folder(tmp_path):
    store_mod = pytest.importorskip("saelab.data.store")
    out = _complete_cache(tmp_path)
    store = store_mod.ActivationStore(str(out))
    assert store.n_rows == 8 and store.d_in == 8
