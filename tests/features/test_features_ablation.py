"""Ablation sparsity: the measure on hand-computed vectors, one ablation against a hand-made forward, the command."""

import json
import math

import pytest
import torch
from _features_util import CTX, one_thread, run_cli, sae_folder  # noqa: F401

from saelab.errors import ConfigError
from saelab.features.ablation_sparsity import (
    AblationConfig,
    ablation_section,
    ablation_vector,
    centred,
    effective_fraction,
)


def test_effective_fraction_by_hand():
    v = torch.tensor([[3.0, 0, 0, 0], [1, 1, 1, 1], [1, -1, 2, 0], [0, 0, 0, 0]])
    got = effective_fraction(v)
    assert got[:3].tolist() == pytest.approx([1 / 4, 1.0, (4**2 / 6) / 4])
    assert math.isnan(got[3])


def test_median_centring_and_concatenation_by_hand():
    assert centred(torch.tensor([[1.0, 2, 3, 10]])).tolist() == [
        [-1.5, -0.5, 0.5, 7.5]
    ]  # even V: mean of the middle two
    clean = torch.tensor([[0.0, 0, 0], [1, 1, 1]])
    ablated = torch.tensor([[[1.0, 0, 0], [2, 2, 5]]])  # changes [1,0,0] and [1,1,4]; medians 0 and 1
    v = ablation_vector(clean, ablated)
    assert v.tolist() == [[1.0, 0, 0, 0, 0, 3]]
    assert float(effective_fraction(v)[0]) == pytest.approx((4**2 / 10) / 6)
    # A constant shift of one position's logits changes no probability and adds nothing.
    shifted = ablated.clone()
    shifted[0, 1] += 7.0
    assert ablation_vector(clean, shifted).tolist() == v.tolist()


def test_config_errors():
    with pytest.raises(ConfigError, match="future=-1"):
        AblationConfig(future=-1).validate()
    with pytest.raises(ConfigError, match="tokens_per_window=0"):
        AblationConfig(tokens_per_window=0).validate()


transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory):
    from _features_util import text_file, tiny_model_dir

    root = tmp_path_factory.mktemp("abl")
    model = tiny_model_dir(root, "llama")
    return (
        root,
        model,
        text_file(root, lines=40),
        sae_folder(root / "sae", method="topk", k=3, source={"layer": 1, "site": "resid_post", "context": CTX}),
    )


def test_one_ablation_against_a_hand_made_forward(lm_setup):
    import saelab
    from saelab.features.ablation_sparsity import ablate_at
    from saelab.sources.lm import model as hf
    from saelab.sources.lm.text import TextConfig, iter_batches

    _, model, text, sae_dir = lm_setup
    lm, sae = hf.load_lm(model), saelab.load(sae_dir)
    site = lm.site(1, "resid_post")
    ids = next(iter_batches(lm.tokenizer, TextConfig(text, CTX), 1))
    t, T = 6, 3
    x = lm.activations(ids, site)[0, t]
    z = sae.encode(x[None])[0].detach()
    active = torch.nonzero(z).flatten()
    fracs, n = ablate_at(lm, site, sae, ids, x, t, active, T, batch_latents=2)
    assert len(fracs) == 3 and n == (T + 1) * lm.model.config.vocab_size
    for l, frac in zip(active.tolist(), fracs.tolist()):
        # By hand: subtract z_l times its decoder row (raw space) from the residual at t, run the full model.
        contrib = z[l] * sae.W_dec[l].detach() / sae.normalizer.factor
        with lm.splice(site, lambda h: torch.cat([h[:, :t], h[:, t : t + 1] - contrib, h[:, t + 1 :]], 1)):
            ablated = lm.logits(ids)[0, t : t + T + 1]
        change = (ablated - lm.logits(ids)[0, t : t + T + 1]).double()
        change = change - change.median(dim=-1, keepdim=True).values  # odd vocab: the middle value
        v = change.flatten()
        expect = float((v.abs().sum() / v.norm()) ** 2 / v.numel())
        assert frac == pytest.approx(expect, rel=1e-3)


def test_ablation_sparsity_command(lm_setup, capsys):
    _, model, text, sae_dir = lm_setup
    argv = ["lm", "ablation-sparsity", "--sae", sae_dir, "--model", model, "--text", text, "--tokens", str(3 * CTX),
            "--future", "2", "--tokens-per-window", "2", "--json"]  # fmt: skip
    assert run_cli(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == 6 and res["mean_active"] == 3.0 and res["pairs"] + res["zero_effect"] == 18
    assert 1 / res["vector_length"] <= res["sparsity"] <= 1 and res["vector_length"] == 3 * res["vocab"]
    assert res["effective_logits"] == pytest.approx(res["sparsity"] * res["vector_length"], rel=1e-9)
    assert "len(v) = (T+1)*V" in res["definition"]
    from saelab.features.ablation_sparsity import AblationSparsityResult

    sec = ablation_section({"tiny": AblationSparsityResult(**{k: v for k, v in res.items()})})
    assert "tiny" in sec.markdown and "lower is sparser" in sec.markdown
