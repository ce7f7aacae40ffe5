"""Harvest alignment and the good-classifier score of an SAE, end to end."""

import numpy as np
import pytest
import torch

from saelab.config import SAEConfig
from saelab.model.sae import SparseAutoencoder
from saelab.sources.othello.games import board_states, generate_games
from saelab.sources.othello.harvest import Harvest, HarvestConfig, harvest
from saelab.sources.othello.model import games_to_tokens, load_default_model
from saelab.sources.othello.score import score_sae


def test_harvest_rows_align_with_positions_labels_and_the_residual_stream():
    model = load_default_model()
    games = generate_games(12, seed=5)
    h = harvest(HarvestConfig(layer=2, games=12, trim_start=3, trim_end=4, batch_games=5), model=model, games=games)
    labels, _ = board_states(games)
    g, t = h.positions[:, 0], h.positions[:, 1]
    assert t.min() >= 3 and t.max() <= 59 - 4 - 1
    assert (games[g, t] >= 0).all()  # no row from after a game ended
    np.testing.assert_array_equal(h.labels, labels[g, t])
    resid = model.residual_stream(games_to_tokens(games[:, :59]), 2).detach()
    np.testing.assert_allclose(h.activations, resid[g, t].numpy(), rtol=1e-5, atol=1e-5)
    assert h.source["layer"] == 2 and h.source["trim_start"] == 3 and len(h.source["model_sha"]) == 16


def test_an_sae_whose_latents_are_the_board_indicators_finds_every_pair():
    games = generate_games(60, seed=9)
    labels, _ = board_states(games)
    labels = labels[:, 5:50].reshape(-1, 64)
    onehot = np.eye(3, dtype=np.float32)[labels].reshape(len(labels), 192)
    positions = np.stack([np.repeat(np.arange(60), 45), np.tile(np.arange(5, 50), 60)], 1).astype(np.int32)
    data = Harvest(onehot, labels.astype(np.uint8), positions, {"source": "othello", "games": 60, "layer": 0})
    sae = SparseAutoencoder(SAEConfig(n_latents=192, method="relu", d_in=192, b_dec_init="zero"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(192))
        sae.W_dec.copy_(torch.eye(192))
    varying = onehot.min(0) != onehot.max(0)
    findable = np.ones((64, 3), dtype=bool)
    s = score_sae(sae, {"source": "othello", "layer": 0}, data=data, findable=findable)
    assert s.good_classifiers == s.good_classifiers_naive == int(varying.sum()) == s.good_classifier_latents
    assert s.findable == 192 and s.count_method == "crossfit-2fold-games"
    assert s.coverage == pytest.approx(1.0) and s.coverage_naive == pytest.approx(1.0)
    # Perfect classifiers leave no evaluation noise in the counts (every resample finds them all).
    assert (
        s.good_classifiers_eval_se == 0.0
        and s.ci["good_classifiers"]["lo"] == s.ci["good_classifiers"]["hi"] == s.good_classifiers
    )
    assert s.nmse == pytest.approx(0.0, abs=1e-10) and s.dead_fraction == pytest.approx(1 - varying.mean(), abs=1e-9)
    # Shuffling the latents against the labels destroys every classifier.
    rng = np.random.default_rng(0)
    shuffled = Harvest(onehot[rng.permutation(len(onehot))], data.labels, data.positions, data.source)
    lost = score_sae(sae, {"source": "othello", "layer": 0}, data=shuffled, findable=findable)
    assert lost.good_classifiers == 0 == lost.good_classifiers_naive


def test_score_refuses_an_sae_without_an_othello_source():
    from saelab.errors import ConfigError

    sae = SparseAutoencoder(SAEConfig(n_latents=8, method="relu", d_in=4))
    with pytest.raises(ConfigError, match="OthelloGPT"):
        score_sae(sae, {"source": "lm"})
