"""EttinCrossEncoder: LangChain's ``BaseCrossEncoder`` interface on the ettin-rerank engine."""

from __future__ import annotations

from typing import Any

from ettin_rerank import Reranker, shared_reranker
from langchain_core.cross_encoders import BaseCrossEncoder


class EttinCrossEncoder(BaseCrossEncoder):
    """For code that expects a ``BaseCrossEncoder`` (e.g. ``CrossEncoderReranker``).

    Example:
        .. code-block:: python

            from langchain_ettin import EttinCrossEncoder

            scores = EttinCrossEncoder(model="17m").score([("query", "a document"), ("query", "another")])
    """

    def __init__(self, model: str = "17m", **engine_options: Any) -> None:
        self.model = model
        self.engine_options = engine_options
        self._reranker: Reranker | None = None

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Raw scores of ``(query, document)`` pairs, in input order."""
        if self._reranker is None:
            self._reranker = shared_reranker(self.model, **self.engine_options)
        return self._reranker.score_pairs(text_pairs)
