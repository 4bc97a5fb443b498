"""What a rerank call returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextSpan:
    """A stretch of a document, in tokens (``[token_start, token_end)``) and in characters."""

    token_start: int
    token_end: int
    char_start: int
    char_end: int


@dataclass(frozen=True)
class RerankResult:
    """One document's score, with what the engine did to fit it in the model's window.

    Attributes:
        index: Position of the document in the input list.
        score: Raw logit (or sigmoid of it with ``activation="sigmoid"``); higher is more relevant.
        num_tokens: Tokens in the document alone (no query, no special tokens).
        num_windows: How many windows were scored (1 unless the document is longer than the window).
        truncated: Whether any document token was left unread (only with ``long_document_strategy="truncate"``).
        best_window: The window that gave the best score (for ``"max"``, the one whose score is the document's).
        document: The document text, if asked for with ``return_documents=True``.
    """

    index: int
    score: float
    num_tokens: int
    num_windows: int
    truncated: bool
    best_window: TextSpan
    document: str | None = None

    @property
    def passage(self) -> str | None:
        """The text of the best window (``None`` unless the document was returned)."""
        if self.document is None:
            return None
        return self.document[self.best_window.char_start : self.best_window.char_end]
