"""The unfound-pairs diagnosis: planted split, near and absent pairs are told apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.sources.othello.auroc import auroc_matrix
from saelab.sources.othello.unfound import diagnose_unfound


def _planted(P=4000, seed=0):
    """Labels and codes with one pair of each kind: square 0 'mine' split over latents 0/1, square 1 'mine'
    found by latent 2, square 2 'mine' near (noisy latent 3), square 3 'mine' absent, square 4 'mine'
    inverse (latent 6 fires where it does not hold), square 5 'theirs' complement (latents 7/8 classify
    square 5 empty and mine)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(P, 64))
    codes = np.zeros((P, 9), dtype=np.float32)
    mine0 = labels[:, 0] == 1
    half = rng.random(P) < 0.5
    codes[:, 0] = np.where(mine0 & half, 1.0 + rng.random(P), 0.0)  # one context of the feature
    codes[:, 1] = np.where(mine0 & ~half, 2.0 + rng.random(P), 0.0)  # the other context
    codes[:, 2] = np.where(labels[:, 1] == 1, 1.0 + rng.random(P), 0.0)
    codes[:, 3] = np.maximum(0, (labels[:, 2] == 1) * 1.0 + rng.normal(0, 0.75, P)).astype(np.float32)
    codes[:, 4:6] = np.maximum(0, rng.normal(0, 1, (P, 2)))  # unrelated latents
    codes[:, 6] = np.where(labels[:, 4] != 1, 1.0 + rng.random(P), 0.0)
    codes[:, 7] = np.where(labels[:, 5] == 0, 1.0 + rng.random(P), 0.0)
    codes[:, 8] = np.where(labels[:, 5] == 1, 1.0 + rng.random(P), 0.0)
    findable = np.zeros((64, 3), dtype=bool)
    findable[:5, 1] = True
    findable[5, :] = True
    return torch.from_numpy(codes), labels, findable


def test_diagnosis_tells_every_kind_apart():
    codes, labels, findable = _planted()
    report = diagnose_unfound(codes, labels, auroc_matrix(codes, labels), findable, candidates=4)
    kinds = {(p.square, p.state): p for p in report.pairs}
    assert report.findable == 8 and report.found == 3 and report.unfound == 5
    split = kinds[(0, "mine")]
    assert split.kind == "split" and sorted(split.best_two) == [0, 1]
    assert split.best_auroc < 0.9 <= split.best_two_auroc
    assert split.overlap == 0.0  # the two latents divide the positives between them
    assert kinds[(2, "mine")].kind == "near" and kinds[(2, "mine")].best_latent == 3
    assert kinds[(3, "mine")].kind == "absent"
    assert kinds[(4, "mine")].kind == "inverse" and kinds[(4, "mine")].inverse_auroc == 1.0
    assert kinds[(5, "theirs")].kind == "complement" and kinds[(5, "theirs")].complement_auroc == 1.0
    assert (report.split, report.inverse, report.complement, report.near, report.absent) == (1, 1, 1, 1, 1)
    assert (report.found_with_pairs, report.found_any_reading) == (4, 6)
    assert report.by_state["mine"] == {"split": 1, "inverse": 1, "complement": 0, "near": 1, "absent": 1}
    assert "split over two latents 1" in report.markdown()


def test_bad_shapes_name_the_value():
    codes, labels, findable = _planted(P=200)
    auc = auroc_matrix(codes, labels)
    with pytest.raises(ValueError, match="codes.shape"):
        diagnose_unfound(codes[:10], labels, auc, findable)
    with pytest.raises(ValueError, match="candidates=1"):
        diagnose_unfound(codes, labels, auc, findable, candidates=1)
    with pytest.raises(ValueError, match="findable size"):
        diagnose_unfound(codes, labels, auc, findable[:10])
