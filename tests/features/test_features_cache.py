"""The activation cache keeps the token, window and position of every row; older caches say how to rebuild."""

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from _features_util import CTX, harvest_cache, one_thread, run_cli, sae_folder, text_file, tiny_model_dir  # noqa: E402,F401 (one_thread is an autouse fixture)

from saelab.data.cache import CacheMeta, CacheWriter, read_row_index, verify_cache  # noqa: E402
from saelab.errors import DataError, SaelabError  # noqa: E402
from saelab.features.data import TokenGrid, load_feature_data  # noqa: E402
from saelab.sources.lm import model as hf  # noqa: E402
from saelab.sources.lm.text import TextConfig, iter_windows  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    model = tiny_model_dir(root, "llama")
    text = text_file(root, lines=60)
    return root, model, text


def test_rows_carry_token_window_position(setup):
    root, model, text = setup
    out = harvest_cache(model, text, root / "c", tokens=300)
    manifest = verify_cache(out)
    assert manifest["row_index"]["columns"] == ["token", "window", "position"]
    assert all("index_file" in s for s in manifest["shards"]) and len(manifest["shards"]) >= 2
    index = read_row_index(out)
    assert index.shape == (300, 3) and index.dtype == np.int32
    tok = hf.load_lm(model).tokenizer
    windows = list(iter_windows(tok, TextConfig(text, CTX)))
    assert manifest["row_index"]["first_token_id"] == windows[0][0]
    for token, window, position in index:
        assert 1 <= position < CTX and windows[window][position] == token
    # Row order is window-major, position-minor, with no position dropped (no outlier screen here).
    np.testing.assert_array_equal(index[:, 1] * CTX + index[:, 2], np.sort(index[:, 1] * CTX + index[:, 2]))
    assert index[0].tolist()[1:] == [0, 1] and index[CTX - 1].tolist()[1:] == [1, 1]


def test_extended_cache_continues_the_index(setup):
    root, model, text = setup
    # 60 rows = one whole batch of 4 windows x 15 rows, so growing to 120 matches a 120-row harvest.
    small = harvest_cache(model, text, root / "grow", tokens=60)
    argv = ["lm", "activations", "--model", model, "--text", text, "--out", small, "--layer", "1", "--site", "resid_post",
            "--tokens", "120", "--context", str(CTX), "--batch-size", "4", "--shard-rows", "100", "--extend"]  # fmt: skip
    assert run_cli(argv) == 0
    ref = harvest_cache(model, text, root / "ref", tokens=120)
    np.testing.assert_array_equal(read_row_index(small), read_row_index(ref))


def test_corrupt_index_is_named(setup):
    root, model, text = setup
    out = harvest_cache(model, text, root / "bad", tokens=100)
    path = root / "bad" / "index-00000.npy"
    arr = np.load(path)
    arr[0, 0] += 1
    np.save(path, arr)
    with pytest.raises(DataError, match="index-00000.npy.*sha256"):
        verify_cache(out)


def test_old_cache_without_index_says_how_to_rebuild(tmp_path, setup):
    root, model, text = setup
    meta = CacheMeta(
        model=model, site="resid_post", layer=1, dtype="float32", d_in=32, context=CTX, tokenizer="t", text_source=text
    )
    w = CacheWriter(str(tmp_path / "old"), meta, shard_rows=10)
    w.append(np.zeros((12, 32), np.float32))
    w.close()
    for call in (lambda: read_row_index(str(tmp_path / "old")), lambda: load_feature_data(tmp_path / "old")):
        with pytest.raises(DataError, match="no token/window/position index.*rebuild it with") as err:
            call()
        assert "\n" not in str(err.value)
    sae = sae_folder(tmp_path / "sae")
    with pytest.raises(SaelabError, match="rebuild"):
        run_cli(
            [
                "lm",
                "examples",
                "--sae",
                sae,
                "--activations",
                str(tmp_path / "old"),
                "--latents",
                "0",
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert not (tmp_path / "o").exists()


def test_an_indexed_writer_needs_an_index(tmp_path):
    meta = CacheMeta(
        model="m", site="resid_post", layer=1, dtype="float32", d_in=4, context=8, tokenizer="t", text_source="x"
    )
    w = CacheWriter(str(tmp_path / "c"), meta, extra={"row_index": {"columns": ["token", "window", "position"]}})
    with pytest.raises(ValueError, match="index of shape None"):
        w.append(np.zeros((2, 4), np.float32))


def test_token_grid_contexts():
    index = np.array([[7, 3, 1], [8, 3, 2], [9, 3, 3], [5, 4, 1], [6, 4, 3]])
    grid = TokenGrid.from_index(index, context=5, first_token_id=1)
    assert grid.tokens.tolist() == [[1, 7, 8, 9, -1], [1, 5, -1, 6, -1]]
    assert grid.rows.tolist() == [[-1, 0, 1, 2, -1], [-1, 3, -1, 4, -1]]
    assert grid.context_of(1, before=5, after=1) == ([1, 7, 8, 9], [-1, 0, 1, 2], 2)
    assert grid.context_of(4, before=1, after=3) == ([-1, 6, -1], [-1, 4, -1], 1)
    assert grid.first_window == 3 and grid.windows_of_rows(2, 5).tolist() == [0, 1]
    assert json.dumps(grid.tokens.tolist())  # plain ints
