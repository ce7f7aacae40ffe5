"""The data sources saelab knows, by name; the one place that lists them."""

from __future__ import annotations

from saelab.errors import ConfigError
from saelab.model.site import register_site_reader
from saelab.sources.base import Source
from saelab.sources.lm.source import LMSource
from saelab.sources.othello.source import OthelloSource
from saelab.sources.toy import ToySource

SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Add a source under its name; its site reader then also serves records written before sources recorded their hook."""
    if not isinstance(source, Source):
        raise TypeError(f"{source!r} does not implement saelab.sources.base.Source")
    SOURCES[source.name] = source
    register_site_reader(source.name, lambda record: source.site(record) if source.owns(record) else None)
    return source


def get_source(name: str) -> Source:
    """The source registered as `name` (ConfigError naming the field and value otherwise)."""
    if not isinstance(name, str) or name not in SOURCES:
        raise ConfigError("source", name, f"must be one of {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def source_of(record: dict | None) -> Source | None:
    """The registered source that wrote this provenance record; None for user data or a record no source owns."""
    if not isinstance(record, dict):
        return None
    return next((s for s in SOURCES.values() if s.owns(record)), None)


def score_files() -> dict[str, tuple[str, ...]]:
    """Every registered source's score files beside an SAE → the sweep-row keys each backs."""
    return {name: keys for s in SOURCES.values() for name, keys in s.score_files.items()}


for _source in (LMSource(), OthelloSource(), ToySource()):
    register_source(_source)
