"""The Trainer's data seam (training.data): a TrainingData's checkpoint state, resume checks and folder keys are honoured."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saelab.config import RunConfig, SAEConfig, TrainConfig
from saelab.errors import ConfigError
from saelab.formats.folder import SAELAB_CFG
from saelab.training.data import CachedData
from saelab.training.trainer import Trainer


def _run(toy_dir: Path, out: Path, steps: int) -> RunConfig:
    t = TrainConfig(
        activations=str(toy_dir / "activations.npy"), out=str(out), steps=steps, batch_size=32, checkpoint_every=2
    )
    return RunConfig(t, [SAEConfig(n_latents=32, method="topk", method_params={"k": 4})])


class _Crash(Exception):
    pass


class Counted(CachedData):
    """The cache, counting the rows its member steps on; the count rides in every checkpoint and the folder."""

    restored: list = []
    crash_at: int | None = None  # rows after which the run dies (a kill between checkpoints)

    def __init__(self, run, store=None):
        super().__init__(run, store)
        self.rows = 0

    def member_rows(self, m, x):
        if self.rows == self.crash_at:
            raise _Crash()
        self.rows += x.shape[0]
        return x

    def checkpoint_extra(self, step):
        return {"counted": {"rows": self.rows, "step": step}}

    def check_saved(self, state, out):
        if not isinstance(state.get("counted"), dict):
            raise ConfigError("resume", str(out), "the checkpoint holds no count")

    def restore(self, state, step, out):
        self.rows = state["counted"]["rows"]
        self.restored.append((step, self.rows))

    def folder_extra(self, m):
        return {"counted_rows": self.rows}


def counted(run, world):
    return Counted(run)


def test_the_datas_own_state_is_checkpointed_restored_and_recorded(toy_dir, tmp_path):
    Counted.restored, Counted.crash_at = [], 3 * 32
    with pytest.raises(_Crash):  # dies in step 3, after the checkpoint of step 2
        Trainer(_run(toy_dir, tmp_path / "cut", 4), progress=False, data=counted).fit()
    Counted.crash_at = None
    Trainer(_run(toy_dir, tmp_path / "cut", 4), progress=False, data=counted).fit(resume=True)
    Trainer(_run(toy_dir, tmp_path / "plain", 4), progress=False).fit()
    assert Counted.restored == [(2, 2 * 32)]  # the count as of the checkpoint the resume started from
    assert json.loads((tmp_path / "cut" / SAELAB_CFG).read_text())["counted_rows"] == 4 * 32
    resumed = load_file(str(tmp_path / "cut" / "sae_weights.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "sae_weights.safetensors"))
    assert resumed.keys() == plain.keys() and all(torch.equal(resumed[k], plain[k]) for k in plain)


def test_a_checkpoint_the_data_does_not_recognize_is_refused(toy_dir, tmp_path):
    Trainer(_run(toy_dir, tmp_path / "plain", 4), progress=False).fit()
    with pytest.raises(ConfigError, match="holds no count"):
        Trainer(_run(toy_dir, tmp_path / "plain", 4), progress=False, data=counted).fit(resume=True)
