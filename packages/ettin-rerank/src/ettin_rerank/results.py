"""What a rerank call returns, and how results are ranked."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

METADATA_KEYS = ("ettin_logit", "ettin_num_tokens", "ettin_num_windows", "ettin_truncated",
                 "ettin_passage_start", "ettin_passage_end")
"""Keys that the adapters add to each returned node's / document's metadata (see :meth:`RerankResult.metadata`)."""


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
        score: The score under the call's ``activation`` (the raw logit by default), as a float64.
        logit: The raw logit; ranking uses it, so a squashed ``score`` never changes the order.
        num_tokens: Tokens in the document alone (no query, no special tokens).
        num_windows: How many windows were scored (1 unless the document is longer than the window).
        truncated: Whether any document token was left unread (``"truncate"`` strategy or ``max_tokens_per_doc``).
        best_window: The window that gave the best score (for ``"max"``, the one whose score is the document's).
        document: The document text, if asked for with ``return_documents=True``.
    """

    index: int
    score: float
    logit: float
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

    def metadata(self) -> dict[str, Any]:
        """What the engine knows about this document, under namespaced keys (:data:`METADATA_KEYS`):
        the raw logit, token and window counts, whether anything was cut, and the character span of the best
        window (``document[start:end]`` is the passage that matched)."""
        return dict(zip(METADATA_KEYS, (self.logit, self.num_tokens, self.num_windows, self.truncated,
                                        self.best_window.char_start, self.best_window.char_end), strict=True))


def rank(results: Sequence[RerankResult], top_k: int | None = None,
         score_threshold: float | None = None) -> list[RerankResult]:
    """Best first by raw logit (ties keep input order); a non-finite logit (NaN, inf) is ranked last and logged.

    ``score_threshold`` compares with ``score`` (the space the caller asked for); NaN scores never pass it.
    """
    invalid = [r.index for r in results if not math.isfinite(r.logit)]
    if invalid:
        logger.warning("%d document(s) got a non-finite score (input positions %s); they are ranked last",
                       len(invalid), ", ".join(map(str, invalid[:20])) + (" ..." if len(invalid) > 20 else ""))
    ordered = sorted(results, key=_rank_key)
    if score_threshold is not None:
        ordered = [r for r in ordered if r.score >= score_threshold]
    return ordered[:top_k]


def _rank_key(result: RerankResult) -> tuple[bool, float, int]:
    finite = math.isfinite(result.logit)
    return (not finite, -result.logit if finite else 0.0, result.index)
