"""Shared fixtures: small toy datasets written to temporary folders."""

import os
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import settings

from saelab.data.toy import ToyConfig, write_toy

# CI runs the property tests on a fixed set of examples, so a submission's result does not depend on
# the draw; locally every run explores new ones.
settings.register_profile("ci", derandomize=True, database=None)
# `make test-slow` (or SAELAB_HYPOTHESIS_PROFILE=long, or pytest --hypothesis-profile=long): the fuzz suite's long run.
settings.register_profile("long", max_examples=300, deadline=None, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
if os.environ.get("SAELAB_HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["SAELAB_HYPOTHESIS_PROFILE"])
# Data digests (fingerprint.py) are cached per user; the tests keep theirs out of the home folder.
os.environ.setdefault("SAELAB_CACHE_DIR", tempfile.mkdtemp(prefix="saelab-test-cache-"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    """A toy dataset: 32 features in 16 dims, ~3 active per sample, 8k samples."""
    out = tmp_path_factory.mktemp("toy")
    write_toy(ToyConfig(n_features=32, d=16, n_samples=8000, mean_active=3.0, seed=1), out)
    return out


def write_npy(path, array):
    """Save an array and return its path (tests only)."""
    np.save(path, array)
    return path
