"""SAELens (in its own virtual environment) loads saelab's folders and reconstructs exactly as saelab."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import saelab
from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
SAELENS_PYTHON = ROOT / ".venv-saelens" / "bin" / "python"

pytestmark = pytest.mark.compat

CASES = [
    ("standard", SAEConfig(n_latents=48, method="relu", penalty="l1", alpha=0.01), "none"),
    ("topk", SAEConfig(n_latents=48, method="topk", method_params={"k": 4}), "scalar"),
    ("batchtopk", SAEConfig(n_latents=48, method="batchtopk", method_params={"k": 4}), "none"),
    ("jumprelu", SAEConfig(n_latents=48, method="jumprelu", method_params={"l0_coef": 0.01}), "scalar"),
    ("multi_topk", SAEConfig(n_latents=48, method="multi_topk", method_params={"k": 3}), "none"),
    ("gated", SAEConfig(n_latents=48, method="gated", alpha=0.3), "scalar"),
]


@pytest.mark.skipif(not SAELENS_PYTHON.exists(), reason="run scripts/setup_saelens_venv.sh (make test-compat does)")
@pytest.mark.parametrize("name,cfg,normalize", CASES, ids=[c[0] for c in CASES])
def test_saelens_reconstructs_like_saelab(toy_dir, tmp_path, name, cfg, normalize):
    cfg.normalize = normalize
    run = RunConfig(
        TrainConfig(activations=str(toy_dir / "activations.npy"), out=str(tmp_path / "sae"), steps=60, batch_size=128),
        [cfg],
    )
    Trainer(run, progress=False).fit()
    sae = saelab.load(tmp_path / "sae")
    x = torch.from_numpy(np.load(toy_dir / "activations.npy")[:500] * 3.0)
    with torch.no_grad():
        z, x_hat = sae.encode(x), sae.forward(x)
    for file, arr in (("x.npy", x), ("z.npy", z), ("xhat.npy", x_hat)):
        np.save(tmp_path / file, arr.numpy())
    proc = subprocess.run(
        [
            str(SAELENS_PYTHON),
            str(ROOT / "scripts" / "saelens_check.py"),
            "--sae",
            str(tmp_path / "sae"),
            "--inputs",
            str(tmp_path / "x.npy"),
            "--expected-latents",
            str(tmp_path / "z.npy"),
            "--expected-recon",
            str(tmp_path / "xhat.npy"),
            "--atol",
            "1e-5",
            "--rtol",
            "1e-5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, (report, proc.stderr[-2000:])
    assert report["ok"] and (z != 0).any()
