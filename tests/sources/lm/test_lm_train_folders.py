"""The folders `saelab lm train` writes work with `lm examples` and `probe1d --tasks text` as cache-trained ones do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from _features_util import CTX, harvest_cache, one_thread, text_file, tiny_model_dir  # noqa: F401
from cli_harness import cli

import saelab
from saelab.data.store import ActivationStore

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    """(SAE folder from `lm train` on 640 tokens of block 1's residual stream, a 600-row cache of the same site, model, text)."""
    root = tmp_path_factory.mktemp("online_folders")
    model, text = tiny_model_dir(root), text_file(root, lines=200)
    code, _, err = cli(
        "lm", "train", "--model", model, "--text", text, "--sites", "1", "--tokens", "640", "--batch-size", "64",
        "--n-latents", "48", "--method", "topk", "--k", "4", "--context", str(CTX), "--lm-batch-size", "4",
        "--buffer-tokens", "256", "--eval-tokens", "120", "--no-progress", "--out", root / "run",
    )  # fmt: skip
    assert code == 0, err
    return str(root / "run" / HOOK), harvest_cache(model, text, root / "cache", tokens=600, layer=1), model, text


def test_lm_examples_reads_an_lm_train_folder(online_run, tmp_path):
    sae_dir, cache, _, _ = online_run
    code, out, err = cli(
        "lm", "examples", "--sae", sae_dir, "--activations", cache, "--top-fired", "4", "--out", tmp_path / "dash",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["latents"] == 4
    data = json.loads((tmp_path / "dash" / "examples.json").read_text())
    # Each latent's count and peak are those of the SAE's own codes on the cache's rows.
    store = ActivationStore(cache)
    with torch.no_grad():
        z = saelab.load(sae_dir).encode(torch.from_numpy(store.read_range(0, store.n_rows))).numpy()
    fired = (z > 0).sum(axis=0)
    assert [l["count"] for l in data["latents"]] == sorted(fired, reverse=True)[:4]
    for latent in data["latents"]:
        assert latent["count"] == fired[latent["latent"]]
        assert latent["max"] == pytest.approx(z[:, latent["latent"]].max(), rel=1e-3)
        assert latent["top"][0]["tokens"][0] == 1  # contexts start at the window's BOS


def test_probe1d_text_reads_an_lm_train_folder(online_run):
    sae_dir, cache, _, _ = online_run
    code, out, err = cli("probe1d", "--sae", sae_dir, "--tasks", "text", "--activations", cache, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["source"]["activations"] == cache and result["source"]["rows"] == [540, 600]
    fitted = [t for t in result["tasks"] if t["skipped"] is None]
    assert fitted and all(0 <= t["latent"] < 48 and np.isfinite(t["test_ce"]) for t in fitted)
    # The folder records text, not a cache: without --activations, one line saying what to give.
    code, _, err = cli("probe1d", "--sae", sae_dir, "--tasks", "text")
    assert code == 2 and len(err) == 1 and "saelab lm activations" in err[0] and "activations=None" in err[0]


def test_a_cache_of_another_site_is_refused_in_one_line(online_run, tmp_path):
    sae_dir, _, model, text = online_run
    other = harvest_cache(model, text, tmp_path / "cache2", tokens=300, layer=2)  # same width, another block
    for argv in (
        ("lm", "examples", "--sae", sae_dir, "--activations", other, "--top-fired", "2", "--out", tmp_path / "d"),
        ("probe1d", "--sae", sae_dir, "--tasks", "text", "--activations", other),
    ):
        code, _, err = cli(*argv)
        assert code == 2 and len(err) == 1, err
        assert "holds blocks.2.hook_resid_post, but the SAE was trained on blocks.1.hook_resid_post" in err[0]
