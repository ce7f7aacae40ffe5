"""The Python API (saelab.train / evaluate), the SAEBench-facing module attributes, and CLI niceties."""

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import cli

import saelab
from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.formats.folder import save_sae
from saelab.model.sae import SparseAutoencoder
from saelab.model.site import site_from_source

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_api_example_runs():
    text = (ROOT / "README.md").read_text()
    section = text.split("### Python API", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert "saelab.train(" in block and "saelab.evaluate(" in block
    scope: dict = {}
    exec(compile(block, "README.md#python-api", "exec"), scope)
    result = scope["result"]
    assert result.l0 == pytest.approx(3.0)  # TopK at k=3 on data whose codes are never all zero
    assert 0.0 < result.nmse < 1.0 and result.mmcs > 0.3


def test_train_name_is_the_function_and_the_trainer_module_imports():
    # Every import order, each in a fresh interpreter: the attribute is the function, the trainer module imports.
    orders = [
        "import saelab; import saelab.training.trainer; from saelab.training.trainer import Trainer",
        "from saelab.training.trainer import Trainer, build_member; import saelab",
    ]
    for order in orders:
        code = (
            f"{order}\nimport sys, saelab\nassert callable(saelab.train) and saelab.train.__module__ == 'saelab.api'\n"
            "assert sys.modules['saelab.training.trainer'].Trainer.__name__ == 'Trainer'\nprint('ok')"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.stdout.strip() == "ok", (order, proc.stderr[-1500:])


def test_train_writes_the_folder_and_returns_what_load_reads(toy_dir, tmp_path):
    x = torch.from_numpy(np.load(toy_dir / "activations.npy")[:3000])
    sae = saelab.train(
        x, method="topk", k=4, n_latents=32, out=tmp_path / "run", steps=20, batch_size=128, progress=False
    )
    assert (tmp_path / "run" / "cfg.json").exists() and (tmp_path / "run" / "saelab.json").exists()
    again = saelab.load(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(sae(x[:50]), again(x[:50]))
    assert sae.cfg.method_params == {"k": 4} and not sae.training
    # Same data from a path and from an array: the same SAE (same batches, same seed).
    from_path = saelab.train(
        toy_dir / "activations.npy", method="topk", k=4, n_latents=32, steps=5, batch_size=128, progress=False
    )
    from_array = saelab.train(
        np.load(toy_dir / "activations.npy"), method="topk", k=4, n_latents=32, steps=5, batch_size=128, progress=False
    )
    assert torch.equal(from_path.W_dec, from_array.W_dec)


def test_train_options_are_checked_by_name(toy_dir):
    path = toy_dir / "activations.npy"
    with pytest.raises(ConfigError, match="stepz"):
        saelab.train(path, n_latents=32, stepz=10)
    with pytest.raises(ConfigError, match="^k=5: .*take no k"):
        saelab.train(path, method="relu", k=5, n_latents=32, penalty="l1", alpha=0.1)
    with pytest.raises(ConfigError, match="normalize"):
        saelab.train(path, n_latents=32, k=4, normalize="layer", steps=1)


def test_relu_without_penalty_warns_in_api_and_cli(toy_dir, tmp_path):
    with pytest.warns(UserWarning, match="nothing makes the code sparse"):
        saelab.train(toy_dir / "activations.npy", method="relu", n_latents=16, steps=2, batch_size=64, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a penalty makes it sparse: no warning
        saelab.train(
            toy_dir / "activations.npy",
            method="relu",
            n_latents=16,
            penalty="l1",
            alpha=0.1,
            steps=2,
            batch_size=64,
            progress=False,
        )
    code, _, err = cli(
        "train",
        "--activations",
        toy_dir / "activations.npy",
        "--method",
        "relu",
        "--n-latents",
        16,
        "--steps",
        2,
        "--batch-size",
        64,
        "--out",
        tmp_path / "cli",
    )
    assert code == 0
    assert sum("nothing makes the code sparse" in line for line in err) == 1
    code, _, err = cli(
        "train",
        "--activations",
        toy_dir / "activations.npy",
        "--method",
        "topk",
        "--k",
        2,
        "--n-latents",
        16,
        "--steps",
        2,
        "--batch-size",
        64,
        "--out",
        tmp_path / "cli2",
    )
    assert code == 0 and not any("sparse" in line for line in err)


def test_help_shows_defaults_and_choices():
    code, out, _ = cli("train", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "--method {" in text and "topk" in text.split("--method {", 1)[1].split("}", 1)[0]
    assert "--penalty {" in text and "l1" in text.split("--penalty {", 1)[1].split("}", 1)[0]
    assert "rows per batch (default: 4096)" in text
    assert "--normalize {none,unit,scalar} input normalization (default: none)" in text
    assert re.search(r"--k MP_K used by topk \(default \d+\)", text)


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_pipe(toy_dir, tmp_path, monkeypatch):
    # Issue 32: a piped run (nohup, SLURM) reports progress as whole lines, never as \r-redrawn bar fragments.
    import io

    from saelab.training.trainer import Trainer

    run = RunConfig(
        TrainConfig(activations=str(toy_dir / "activations.npy"), out=str(tmp_path / "p"), steps=3),
        [SAEConfig(n_latents=8)],
    )
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    Trainer(run, progress=True).fit()
    text = piped.getvalue()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if "train:" in line]
    assert lines[0].endswith("train: start (3 step)") and "train: done 3/3 step" in lines[-1]
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    run.train.out = str(tmp_path / "q")
    Trainer(run, progress=False).fit()
    assert "train:" not in quiet.getvalue()


@pytest.mark.parametrize("normalize", ["none", "unit", "scalar"])
def test_decode_of_encode_is_forward_for_every_normalization(normalize):
    cfg = SAEConfig(
        n_latents=24,
        method="topk",
        method_params={"k": 3},
        normalize=normalize,
        d_in=8,
        normalization_factor=0.37 if normalize == "scalar" else None,
    )
    sae = SparseAutoencoder(cfg).eval()
    x = torch.randn(2, 5, 8) * 4 + 2
    with torch.no_grad():
        torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x), rtol=0, atol=1e-5)
    if normalize == "unit":
        with pytest.warns(UserWarning, match="normalized space"):
            sae.decode(torch.zeros(3, 24))  # codes of other tokens than the last encoded: no mean/norm to undo


def test_saebench_attributes_follow_the_module():
    sae = SparseAutoencoder(SAEConfig(n_latents=16, method="relu", penalty="l1", d_in=4)).eval()
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "encode", "decode", "forward"):
        assert hasattr(sae, name)
    c = sae.cfg
    assert (c.d_in, c.d_sae, c.architecture, c.dtype, c.device) == (4, 16, "standard", "float32", "cpu")
    assert (sae.dtype, sae.device.type) == (torch.float32, "cpu")
    assert c.hook_name is None and c.model_name is None  # toy data: no model hook, not a made-up one
    sae = sae.double()
    assert sae.dtype == torch.float64 and sae.cfg.dtype == "float64"
    assert "hook_name" not in c.to_dict()  # saelab's own config record is unchanged


def _lm_source(site="resid_post", layer=2):
    return {
        "format": "saelab-activation-cache/1",
        "model": "tiny-gpt2",
        "site": site,
        "layer": layer,
        "dtype": "float32",
        "d_in": 8,
        "context": 64,
        "tokenizer": "tiny-gpt2",
        "text_source": "t.txt",
        "options": {"prepend_bos": False, "drop_first": True},
    }


def test_lm_and_othello_sources_name_their_hook():
    for site, hook in (
        ("resid_post", "hook_resid_post"),
        ("resid_pre", "hook_resid_pre"),
        ("mlp_out", "hook_mlp_out"),
        ("attn_out", "hook_attn_out"),
    ):
        s = site_from_source(_lm_source(site, 5))
        assert (s.hook_name, s.hook_layer, s.model_name, s.context_size, s.prepend_bos) == (
            f"blocks.5.{hook}",
            5,
            "tiny-gpt2",
            64,
            False,
        )
    oth = {"source": "othello", "model": "default", "layer": 3, "trim_start": 5}
    assert site_from_source(oth).hook_name == "blocks.2.hook_resid_post"  # layer i = after block i
    assert site_from_source({**oth, "layer": 0}).hook_name == "blocks.0.hook_resid_pre"  # layer 0 = the embeddings
    assert site_from_source(None) is None and site_from_source({"layer": "x"}) is None


def test_site_reaches_cfg_json_and_the_loaded_module(tmp_path):
    sae = SparseAutoencoder(SAEConfig(n_latents=16, method="topk", method_params={"k": 2}, d_in=8))
    save_sae(sae, tmp_path / "sae", {"source": _lm_source()})
    meta = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]
    assert (meta["model_name"], meta["hook_name"], meta["hook_layer"], meta["context_size"], meta["prepend_bos"]) == (
        "tiny-gpt2",
        "blocks.2.hook_resid_post",
        2,
        64,
        False,
    )
    loaded = saelab.load(tmp_path / "sae")
    assert (loaded.cfg.hook_name, loaded.cfg.model_name, loaded.cfg.context_size, loaded.cfg.prepend_bos) == (
        "blocks.2.hook_resid_post",
        "tiny-gpt2",
        64,
        False,
    )


def test_train_takes_half_precision_tensors_as_their_float32_values(toy_dir):
    x = torch.from_numpy(np.load(toy_dir / "activations.npy")[:1024]).to(torch.bfloat16)
    kw = dict(method="topk", k=4, n_latents=32, steps=5, batch_size=128, progress=False)
    from_bf16 = saelab.train(x, **kw)
    from_float = saelab.train(x.float(), **kw)  # bfloat16 values are exact in float32
    assert torch.equal(from_bf16.W_dec, from_float.W_dec)
    assert torch.equal(saelab.train(x.half(), **kw).W_dec, saelab.train(x.half().float(), **kw).W_dec)
