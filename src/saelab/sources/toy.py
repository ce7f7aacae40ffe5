"""Sparse-superposition toy data (saelab.data.toy) as a data source: no model, no hook, no tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from saelab.data.toy import write_toy
from saelab.errors import DataError
from saelab.model.site import ModelSite
from saelab.sources.base import FeatureRows


class ToySource:
    """`saelab toy` folders: activations.npy with the true dictionary and codes beside it (toy.json, no source.json)."""

    name = "toy"
    description = "sparse non-negative mixes of known unit features (the ground truth for MMCS)"
    score_files: dict[str, tuple[str, ...]] = {}  # its sweeps add no evaluation beyond reconstruction

    def owns(self, record: dict) -> bool:
        """A record that names the toy source (`saelab toy` writes toy.json, which no provenance reader picks up)."""
        return record.get("source") == self.name

    def harvest(self, config, out: Path) -> Path:
        """`saelab toy`: config is a saelab.data.toy.ToyConfig."""
        write_toy(config, out)
        return Path(out)

    def site(self, record: dict) -> ModelSite | None:
        """None: toy activations come from no model."""
        return None

    def sweep_evaluator(self, record: dict, options: dict[str, Any], say: Callable[[str], None]):
        """None: reconstruction is all a sweep measures on toy data."""
        return None

    def feature_rows(self, folder: Path, record: dict, model: str | None) -> FeatureRows:
        """Refused: toy rows carry no tokens to show."""
        raise DataError(
            f"activations={str(folder)!r}: toy data has no tokens (need an LM cache or an OthelloGPT harvest)"
        )

    def token_decoder(self, model: str | None) -> Callable[[int], str]:
        """Refused, as feature_rows."""
        raise DataError("toy data has no tokens to decode")
