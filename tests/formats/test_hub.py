"""hf:// loading and `saelab push`, offline: a local folder stands in for the Hub."""

import shutil
from pathlib import Path

import pytest
import torch
from cli_harness import cli, error_line

import saelab
from saelab.config import SAEConfig
from saelab.errors import ConfigError
from saelab.formats.folder import save_sae
from saelab.model.sae import SparseAutoencoder

huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A folder per repository; upload_folder copies the allowed files in, snapshot_download returns the folder."""
    root = tmp_path / "hub"
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private))
            (root / repo_id).mkdir(parents=True, exist_ok=True)

        def upload_folder(self, folder_path, repo_id, path_in_repo=None, allow_patterns=None, commit_message=""):
            dest = root / repo_id / (path_in_repo or "")
            dest.mkdir(parents=True, exist_ok=True)
            for f in Path(folder_path).iterdir():
                if f.name in allow_patterns:
                    shutil.copy(f, dest / f.name)

    def snapshot_download(repo_id, allow_patterns=None):
        if not (root / repo_id).is_dir():
            raise FileNotFoundError(f"404 {repo_id}")
        return str(root / repo_id)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return root, calls


def test_push_then_load_from_hf_address(tmp_path, fake_hub):
    root, calls = fake_hub
    sae = SparseAutoencoder(SAEConfig(n_latents=16, method="topk", method_params={"k": 2}, d_in=4))
    save_sae(sae, tmp_path / "sae")
    (tmp_path / "sae" / "checkpoint.safetensors").write_bytes(b"not pushed")
    code, out, err = cli("push", tmp_path / "sae", "me/saes", "--subfolder", "layer1")
    assert code == 0, err
    assert out.strip() == "hf://me/saes/layer1" and calls == [("create", "me/saes", False)]
    pushed = sorted(p.name for p in (root / "me/saes/layer1").iterdir())
    assert pushed == ["cfg.json", "sae_weights.safetensors", "saelab.json"]  # the SAELens layout plus saelab's record
    loaded = saelab.load("hf://me/saes/layer1")
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), sae.eval()(x))


def test_bad_addresses_are_one_line_errors(tmp_path, fake_hub):
    with pytest.raises(ConfigError, match="hf://ORG/REPO"):
        saelab.load("hf://only-org")
    with pytest.raises(Exception, match="download failed"):
        saelab.load("hf://me/missing")
    error_line(cli("push", tmp_path, "me/x"))  # not an SAE folder


def test_eval_command_reads_an_hf_address(tmp_path, fake_hub):
    import json

    import numpy as np

    sae = SparseAutoencoder(SAEConfig(n_latents=16, method="topk", method_params={"k": 2}, d_in=4))
    save_sae(sae, tmp_path / "sae")
    assert cli("push", tmp_path / "sae", "me/one")[0] == 0
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32))
    code, out, err = cli("eval", "--sae", "hf://me/one", "--activations", tmp_path / "x.npy", "--json")
    assert code == 0, err
    assert json.loads(out)["l0"] == pytest.approx(2.0)


def test_push_without_network_or_with_a_bad_repo_is_one_line(tmp_path, fake_hub, monkeypatch):
    save_sae(
        SparseAutoencoder(SAEConfig(n_latents=16, method="topk", method_params={"k": 2}, d_in=4)), tmp_path / "sae"
    )
    assert "repo=" in error_line(cli("push", tmp_path / "sae", "only-org"))
    assert "repo=" in error_line(cli("push", tmp_path / "sae", "a/b/c"))

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nmore lines of traceback text")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    line = error_line(cli("push", tmp_path / "sae", "me/saes"))
    assert "me/saes" in line and "ConnectionError" in line and "resolve" in line
