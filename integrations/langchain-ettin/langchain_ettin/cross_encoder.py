"""EttinCrossEncoder: LangChain's ``BaseCrossEncoder`` interface on the ettin-rerank engine."""

from __future__ import annotations

from langchain_core.cross_encoders import BaseCrossEncoder

from langchain_ettin._settings import EttinSettings


class EttinCrossEncoder(EttinSettings, BaseCrossEncoder):
    """For code that expects a ``BaseCrossEncoder`` (e.g. ``CrossEncoderReranker``); the same fields as
    :class:`~langchain_ettin.EttinRerank`, and the same scores (in [0, 1] by default, raw with ``activation="none"``).

    Example:
        .. code-block:: python

            from langchain_ettin import EttinCrossEncoder

            scores = EttinCrossEncoder(model="17m").score([("query", "a document"), ("query", "another")])
    """

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Scores of ``(query, document)`` pairs, in input order."""
        return self._open().score_pairs(text_pairs, self._call_options())
