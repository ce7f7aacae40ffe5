"""The package version (a leaf, so the folder format can record it without importing the package)."""

__version__ = "0.1.0"
