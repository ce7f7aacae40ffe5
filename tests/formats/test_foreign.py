"""saelab.load reads SAE folders written by SAELens and by EleutherAI sparsify (formats written by hand here)."""

import json

import numpy as np
import pytest
import torch
from cli_harness import cli, error_line
from safetensors.torch import save_file

import saelab
from saelab.errors import DataError

D, N = 8, 24


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D, N, generator=g),
        "b_enc": torch.randn(N, generator=g) * 0.3,
        "W_dec": torch.randn(N, D, generator=g) * 0.5,
        "b_dec": torch.randn(D, generator=g),
    }


def _write_saelens(folder, arch, tensors, **cfg):
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    body = {
        "d_in": D,
        "d_sae": N,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": arch,
        "metadata": {
            "sae_lens_version": "6.54.12",
            "model_name": "gpt2",
            "hook_name": "blocks.4.hook_resid_pre",
            "context_size": 128,
            "prepend_bos": True,
        },
    }
    body.update(cfg)
    (folder / "cfg.json").write_text(json.dumps(body))
    return folder


def _topk(pre, k):
    values, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, values.relu())


def _saelens_reference(w, arch, x, k=None, threshold=None, rescale=False, apply_b_dec=True):
    """SAELens 6's inference maps, written out from its source (process_sae_in, encode, decode)."""
    pre = (x - w["b_dec"] * apply_b_dec) @ w["W_enc"] + w["b_enc"]
    norms = w["W_dec"].norm(dim=-1)
    if rescale:
        pre = pre * norms
    if arch == "standard":
        z = pre.relu()
    elif arch == "topk":
        z = _topk(pre, k)
    else:  # jumprelu
        z = pre.relu() * (pre > threshold)
    W_dec = w["W_dec"] / norms[:, None] if rescale else w["W_dec"]
    return z, z @ W_dec + w["b_dec"]


CASES = [
    ("standard", {}, {}),
    ("topk", {"k": 5}, {}),
    ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}, {"rescale": True}),
    ("standard", {"apply_b_dec_to_input": False}, {"apply_b_dec": False}),
    ("jumprelu", {}, {}),
]


@pytest.mark.parametrize(
    "arch,cfg,ref", CASES, ids=["standard", "topk", "topk-rescaled", "standard-no-bdec-in", "jumprelu"]
)
def test_saelens_folder_loads_with_saelens_outputs(tmp_path, arch, cfg, ref):
    w = _weights()
    tensors = dict(w)
    threshold = None
    if arch == "jumprelu":
        threshold = torch.rand(N, generator=torch.Generator().manual_seed(3)) * 0.5
        tensors["threshold"] = threshold
    folder = _write_saelens(tmp_path / "sl", arch, tensors, **cfg)
    sae = saelab.load(folder)
    x = torch.randn(40, D) * 2
    z_ref, x_ref = _saelens_reference(w, arch, x, k=cfg.get("k"), threshold=threshold, **ref)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), z_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), x_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(z_ref), x_ref, rtol=1e-5, atol=1e-5)
    assert (z_ref != 0).any() and (z_ref == 0).any()
    assert (sae.cfg.hook_name, sae.cfg.hook_layer, sae.cfg.model_name, sae.cfg.context_size) == (
        "blocks.4.hook_resid_pre",
        4,
        "gpt2",
        128,
    )


def test_saelens_batchtopk_training_save_uses_its_threshold(tmp_path):
    w = _weights(1)
    folder = _write_saelens(tmp_path / "btk", "batchtopk", {**w, "topk_threshold": torch.tensor(0.4)}, k=4)
    sae = saelab.load(folder)
    x = torch.randn(30, D)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), pre.relu() * (pre > 0.4), rtol=1e-5, atol=1e-6)
    assert sae.cfg.method == "batchtopk" and sae.cfg.method_params == {"k": 4}


