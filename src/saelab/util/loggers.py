"""Optional experiment loggers (wandb, trackio, tensorboard) fed the records metrics.jsonl holds.

A backend is imported only when a run asks for it. Each SAE of a run gets its own logger run
(named after the SAE, grouped by the run folder), whose config is logged once at the start and
whose steps are the trainer's. metrics.jsonl stays the record of the run; a logger is a view of
it, so a resumed run opens a new logger run that starts at the checkpoint's step.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from saelab.errors import ConfigError

# Names the command line offers; tests and plugins may register more.
LOGGERS = ("wandb", "trackio", "tensorboard")
PROJECT = "saelab"  # the wandb/trackio project unless WANDB_PROJECT / TRACKIO_PROJECT say otherwise


class Logger(Protocol):
    """One logger run for one SAE."""

    def start(self, config: dict) -> None:
        """Open the run and record its config (once)."""

    def log(self, record: dict, step: int) -> None:
        """Record one metrics.jsonl record at training step `step`."""

    def finish(self) -> None:
        """Close the run (flush what is buffered)."""


@dataclass(frozen=True)
class LogTarget:
    """Where one SAE's logger run goes: its name, its group (the run folder) and the SAE folder."""

    name: str
    group: str
    folder: Path


@dataclass(frozen=True)
class Backend:
    """A registered logger: its package, the extra that installs it, its import, and how to make one."""

    package: str
    extra: str
    load: Callable[[], object]  # imports the package (ImportError when it is missing)
    make: Callable[[LogTarget], Logger]


_REGISTRY: dict[str, Backend] = {}


def register(
    name: str, package: str, extra: str, load: Callable[[], object], make: Callable[[LogTarget], Logger]
) -> None:
    """Make `name` a valid --log value: `load()` imports `package`, `make(target)` builds a Logger."""
    _REGISTRY[name] = Backend(package, extra, load, make)


def check_logger(name: str, field: str = "log") -> object:
    """The imported package of logger `name`; a ConfigError naming `field` when it is unknown or not installed."""
    backend = _REGISTRY.get(name)
    if backend is None:
        raise ConfigError(field, name, f"unknown logger (known: {', '.join(sorted(_REGISTRY))})")
    try:
        return backend.load()  # asked for: imported here, before anything trains
    except ImportError as e:
        raise ConfigError(
            field,
            name,
            f"needs the {backend.package} package ({type(e).__name__}: {e}); pip install 'saelab[{backend.extra}]'",
        ) from None


def open_logger(name: str, target: LogTarget, config: dict) -> Logger:
    """A started Logger of backend `name` for `target` with `config` logged."""
    check_logger(name)
    logger = _REGISTRY[name].make(target)
    logger.start(config)
    return logger


def scalars(record: dict) -> dict[str, float]:
    """The numeric entries of a record except `step`, NaN/inf included (the loggers plot them as gaps)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class RunLoggers:
    """The loggers of one training run, one per SAE folder; a run without --log holds none."""

    def __init__(self, loggers: dict[Path, Logger] | None = None):
        self.loggers = loggers or {}

    @classmethod
    def open(cls, name: str | None, targets: list[tuple[LogTarget, dict]]) -> RunLoggers:
        """Start one logger per (target, config); none when `name` is None."""
        if name is None:
            return cls()
        loggers: dict[Path, Logger] = {}
        try:
            for target, config in targets:
                loggers[target.folder] = open_logger(name, target, config)
        except BaseException:
            cls(loggers).close()
            raise
        return cls(loggers)

    def log(self, folder: Path, record: dict) -> None:
        """Send `record` (a metrics.jsonl line) to the logger of the SAE in `folder`."""
        logger = self.loggers.get(folder)
        if logger is not None:
            logger.log(record, int(record["step"]))

    def close(self) -> None:
        """Finish every logger run; a failure is a warning (metrics.jsonl and the trained SAE are already safe)."""
        for folder, logger in self.loggers.items():
            try:
                logger.finish()
            except Exception as e:  # noqa: BLE001 — a logger's own error must not mask the training's outcome
                warnings.warn(
                    f"saelab: the logger of {folder} failed to finish ({type(e).__name__}: {e})", stacklevel=2
                )
        self.loggers = {}


# ---- the backends ---------------------------------------------------------------------------


class WandbLogger:
    """Weights & Biases: one wandb run per SAE (WANDB_MODE=offline writes under the SAE folder, no network)."""

    def __init__(self, target: LogTarget):
        self.target = target
        self.run = None

    def start(self, config: dict) -> None:
        """wandb.init with the SAE's name, the run folder as group, files under the SAE folder."""
        import wandb

        # create_new: several SAEs of one run log at once, each to its own wandb run.
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            name=self.target.name,
            group=self.target.group,
            dir=str(self.target.folder),
            config=config,
            reinit="create_new",
        )

    def log(self, record: dict, step: int) -> None:
        """run.log at the trainer's step."""
        self.run.log(scalars(record), step=step)

    def finish(self) -> None:
        """run.finish."""
        if self.run is not None:
            self.run.finish()


class TrackioLogger:
    """Hugging Face trackio: one trackio run per SAE, grouped by the run folder."""

    def __init__(self, target: LogTarget):
        self.target = target
        self.run = None

    def start(self, config: dict) -> None:
        """trackio.init with the SAE's name and the run folder as group."""
        import trackio

        self.run = trackio.init(
            project=os.environ.get("TRACKIO_PROJECT", PROJECT),
            name=self.target.name,
            group=self.target.group,
            config=config,
        )

    def log(self, record: dict, step: int) -> None:
        """run.log at the trainer's step."""
        self.run.log(scalars(record), step=step)

    def finish(self) -> None:
        """run.finish."""
        if self.run is not None:
            self.run.finish()


class TensorBoardLogger:
    """TensorBoard event files in SAE_FOLDER/tensorboard/ (torch.utils.tensorboard, which needs the tensorboard package)."""

    def __init__(self, target: LogTarget):
        self.target = target
        self.writer = None

    def start(self, config: dict) -> None:
        """Open the event writer; the config goes in once as a JSON text summary."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.target.folder / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log(self, record: dict, step: int) -> None:
        """One scalar per record key at the trainer's step."""
        for key, value in scalars(record).items():
            if math.isfinite(value):  # TensorBoard draws a NaN as a spike to the axis; leave a gap
                self.writer.add_scalar(key, value, step)

    def finish(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()


def _load_wandb():
    import wandb

    return wandb


def _load_trackio():
    import trackio

    return trackio


def _load_tensorboard():
    from torch.utils import (
        tensorboard,  # raises ImportError without the tensorboard package
    )

    return tensorboard


register("wandb", "wandb", "log", _load_wandb, WandbLogger)
register("trackio", "trackio", "trackio", _load_trackio, TrackioLogger)
register("tensorboard", "tensorboard", "log", _load_tensorboard, TensorBoardLogger)
