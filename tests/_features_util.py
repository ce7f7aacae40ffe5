"""Shared builders for the feature tests: a tiny random LM saved to disk, a text file, a cache with its row index, an SAE folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.config import SAEConfig
from saelab.formats.folder import save_sae
from saelab.model.sae import SparseAutoencoder

CTX = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for these tests: the machine is shared, and tiny models gain nothing from more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model_dir(root: Path, arch: str = "gpt2") -> str:
    """A tiny random causal LM (test_lm_model's shapes) and its word-level tokenizer, saved under root/arch."""
    from _lm_util import _configs, _tokenizer

    tok = _tokenizer()
    cls_name, cfg = _configs(len(tok))[arch]
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(cfg)
    model.save_pretrained(root / arch)
    tok.save_pretrained(root / arch)
    return str(root / arch)


def text_file(root: Path, lines: int = 200, seed: int = 0, words=None) -> str:
    """Random sentences over test_lm_model's word list, one per line."""
    from _lm_util import WORDS

    rng = np.random.default_rng(seed)
    path = root / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words or WORDS, size=12)) for _ in range(lines)) + "\n")
    return str(path)


def run_cli(argv: list[str]) -> int:
    """Run `saelab ...` through the command groups this feature adds to (lm and probe1d)."""
    from saelab.commands import features, lm

    parser = argparse.ArgumentParser(prog="saelab")
    sub = parser.add_subparsers(dest="command", required=True)
    lm.register(sub)
    features.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def harvest_cache(model: str, text: str, out: Path, tokens: int = 1500, layer: int = 1, shard_rows: int = 100) -> str:
    """`saelab lm activations` into out (context CTX, small shards so several index files are written)."""
    argv = ["lm", "activations", "--model", model, "--text", text, "--out", str(out), "--layer", str(layer),
            "--site", "resid_post", "--tokens", str(tokens), "--context", str(CTX), "--batch-size", "4", "--shard-rows", str(shard_rows)]  # fmt: skip
    assert run_cli(argv) == 0
    return str(out)


def sae_folder(
    out: Path,
    d_in: int = 32,
    n_latents: int = 48,
    method: str = "topk",
    k: int = 4,
    seed: int = 0,
    source=None,
    train_path: str | None = None,
    eval_rows=None,
) -> str:
    """A saved SAE with random weights (encoder = decoder transpose), optionally recording its data source and split."""
    params = {"k": k} if method == "topk" else {}
    sae = SparseAutoencoder(
        SAEConfig(n_latents=n_latents, method=method, method_params=params, d_in=d_in, b_dec_init="zero")
    )
    sae.reset_weights(torch.Generator().manual_seed(seed))
    extra = {}
    if source is not None:
        extra["source"] = source
    if train_path is not None:
        extra["train"] = {"activations": train_path}
        if eval_rows is not None:
            extra["split"] = {"eval_rows": list(eval_rows)}
    save_sae(sae, out, extra)
    return str(out)
