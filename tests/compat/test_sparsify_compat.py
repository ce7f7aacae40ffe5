"""SAE folders that EleutherAI sparsify itself wrote (in the compat venv) load in saelab with sparsify's outputs."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import saelab
from saelab.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
COMPAT_PYTHON = ROOT / ".venv-saelens" / "bin" / "python"
HAS_SPARSIFY = any(ROOT.glob(".venv-saelens/lib/python*/site-packages/sparsify/sparse_coder.py"))

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not HAS_SPARSIFY, reason="run scripts/setup_saebench_venv.sh (make test-compat does)"),
]

EXPECTED = {"topk": ("topk", 48, 6), "topk_expansion": ("topk", 48, 4), "multi_topk": ("multi_topk", 40, 5)}
REFUSED = {"groupmax": "activation", "transcode": "transcode", "skip_connection": "skip_connection"}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparsify-written")
    x = (np.random.default_rng(0).standard_normal((300, 16)) * 2).astype(np.float32)
    np.save(root / "x.npy", x)
    proc = subprocess.run(
        [
            str(COMPAT_PYTHON),
            str(ROOT / "scripts" / "sparsify_write.py"),
            "--inputs",
            str(root / "x.npy"),
            "--out",
            str(root / "out"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["outputs"] == list(EXPECTED) and report["written"] == list(EXPECTED) + list(REFUSED)
    return root


@pytest.mark.parametrize("case", list(EXPECTED))
def test_saelab_reproduces_a_folder_sparsify_wrote(written, case):
    folder = written / "out" / case
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae.safetensors"]  # sparsify's own layout
    sae = saelab.load(folder)
    x = torch.from_numpy(np.load(written / "x.npy"))
    z_ref = torch.from_numpy(np.load(written / "out" / f"{case}.z.npy"))
    x_ref = torch.from_numpy(np.load(written / "out" / f"{case}.xhat.npy"))
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), z_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(sae.encode(x)), x_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), x_ref, rtol=1e-5, atol=1e-5)
    method, n, k = EXPECTED[case]
    assert (sae.cfg.method, sae.cfg.n_latents, sae.cfg.method_params["k"], sae.cfg.d_in) == (method, n, k, 16)
    assert ((z_ref != 0).sum(-1) <= k).all() and (z_ref != 0).any()


@pytest.mark.parametrize("case", list(REFUSED))
def test_saelab_refuses_sparsify_options_it_cannot_reproduce(written, case):
    with pytest.raises(DataError, match=REFUSED[case]):
        saelab.load(written / "out" / case)
