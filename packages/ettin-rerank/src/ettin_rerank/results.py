"""What a rerank call returns, and how results are ranked: by the reranker's raw logit (:func:`rank`), or fused with
the retriever's scores (:func:`rank_fused`: ``alpha * retriever + (1 - alpha) * reranker``, each min-max normalised
within a query's list; ``alpha`` is tuned by ``ettin-rerank eval --fusion``). Imports nothing heavy."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
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


def minmax(values: Sequence[float]) -> list[float]:
    """Values scaled to [0, 1] within the list (all 0.5 when they are equal); non-finite values become 0."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [0.0] * len(values)
    low, high = min(finite), max(finite)
    if high == low:
        return [0.5 if math.isfinite(v) else 0.0 for v in values]
    return [(v - low) / (high - low) if math.isfinite(v) else 0.0 for v in values]


def fuse(retrieval: Sequence[float], rerank: Sequence[float], alpha: float) -> list[float]:
    """Fused scores of one query's list (same order as the inputs)."""
    if not 0 <= alpha <= 1:
        msg = f"alpha (fusion_weight) must be between 0 and 1, but got {alpha}"
        raise ValueError(msg)
    if len(retrieval) != len(rerank):
        msg = f"got {len(retrieval)} retrieval scores for {len(rerank)} documents"
        raise ValueError(msg)
    return [alpha * r + (1 - alpha) * s for r, s in zip(minmax(retrieval), minmax(rerank), strict=True)]


def rank_fused(results: Sequence[RerankResult], retrieval: Sequence[float], alpha: float, *,
               top_k: int | None = None, score_threshold: float | None = None) -> list[RerankResult]:
    """``results`` (one per input document, any order) best first by fused score, which becomes their ``score``;
    ``retrieval[i]`` is the retriever's score of input ``i``. Ties keep input order."""
    by_index = sorted(results, key=lambda r: r.index)
    fused = fuse(retrieval, [r.logit for r in by_index], alpha)
    ranked = sorted((replace(r, score=f) for r, f in zip(by_index, fused, strict=True)),
                    key=lambda r: (-r.score, r.index))
    if score_threshold is not None:
        ranked = [r for r in ranked if r.score >= score_threshold]
    return ranked[:top_k]
