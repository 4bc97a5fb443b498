"""Every exception a caller of ettin-rerank catches (the server's queue errors live with its batcher)."""

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


class CancelledError(RuntimeError):
    """The caller of a call went away (its asyncio task was cancelled); the work stopped between batches."""


class InputError(ValueError):
    """A file cannot be read as asked; the message names the file (and line, where there is one)."""


class RemoteRerankError(RuntimeError):
    """An ettin-rerank server could not be reached, refused the call, or answered with something that is not a
    ranking; the message names the URL and what came back. ``url`` is the request's URL, ``status`` the HTTP status
    of the answer (``None`` when none came)."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