def test_unsupported_saelens_options_are_refused_by_name(tmp_path):
    w = _weights()
    with pytest.raises(DataError, match="normalize_activations='layer_norm'"):
        saelab.load(_write_saelens(tmp_path / "ln", "standard", w, normalize_activations="layer_norm"))
    with pytest.raises(DataError, match="architecture='matching_pursuit'"):
        saelab.load(_write_saelens(tmp_path / "mp", "matching_pursuit", w))
    with pytest.raises(DataError, match="W_enc has shape"):
        saelab.load(_write_saelens(tmp_path / "bad", "standard", w, d_sae=N + 1))


def _write_sparsify(folder, k=4, **cfg):
    g = torch.Generator().manual_seed(5)
    tensors = {
        "encoder.weight": torch.randn(N, D, generator=g),
        "encoder.bias": torch.randn(N, generator=g) * 0.2,
        "W_dec": torch.randn(N, D, generator=g),
        "b_dec": torch.randn(D, generator=g),
    }
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "sae.safetensors"))
    body = {
        "activation": "topk",
        "expansion_factor": 3,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
    }
    body.update(cfg)
    (folder / "cfg.json").write_text(json.dumps(body))
    return folder, tensors


def test_sparsify_folder_loads_with_sparsify_outputs(tmp_path):
    folder, t = _write_sparsify(tmp_path / "sp", k=4)
    sae = saelab.load(folder)
    x = torch.randn(50, D)
    # sparsify: relu(encoder(x − b_dec)), keep the top k; decode = acts @ W_dec + b_dec.
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    vals, idx = pre.topk(4, dim=-1)
    z_ref = torch.zeros_like(pre).scatter(-1, idx, vals)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), z_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), z_ref @ t["W_dec"] + t["b_dec"], rtol=1e-5, atol=1e-5)
    assert sae.cfg.method == "topk" and sae.cfg.n_latents == N and sae.cfg.d_in == D
    folder2, _ = _write_sparsify(tmp_path / "mt", multi_topk=True)
    assert saelab.load(folder2).cfg.method == "multi_topk"
    for option in ("transcode", "skip_connection"):
        bad, _ = _write_sparsify(tmp_path / option, **{option: True})
        with pytest.raises(DataError, match=f"{option}=true"):
            saelab.load(bad)


def test_eval_command_on_foreign_folders(tmp_path):
    x = np.random.default_rng(0).standard_normal((300, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for folder in (_write_sparsify(tmp_path / "sp")[0], _write_saelens(tmp_path / "sl", "topk", _weights(), k=3)):
        code, out, err = cli("eval", "--sae", folder, "--activations", tmp_path / "x.npy", "--json")
        assert code == 0, err
        result = json.loads(out)
        assert result["rows"] == "all" and result["l0"] <= 4
    error_line(cli("eval", "--sae", tmp_path, "--activations", tmp_path / "x.npy"))  # neither format: one line


def test_each_saelens_architecture_saelab_writes_is_read_by_one_method():
    """Every name an activation exports under reads back through exactly one class; Multi-TopK's "topk" as TopK."""
    from saelab.methods import ACTIVATIONS
    from saelab.methods.multi_topk import MultiTopK
    from saelab.methods.registry import SAELENS_READERS, reads_saelens, saelens_reader, sparsify_reader
    from saelab.methods.topk import TopK

    exported = {cls.saelens_name for cls in ACTIVATIONS.values() if cls.saelens_name is not None}
    assert exported <= set(SAELENS_READERS) and saelens_reader("topk") is TopK
    assert saelens_reader("standard", "topk") is TopK  # SAELens 5's layout of a TopK SAE
    assert sparsify_reader({"k": 4}) is TopK and sparsify_reader({"k": 4, "multi_topk": True}) is MultiTopK
    assert sparsify_reader({"activation": "groupmax"}) is None and saelens_reader("matching_pursuit") is None
    with pytest.raises(ValueError, match="read by two classes"):
        reads_saelens(MultiTopK)
