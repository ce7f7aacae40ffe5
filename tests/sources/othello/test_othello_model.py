"""OthelloGPT: shapes, residual hooks, save/load, training smoke test and the committed model."""

import argparse
import json

import numpy as np
import pytest
import torch

from saelab.errors import SaelabError
from saelab.sources.othello.games import generate_games
from saelab.sources.othello.model import (
    ASSETS_DIR,
    PAD_TOKEN,
    SQUARE_TO_TOKEN,
    TOKEN_TO_SQUARE,
    OthelloGPT,
    OthelloGPTConfig,
    games_to_tokens,
    load_default_model,
)
from saelab.sources.othello.train_model import TrainConfig, evaluate_legal, train


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return OthelloGPT(OthelloGPTConfig(n_layer=3, d_model=32, n_head=4, d_mlp=64)).eval()


@pytest.fixture(scope="module")
def tokens():
    return games_to_tokens(generate_games(8, seed=0)[:, :59])


def test_token_mapping_is_a_bijection_on_playable_squares():
    playable = [s for s in range(64) if s not in (27, 28, 35, 36)]
    assert SQUARE_TO_TOKEN[playable].tolist() == list(range(1, 61))
    assert all(TOKEN_TO_SQUARE[SQUARE_TO_TOKEN[s]] == s for s in playable)
    assert (SQUARE_TO_TOKEN[[27, 28, 35, 36]] == -1).all()
    tok = games_to_tokens(np.array([[0, 63, -1]]))
    assert tok.tolist() == [[1, 60, PAD_TOKEN]]


def test_forward_shapes_and_residual_hooks_agree(tiny, tokens):
    logits = tiny(tokens)
    assert logits.shape == (8, 59, 61)
    resid = tiny.all_residuals(tokens)
    assert len(resid) == 4
    for layer in range(4):
        r = tiny.residual_stream(tokens, layer)
        assert r.shape == (8, 59, 32)
        assert torch.allclose(r, resid[layer])
        assert torch.allclose(tiny(tokens, stop_at_layer=layer), r)
    assert torch.allclose(resid[0], tiny.embed(tokens))
    assert torch.allclose(tiny.unembed(tiny.ln_f(resid[-1])), logits, atol=1e-6)
    with pytest.raises(ValueError):
        tiny.residual_stream(tokens, 4)


def test_causal_earlier_positions_ignore_later_moves(tiny, tokens):
    changed = tokens.clone()
    changed[:, 30:] = PAD_TOKEN
    assert torch.allclose(tiny(tokens)[:, :30], tiny(changed)[:, :30], atol=1e-6)
    assert not torch.allclose(tiny(tokens)[:, 30:], tiny(changed)[:, 30:])


def test_save_load_roundtrip_and_config_json(tiny, tokens, tmp_path):
    tiny.save(tmp_path)
    back = OthelloGPT.load(tmp_path)
    assert torch.equal(back(tokens), tiny(tokens))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["n_layer"] == 3 and cfg["vocab_size"] == 61 and cfg["n_ctx"] == 59
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="unknown"):
        OthelloGPTConfig.from_dict({**cfg, "bogus": 1})
    with pytest.raises(ValueError, match="n_head"):
        OthelloGPTConfig(d_model=30, n_head=4).validate()


def test_training_smoke_writes_checkpoint_and_log(tmp_path):
    cfg = TrainConfig(
        model=OthelloGPTConfig(n_layer=1, d_model=32, n_head=2, d_mlp=64),
        steps=30,
        batch_size=16,
        warmup_steps=3,
        eval_every=15,
        eval_games=40,
    )
    model = train(cfg, tmp_path, log=lambda s: None)
    rows = [json.loads(l) for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "config" and rows[-1]["event"] == "final"
    losses = [r["loss"] for r in rows if r["event"] == "train"]
    assert losses[-1] < losses[0]
    assert OthelloGPT.load(tmp_path).cfg == model.cfg
    ev = evaluate_legal(model, generate_games(20, seed=1))
    assert 0 <= ev["legal_move_accuracy"] <= 1 and len(ev["per_position"]) == 59
    assert ev["per_position"][0] >= 0  # after the first move there is always a legal reply
    # Continuing from the checkpoint keeps the earlier log and starts a new segment.
    cont = TrainConfig(steps=5, batch_size=8, warmup_steps=1, eval_every=5, eval_games=10, init_from=str(tmp_path))
    train(cont, tmp_path, log=lambda s: None)
    rows = [json.loads(l) for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows].count("config") == 2
    assert rows[-1]["event"] == "final" and OthelloGPT.load(tmp_path).cfg.d_model == 32


def _cli(argv):
    from saelab.commands.othello import register

    p = argparse.ArgumentParser(prog="saelab")
    register(p.add_subparsers(dest="cmd"))
    args = p.parse_args(argv)
    return args.func(args)


def test_cli_games_and_user_errors(tmp_path):
    out = tmp_path / "g.npy"
    assert _cli(["othello", "games", "--n", "25", "--seed", "4", "--out", str(out)]) == 0
    assert np.array_equal(np.load(out), generate_games(25, seed=4))
    with pytest.raises(SaelabError, match="--n=0"):
        _cli(["othello", "games", "--n", "0", "--out", str(out)])
    bad = tmp_path / "bad.npy"
    g = np.load(out)
    g[0, 5] = g[0, 4]
    np.save(bad, g)
    with pytest.raises(SaelabError, match="illegal move"):
        _cli(["othello", "eval-model", "--games-file", str(bad)])
    np.save(bad, g[:, :10])
    with pytest.raises(SaelabError, match="shape"):
        _cli(["othello", "eval-model", "--games-file", str(bad)])


@pytest.mark.skipif(not (ASSETS_DIR / "model.safetensors").exists(), reason="no committed model")
def test_committed_model_predicts_legal_moves():
    model = load_default_model()
    ev = evaluate_legal(model, generate_games(200, seed=123))
    assert ev["legal_move_accuracy"] >= 0.97
    assert model.residual_stream(games_to_tokens(generate_games(2, seed=0)[:, :59]), 2).shape[-1] == model.cfg.d_model


def test_probes_shapes_and_roundtrip(tiny):
    from saelab.sources.othello.probes import ProbeConfig, ProbeResult, train_probes

    res = train_probes(tiny, generate_games(60, seed=5), layers=[0, 3], cfg=ProbeConfig(epochs=3))
    assert res.layers == [0, 3]
    for l in (0, 3):
        assert res.auroc[l].shape == (64, 3) and res.findable[l].dtype == bool
        assert np.isnan(res.auroc[l][[27, 28, 35, 36], 0]).all()  # centre squares are never empty
        assert not res.findable[l][[27, 28, 35, 36], 0].any()
        ok = res.auroc[l][np.isfinite(res.auroc[l])]
        assert ((ok >= 0) & (ok <= 1)).all() and ok.mean() > 0.5  # position alone tells "empty" apart
        assert res.table()[[0, 3].index(l)]["findable"] == int(res.findable[l].sum())
    back = ProbeResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert np.array_equal(back.findable[3], res.findable[3])
    assert "| 3 |" in res.markdown()
