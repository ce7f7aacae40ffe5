"""The binned AUROC behind the game bootstrap against the exact one."""

import numpy as np
import pytest
import torch

from saelab.sources.othello.auroc import auroc_columns
from saelab.sources.othello.bootstrap import _auroc_from_counts, _bin_column


def test_binned_auroc_equals_the_exact_one_when_bins_separate_every_value():
    rng = np.random.default_rng(1)
    v = np.maximum(rng.standard_normal(300), 0)
    t = rng.random(300) < 0.4
    b = _bin_column(v, 10_000)
    pos = np.bincount(b[t], minlength=b.max() + 1)
    neg = np.bincount(b[~t], minlength=b.max() + 1)
    exact = auroc_columns(torch.tensor(v)[:, None].float(), torch.tensor(t)[:, None].float())[0].item()
    assert _auroc_from_counts(pos, neg) == pytest.approx(exact, abs=1e-6)
