"""Exceptions raised by ettin-rerank."""

from __future__ import annotations


class ModelNotFoundError(FileNotFoundError):
    """No checkpoint could be found for the requested model; the message lists every place that was tried."""


class ModelLoadError(RuntimeError):
    """A checkpoint was found but could not be read (missing or corrupt file, unsupported layout)."""
