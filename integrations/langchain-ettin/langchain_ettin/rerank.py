"""EttinRerank: a LangChain document compressor backed by the ettin-rerank engine."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from ettin_rerank.adapters import RerankResult, check_count, check_query, check_threshold
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import Field, model_validator

from langchain_ettin._settings import EttinSettings


class EttinRerank(EttinSettings, BaseDocumentCompressor):
    """Rerank documents with an Ettin cross-encoder; returned documents carry ``metadata["relevance_score"]``.

    ``relevance_score`` is in [0, 1] by default (``activation="sigmoid"``, like Cohere's), the raw logit with
    ``activation="none"``; the order always follows the raw logit. Each returned document also carries what the
    engine read: ``ettin_num_tokens``, ``ettin_num_windows``, ``ettin_truncated``, ``ettin_passage_start`` /
    ``ettin_passage_end`` (character span of the best window in ``page_content``) and ``ettin_logit``. Returned
    documents are copies (same ``id``, own metadata); the inputs are never modified.

    Example:
        .. code-block:: python

            from langchain_classic.retrievers import ContextualCompressionRetriever
            from langchain_ettin import EttinRerank

            retriever = ContextualCompressionRetriever(base_compressor=EttinRerank(top_n=5), base_retriever=base)
    """

    top_n: int | None = Field(default=3, gt=0)
    """Number of documents to return (``None``: all)."""
    score_threshold: float | None = None
    """Drop documents whose ``relevance_score`` is below this."""

    @model_validator(mode="after")
    def _check_threshold(self) -> EttinRerank:
        check_threshold(self.score_threshold)
        return self

    def _arguments(self, documents: Any, query: Any, top_n: int | None) -> tuple[list[str], dict[str, Any]]:
        check_query(query)
        top_n = self.top_n if top_n == -1 else check_count(top_n, "top_n")
        return _texts(documents), {"top_k": top_n, "score_threshold": self.score_threshold}

    def rerank(
        self, documents: Sequence[str | Document], query: str, *, top_n: int | None = -1
    ) -> list[dict[str, Any]]:
        """Rank ``documents`` for ``query``: ``[{"index": i, "relevance_score": s, ...}, ...]``, best first.

        ``top_n=-1`` (default) uses the field's value; ``None`` returns every document. Each row also holds the
        ``ettin_*`` keys described on the class.
        """
        texts, arguments = self._arguments(documents, query, top_n)
        if not texts:
            return []
        return _as_dicts(self._open().rerank(query, texts, self._call_options(), **arguments))

    async def arerank(
        self, documents: Sequence[str | Document], query: str, *, top_n: int | None = -1
    ) -> list[dict[str, Any]]:
        """:meth:`rerank` without blocking the event loop (the model loads on a worker thread too)."""
        texts, arguments = self._arguments(documents, query, top_n)
        if not texts:
            return []
        backend = await self._aopen()
        return _as_dicts(await backend.arerank(query, texts, self._call_options(), **arguments))

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The best ``top_n`` documents, as copies with ``relevance_score`` added to their metadata."""
        return _annotate(documents, self.rerank(documents, query))

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`."""
        return _annotate(documents, await self.arerank(documents, query))


def _texts(documents: Any) -> list[str]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        got = "a single string" if isinstance(documents, (str, bytes)) else type(documents).__name__
        msg = f"documents must be a list of strings or Documents, but got {got}"
        raise TypeError(msg)
    texts = []
    for position, doc in enumerate(documents):
        if isinstance(doc, Document):
            texts.append(doc.page_content)
        elif isinstance(doc, str):
            texts.append(doc)
        else:
            msg = f"documents[{position}] must be a string or a Document, but got {type(doc).__name__}"
            raise TypeError(msg)
    return texts


def _as_dicts(results: list[RerankResult]) -> list[dict[str, Any]]:
    return [{"index": r.index, "relevance_score": r.score, **r.metadata()} for r in results]


def _annotate(documents: Sequence[Document], ranked: list[dict[str, Any]]) -> list[Document]:
    annotated = []
    for row in ranked:
        document = documents[row["index"]]
        metadata = {**copy.deepcopy(document.metadata), **{k: v for k, v in row.items() if k != "index"}}
        annotated.append(document.model_copy(update={"metadata": metadata}))
    return annotated
