"""SAE folders that SAELens itself wrote (in its own virtual environment) load in saelab with SAELens's outputs."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import saelab

ROOT = Path(__file__).resolve().parents[2]
SAELENS_PYTHON = ROOT / ".venv-saelens" / "bin" / "python"

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not SAELENS_PYTHON.exists(), reason="run scripts/setup_saelens_venv.sh (make test-compat does)"),
]

EXPECTED = {
    "standard": "relu",
    "standard_no_bdec": "relu",
    "topk": "topk",
    "topk_rescaled": "topk",
    "jumprelu": "jumprelu",
    "batchtopk_inference": "jumprelu",
    "gated": "gated",
    "gated_no_bdec": "gated",
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("saelens-written")
    x = (np.random.default_rng(0).standard_normal((300, 16)) * 2).astype(np.float32)
    np.save(root / "x.npy", x)
    proc = subprocess.run(
        [
            str(SAELENS_PYTHON),
            str(ROOT / "scripts" / "saelens_write.py"),
            "--inputs",
            str(root / "x.npy"),
            "--out",
            str(root / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["written"] == list(EXPECTED)
    return root


@pytest.mark.parametrize("case", list(EXPECTED))
def test_saelab_reproduces_a_folder_saelens_wrote(written, case):
    folder = written / "out" / case
    sae = saelab.load(folder)
    x = torch.from_numpy(np.load(written / "x.npy"))
    z_ref = torch.from_numpy(np.load(written / "out" / f"{case}.z.npy"))
    x_ref = torch.from_numpy(np.load(written / "out" / f"{case}.xhat.npy"))
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), z_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), x_ref, rtol=1e-5, atol=1e-5)
    assert (z_ref != 0).any() and (z_ref == 0).any()
    assert sae.cfg.method == EXPECTED[case]
    assert (sae.cfg.model_name, sae.cfg.hook_name, sae.cfg.hook_layer, sae.cfg.context_size) == (
        "tiny-gpt2",
        "blocks.1.hook_resid_post",
        1,
        32,
    )
