"""SAELens (in its own virtual environment) loads the folders `saelab lm train` writes, one per site, and encodes as saelab."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from _features_util import CTX, one_thread, text_file, tiny_model_dir  # noqa: F401
from cli_harness import cli

import saelab
from saelab.sources.lm.model import LMSpec, load_lm

ROOT = Path(__file__).resolve().parents[2]
SAELENS_PYTHON = ROOT / ".venv-saelens" / "bin" / "python"

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not SAELENS_PYTHON.exists(), reason="run scripts/setup_saelens_venv.sh (make test-compat does)"),
]
SITES = ((1, "resid_post"), (2, "mlp_out"))


def test_saelens_loads_every_site_folder_of_lm_train(tmp_path):
    model, text = tiny_model_dir(tmp_path), text_file(tmp_path, lines=300)
    out = tmp_path / "run"
    sites = ",".join(f"{layer}:{kind}" for layer, kind in SITES)
    code, _, err = cli(
        "lm", "train", "--model", model, "--text", text, "--sites", sites, "--tokens", "1280",
        "--batch-size", "64", "--n-latents", "48", "--method", "topk", "--k", "4", "--context", str(CTX),
        "--lm-batch-size", "4", "--buffer-tokens", "256", "--eval-tokens", "120", "--no-progress", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    # A batch of real activations at each site: the tiny model on random tokens.
    lm = load_lm(LMSpec(model))
    ids = torch.randint(0, lm.model.config.vocab_size, (6, CTX), generator=torch.Generator().manual_seed(0))
    acts = lm.activations_at(ids, [lm.site(layer, kind) for layer, kind in SITES])
    for (layer, kind), a in zip(SITES, acts):
        hook = f"blocks.{layer}.hook_{kind}"
        folder = out / hook
        sae = saelab.load(folder)
        x = a.reshape(-1, a.shape[-1]).float()
        with torch.no_grad():
            z, x_hat = sae.encode(x), sae.forward(x)
        assert (z != 0).sum(dim=1).eq(4).all()  # TopK k=4 on every row
        for name, arr in (("x", x), ("z", z), ("xhat", x_hat)):
            np.save(tmp_path / f"{hook}.{name}.npy", arr.numpy())
        proc = subprocess.run(
            [str(SAELENS_PYTHON), str(ROOT / "scripts" / "saelens_check.py"), "--sae", str(folder),
             "--inputs", str(tmp_path / f"{hook}.x.npy"), "--expected-latents", str(tmp_path / f"{hook}.z.npy"),
             "--expected-recon", str(tmp_path / f"{hook}.xhat.npy"), "--atol", "1e-5", "--rtol", "1e-5"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert proc.returncode == 0 and report["ok"], (hook, report, proc.stderr[-2000:])
        assert report["hook_name"] == hook and report["model_name"] == "gpt2"
