"""What a data source is: the protocol every source (lm, othello, toy) implements, and what it hands upward.

A source turns a model (or a generator) into a folder of activations with a provenance record
(`source.json`, or an LM cache's `manifest.json`). Everything source-specific that the layers above
need is asked of the source that owns the record, found by `saelab.sources.registry.source_of`:
the model hook (for SAELens's cfg.json and SAEBench), the evaluations a sweep adds to each row,
and the rows, tokens and labels the feature analyses read. docs/design/sources.md says how to add one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import numpy as np

from saelab.data.store import ActivationStore
from saelab.data.token_grid import TokenGrid
from saelab.model.site import SITE_FIELD, ModelSite

# (sae, its folder) → the columns it adds to the SAE's sweep row; set up on its first call, then shared.
SweepEvaluator = Callable[[Any, Path], dict[str, Any]]


@dataclass
class FeatureRows:
    """What `saelab features` reads from a source's folder: the rows, the token at each, labels where the source has them."""

    store: ActivationStore
    grid: TokenGrid
    meta: dict  # the provenance record (cache manifest, source.json)
    labels: np.ndarray | None = None  # per-row labels (OthelloGPT: board state [N, 64])
    model: str | None = None  # the model the rows came from, for its tokenizer


@runtime_checkable
class Source(Protocol):
    """A data source, registered by `name` in saelab.sources.registry."""

    name: ClassVar[str]  # the registry key; also FeatureData.kind
    description: ClassVar[str]
    # Files its sweep evaluator writes beside an SAE → the row keys each file backs: a resumed sweep reuses
    # a results row only when they agree with the file.
    score_files: ClassVar[dict[str, tuple[str, ...]]]

    def owns(self, record: dict) -> bool:
        """Whether a provenance record (source.json, manifest.json, saelab.json's "source") came from this source."""
        ...

    def harvest(self, config: Any, out: Path) -> Path:
        """Write activations and their provenance record into `out` (config: the source's own typed harvest config)."""
        ...

    def site(self, record: dict) -> ModelSite | None:
        """The model hook the record's activations were read at; None when they came from no model."""
        ...

    def sweep_evaluator(
        self, record: dict, options: dict[str, Any], say: Callable[[str], None]
    ) -> SweepEvaluator | None:
        """The evaluations beyond reconstruction a sweep's [eval] options call for on this source's data; None for none."""
        ...

    def feature_rows(self, folder: Path, record: dict, model: str | None) -> FeatureRows:
        """The rows, token grid and labels of a folder this source wrote (DataError when it has no tokens)."""
        ...

    def token_decoder(self, model: str | None) -> Callable[[int], str]:
        """Token id → display text (an LM's tokenizer, a board square's name)."""
        ...


def with_site(record: dict, site: ModelSite | None) -> dict:
    """The record with its model hook under SITE_FIELD, so any reader of the file finds it without knowing the source."""
    return {**record, SITE_FIELD: site.to_dict()} if site is not None else dict(record)
