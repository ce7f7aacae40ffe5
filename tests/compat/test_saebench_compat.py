"""saelab SAEs through SAEBench's custom-SAE checks and core evaluation (in the compat venv), on a tiny local model.

TransformerLens (compat venv) builds a 2-layer GPT-2-architecture model with random weights and a
locally trained tokenizer and writes its blocks.1.hook_resid_post activations; saelab (this venv)
trains TopK SAEs on them with a source.json like `saelab lm activations` writes, so the folders
carry the model name and hook; scripts/saebench_tiny.py then loads them with saelab.load inside the
compat venv and runs SAEBench 0.6.0 on them. Only SAEBench's two Hub loaders are replaced by the
local model and dataset; the test also records the stock loader's error (see test_stock_loader...).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

import saelab

ROOT = Path(__file__).resolve().parents[2]
COMPAT_PYTHON = ROOT / ".venv-saelens" / "bin" / "python"
HAS_SAEBENCH = any(ROOT.glob(".venv-saelens/lib/python*/site-packages/sae_bench/evals/core/main.py"))
SCRIPT = ROOT / "scripts" / "saebench_tiny.py"
NORMALIZATIONS = ("none", "scalar", "unit")
MODEL, HOOK, LAYER, CONTEXT, K = "saelab-tiny-gpt2", "blocks.1.hook_resid_post", 1, 32, 4

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not HAS_SAEBENCH, reason="run scripts/setup_saebench_venv.sh (make test-compat does)"),
]


def _compat(args, tmp, timeout=600):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf-home"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    proc = subprocess.run(
        [str(COMPAT_PYTHON), str(SCRIPT), *args], check=False, capture_output=True, text=True, timeout=timeout, env=env
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    return proc, json.loads(lines[-1])


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("saebench")
    proc, made = _compat(["model", "--out", str(root / "model")], root)
    assert proc.returncode == 0 and made["d_model"] == 16, proc.stderr[-3000:]
    # What `saelab lm activations` records beside its activations (CacheMeta), for the site.
    (root / "model" / "activations.source.json").write_text(
        json.dumps(
            {
                "model": MODEL,
                "site": "resid_post",
                "layer": LAYER,
                "dtype": "float32",
                "d_in": 16,
                "context": CONTEXT,
                "tokenizer": "local BPE",
                "text_source": "texts.json",
                "options": {"drop_first": True, "outlier_factor": None, "prepend_bos": True},
            }
        )
    )
    folders = []
    for norm in NORMALIZATIONS:
        out = root / f"sae-{norm}"
        saelab.train(
            str(root / "model" / "activations.npy"),
            method="topk",
            k=K,
            n_latents=64,
            steps=150,
            batch_size=256,
            normalize=norm,
            out=str(out),
        )
        folders += ["--sae", str(out)]
    proc, report = _compat(["check", *folders, "--model", str(root / "model"), "--out", str(root / "results")], root)
    report["_stderr"] = proc.stderr[-3000:]
    return root, report


def test_saelab_folder_records_the_site(bench):
    root, _ = bench
    meta = json.loads((root / "sae-none" / "cfg.json").read_text())["metadata"]
    assert (meta["model_name"], meta["hook_name"], meta["hook_layer"], meta["context_size"], meta["prepend_bos"]) == (
        MODEL,
        HOOK,
        LAYER,
        CONTEXT,
        True,
    )


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_saebench_custom_sae_checks_pass(bench, norm):
    _, report = bench
    result = report["saes"][f"sae-{norm}"]
    assert result["errors"] == {}, (result["errors"], report["_stderr"])
    checks = result["checks"]
    assert checks["base_sae_test_sae"] is True and checks["decode_encode_equals_forward"] is True
    # saelab.load keeps the scalar factor in encode/decode, so the loaded decoder rows stay unit norm.
    assert checks["check_decoder_norms"] is True
    cfg = checks["custom_sae_contract"]
    assert (cfg["model_name"], cfg["hook_name"], cfg["hook_layer"], cfg["context_size"]) == (
        MODEL,
        HOOK,
        LAYER,
        CONTEXT,
    )
    assert (cfg["d_in"], cfg["d_sae"], cfg["architecture"], cfg["dtype"], cfg["device"]) == (
        16,
        64,
        "topk",
        "float32",
        "cpu",
    )
    assert checks["load_and_format_sae"] == {"hook_name": HOOK, "hook_layer": LAYER, "architecture_str": "topk"}


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_saebench_core_evaluation_runs(bench, norm):
    root, report = bench
    core = report["saes"][f"sae-{norm}"]["checks"]["core_multiple_evals"]
    assert core, report["saes"][f"sae-{norm}"]["errors"]
    m = core["metrics"]
    assert m["sparsity"]["l0"] == pytest.approx(K)  # TopK: exactly k latents per token
    assert m["reconstruction_quality"]["explained_variance"] > 0.5
    assert m["reconstruction_quality"]["cossim"] > 0.8
    assert 0.3 < m["model_behavior_preservation"]["kl_div_score"] <= 1.0  # the SAE beats zero-ablating the hook
    assert m["misc_metrics"]["frac_alive"] > 0.5
    saved = json.loads((root / "results" / f"sae-{norm}" / "core" / core["file"]).read_text())
    assert saved["sae_cfg_dict"]["n_latents"] == 64 and saved["eval_config"]["context_size"] == CONTEXT


def test_stock_loader_cannot_load_a_local_model(bench):
    """Why SAEBench's core eval needs the substitution offline: it loads the model by name only."""
    _, report = bench
    assert report["stock_model_loader"].startswith(f"ValueError: {MODEL} not found. Valid official model names")
