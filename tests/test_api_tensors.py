"""saelab.train on in-memory tensors: half precision, no file written outside `out`, same SAE as from a file."""

import os
import tempfile

import numpy as np
import pytest
import torch

import saelab
from saelab.data.store import ActivationStore
from saelab.data.toy import ToyConfig, make_toy
from saelab.errors import ConfigError
from saelab.training.fingerprint import data_fingerprint

OPTIONS = dict(method="topk", k=4, n_latents=32, batch_size=128, progress=False)


@pytest.fixture(scope="module")
def planted():
    """Sparse codes over a known 24-feature dictionary in 16 dims (about 2 active per row)."""
    x, dictionary, _ = make_toy(ToyConfig(n_features=24, d=16, n_samples=4000, mean_active=2.0, seed=4))
    return torch.from_numpy(x), dictionary


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensor_trains_an_sae_that_learns(planted, dtype, tmp_path):
    x, dictionary = planted
    half = x.to(dtype)
    sae = saelab.train(half, steps=150, lr=1e-2, out=tmp_path / "run", **OPTIONS)
    result = saelab.evaluate(sae, half[:2000])  # evaluate reads half precision too
    assert result.nmse < 0.15  # predicting the mean scores 1
    # The decoder found the planted directions: most true features have a decoder row within 25°.
    dec = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1).numpy()
    assert (np.abs(dictionary @ dec.T).max(axis=1) > 0.9).mean() > 0.5
    record = (tmp_path / "run" / "saelab.json").read_text()
    assert f"<{str(dtype).removeprefix('torch.')} Tensor [4000, 16]>" in record


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tensor_trains_the_same_sae_as_the_same_values_from_a_file(planted, dtype, tmp_path):
    x = planted[0][:3000].to(dtype)
    # numpy has float16 but no bfloat16: the bf16 values go to the file widened (exactly) to float32.
    saved = x.numpy() if dtype == torch.float16 else x.float().numpy()
    np.save(tmp_path / "x.npy", saved)
    from_file = saelab.train(tmp_path / "x.npy", steps=30, seed=5, out=tmp_path / "file", **OPTIONS)
    from_tensor = saelab.train(x, steps=30, seed=5, out=tmp_path / "tensor", **OPTIONS)
    for name, value in from_file.state_dict().items():
        assert torch.equal(value, from_tensor.state_dict()[name]), name
    file_eval = (tmp_path / "file" / "eval.json").read_text()
    assert file_eval == (tmp_path / "tensor" / "eval.json").read_text()


def test_training_on_a_tensor_writes_nothing_outside_out(planted, tmp_path, monkeypatch):
    scratch, cache = tmp_path / "tmp", tmp_path / "cache"
    scratch.mkdir()
    cache.mkdir()
    import torch._dynamo  # noqa: F401  (Adam imports it; on import, torch makes its own empty cache dir in the temp dir)

    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("SAELAB_CACHE_DIR", str(cache))

    def refuse(*args, **kwargs):
        raise AssertionError("np.save called: the tensor went to disk")

    monkeypatch.setattr(np, "save", refuse)
    x = planted[0][:2000].to(torch.bfloat16)
    saelab.train(x, steps=10, checkpoint_every=5, out=tmp_path / "run", **OPTIONS)
    assert os.listdir(scratch) == [] and os.listdir(cache) == []
    assert sorted(os.listdir(tmp_path)) == ["cache", "run", "tmp"]
    # Without `out` the run folder is a temporary one, removed afterwards.
    saelab.train(x, steps=3, **OPTIONS)
    assert os.listdir(scratch) == [] and os.listdir(cache) == []


def test_an_in_memory_store_never_widens_bf16_rows_it_does_not_read(planted):
    x = planted[0][:1000].to(torch.bfloat16)
    store = ActivationStore.from_array(x)
    assert store.in_memory and store.n_rows == 1000 and store.d_in == 16
    rows = np.array([999, 3, 500])
    got = store.read(rows)
    assert got.dtype == np.float32 and np.array_equal(got, x[rows].float().numpy())
    assert x.dtype == torch.bfloat16  # read in place: the caller's tensor is untouched
    f16 = planted[0][:1000].half()
    assert np.shares_memory(ActivationStore.from_array(f16).shards[0].array, f16.numpy())


def test_in_memory_fingerprint_follows_the_values(planted):
    x = planted[0][:1500].to(torch.bfloat16)
    same = data_fingerprint(ActivationStore.from_array(x.clone()))
    assert data_fingerprint(ActivationStore.from_array(x)) == same
    changed = x.clone()
    changed[700, 3] += 1
    assert data_fingerprint(ActivationStore.from_array(changed))["sha256"] != same["sha256"]


def test_a_tensor_run_resumes_on_the_same_values_and_refuses_others(planted, tmp_path):
    x = planted[0][:2000].to(torch.bfloat16)
    options = dict(checkpoint_every=5, seed=2, **OPTIONS)
    straight = saelab.train(x, steps=20, out=tmp_path / "straight", **options)
    saelab.train(x, steps=10, out=tmp_path / "run", **options)
    resumed = saelab.train(x.clone(), steps=20, out=tmp_path / "run", resume=True, **options)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    edited = x.clone()
    edited[5, 3] += 1
    with pytest.raises(ConfigError, match=r"^activations='<bfloat16 Tensor \[2000, 16\]>'.*content differs"):
        saelab.train(edited, steps=30, out=tmp_path / "run", resume=True, **options)
