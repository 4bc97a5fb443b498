"""Exceptions raised by ettin-rerank."""

from __future__ import annotations


class ModelNotFoundError(FileNotFoundError):
    """No checkpoint could be found for the requested model; the message lists every place that was tried."""


class ModelLoadError(RuntimeError):
    """A checkpoint was found but could not be read (missing or corrupt file, unsupported layout)."""


class MissingExtraError(ImportError):
    """An optional part of ettin-rerank was used without its dependencies; the message says what to install."""

    def __init__(self, extra: str, missing: str) -> None:
        super().__init__(f"{missing} is not installed: pip install \"ettin-rerank[{extra}]\"")
        self.extra = extra
