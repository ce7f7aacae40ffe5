"""The checkpoint side of a run: what a checkpoint holds, and the checks a resume must pass (same run, same data)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from saelab.config import RunConfig, SAEConfig
from saelab.errors import ConfigError, DataError, SaelabError
from saelab.methods.resolve import display_name
from saelab.training.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    save_checkpoint,
)
from saelab.training.fingerprint import check_same_data
from saelab.training.member import (
    Member,
)
from saelab.util.atomic import atomic_write_text

CHECKPOINT = CHECKPOINT_FILE
# Fields a resumed run may change without changing what is computed.
# `device` moves the same computation (bitwise equal only on the same device); `dtype` changes the arithmetic, so it may not.
RESUMABLE_CHANGES = {
    "steps",
    "tokens",
    "epochs",
    "log_every",
    "checkpoint_every",
    "scan",
    "device",
    "log",
    "latent_shards",
}
# Where the run and its data live: a moved run or data is the same run when the data's fingerprint matches.
LOCATION_FIELDS = {"out", "activations", "eval_activations"}


class CheckpointedRun:
    """Saving and restoring a run's state; the Trainer mixes it in.

    Expects `self.run`, `self.world`, `self.strategy` (which ranks write what, and their tensors:
    training.strategy), `self.data` (the data's fingerprints and own state: training.data),
    `self.out` and `self.total_steps`.
    """

    # ---- checkpoints ------------------------------------------------------------------------
    def _save_checkpoint(self, members: list[Member], step: int) -> None:
        self.strategy.save_checkpoint(self.out, members, step, self._write_checkpoint)

    def _write_checkpoint(self, members: list[Member], step: int, **extra) -> None:
        state = {
            "step": step,
            "run": self.run.to_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "members": [
                {
                    **self.strategy.member_tensors(m),
                    "cfg": m.cfg.to_dict(),
                    "control": m.control.state_dict() if m.control is not None else None,
                    "convergence": m.convergence.state_dict() if m.convergence is not None else None,
                }
                for m in members
            ],
            "data": self.data.fingerprints(),
            **self.data.checkpoint_extra(step),  # the data's own state (an online stream's cursor)
            **extra,
        }
        save_checkpoint(self.out / CHECKPOINT, state)
        self._checkpointed = True

    def _load_checkpoint(self, members: list[Member]) -> int:
        path = self.out / CHECKPOINT
        state = load_checkpoint(path)  # safetensors + JSON: nothing in it can run code
        try:
            return self._restore(state, members)
        except SaelabError:
            raise
        except Exception as e:  # a well-formed file holding the wrong things: say which, not a torch traceback
            raise DataError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:120]})") from None

    def _restore(self, state: dict, members: list[Member]) -> int:
        step = self._check_saved_run(state, members)
        for m, saved in zip(members, state["members"]):
            if m.control is not None and saved.get("control") is not None:
                m.control.load_state_dict(
                    m.sae, saved["control"]
                )  # the coefficient it had reached is part of the config
            if m.convergence is not None and saved.get("convergence") is not None:
                m.convergence.load_state_dict(saved["convergence"])
            saved_cfg = SAEConfig.from_dict(saved["cfg"])
            m.cfg.normalization_factor = saved_cfg.normalization_factor
            if saved_cfg.to_dict() != m.cfg.to_dict():
                raise ConfigError(
                    "sae", display_name(m.cfg), "its config differs from the checkpoint's; resume needs the same run"
                )
            for name, value in (saved.get("model") or {}).items():
                if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise DataError(
                        f"{self.out / CHECKPOINT}: {display_name(m.cfg)}'s {name} holds NaN or infinite values"
                    )
            self.strategy.load_member_tensors(self.out, m, saved, state)
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.data.restore(state, step, self.out)
        return step

    def _check_saved_run(self, state: dict, members: list[Member]) -> int:
        """The checkpoint's step, after checking it holds this run (config, data, budget, number of SAEs)."""
        self.data.check_saved(state, self.out)
        saved_run = RunConfig.from_dict(state["run"])
        mine, theirs = self.run.to_dict(), saved_run.to_dict()
        for key in mine["train"]:
            if key not in RESUMABLE_CHANGES | LOCATION_FIELDS and mine["train"][key] != theirs["train"].get(key):
                raise ConfigError(
                    key,
                    mine["train"][key],
                    f"differs from the checkpoint's {theirs['train'].get(key)!r}; resume needs the same run",
                )
        if (mine["train"]["eval_activations"] is None) != (theirs["train"].get("eval_activations") is None):
            raise ConfigError(
                "eval_activations",
                mine["train"]["eval_activations"],
                f"differs from the checkpoint's {theirs['train'].get('eval_activations')!r}; resume needs the same run",
            )
        saved_data = state.get("data") if isinstance(state.get("data"), dict) else {}
        for field, now in self.data.fingerprints().items():
            check_same_data(field, getattr(self.run.train, field), saved_data.get(field), now)
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise DataError(f"{self.out / CHECKPOINT}: step={step!r} must be a whole number of steps ≥ 0")
        if step > self.total_steps:
            t = self.run.train
            budget = next((b for b in ("steps", "tokens", "epochs") if getattr(t, b) is not None), "steps")
            raise ConfigError(
                budget,
                getattr(t, budget),
                f"the checkpoint already holds {step} steps, more than the {self.total_steps} this asks for; "
                "ask for at least as many (or start a new run)",
            )
        if len(members) != len(state["members"]):
            raise ConfigError("sae", len(members), f"the checkpoint holds {len(state['members'])} SAEs")
        return step

    @staticmethod
    def _truncate_log(path: Path, step: int) -> None:
        if not path.exists():
            return
        keep = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill or a full disk
            if isinstance(record, dict) and isinstance(record.get("step", 0), int) and record.get("step", 0) <= step:
                keep.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in keep))
