"""EttinRerank: a LangChain document compressor backed by the ettin-rerank engine."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ettin_rerank import Reranker, RerankResult, shared_reranker
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr


class EttinRerank(BaseDocumentCompressor):
    """Rerank documents with an Ettin cross-encoder; returned documents carry ``metadata["relevance_score"]``.

    Example:
        .. code-block:: python

            from langchain_classic.retrievers import ContextualCompressionRetriever
            from langchain_ettin import EttinRerank

            retriever = ContextualCompressionRetriever(base_compressor=EttinRerank(top_n=5), base_retriever=base)
    """

    model: str = "17m"
    """Ettin size (``17m`` ... ``1b``), local folder or hub id."""
    top_n: int | None = Field(default=3, gt=0)
    """Number of documents to return (``None``: all)."""
    score_threshold: float | None = None
    """Drop documents scoring below this (raw logit, or probability with ``activation="sigmoid"``)."""
    activation: str = "none"
    """``"none"`` for raw logits, ``"sigmoid"`` for scores in (0, 1)."""
    device: str | None = None
    """``"cpu"``, ``"cuda"``...; ``None`` picks CUDA when present."""
    dtype: str | None = None
    """``"float32"``, ``"bfloat16"`` or ``"float16"``; ``None`` is automatic."""
    max_length: int | None = None
    """Tokens per window; ``None`` uses the model's limit (7,999 for Ettin)."""
    long_document_strategy: str = "max"
    """``"max"``, ``"mean"`` or ``"truncate"`` for documents longer than the window."""
    window_overlap: int = Field(default=128, ge=0)
    """Tokens shared by consecutive windows of a long document."""
    batch_tokens: int | None = None
    """Token budget of one forward pass."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the checkpoint."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    _reranker: Reranker | None = PrivateAttr(default=None)

    def _engine(self) -> Reranker:
        if self._reranker is None:
            self._reranker = shared_reranker(
                self.model, device=self.device, dtype=self.dtype, batch_tokens=self.batch_tokens,
                trust_remote_code=self.trust_remote_code,
            )
        return self._reranker

    def _options(self, top_n: int | None) -> dict[str, Any]:
        return {
            "top_k": top_n,
            "score_threshold": self.score_threshold,
            "activation": self.activation,
            "max_length": self.max_length,
            "long_document_strategy": self.long_document_strategy,
            "window_overlap": self.window_overlap,
        }

    def rerank(
        self, documents: Sequence[str | Document], query: str, *, top_n: int | None = -1
    ) -> list[dict[str, Any]]:
        """Rank ``documents`` for ``query``: ``[{"index": i, "relevance_score": s}, ...]``, best first.

        ``top_n=-1`` (default) uses the field's value; ``None`` returns every document.
        """
        top_n = self.top_n if top_n == -1 else top_n
        results = self._engine().rerank(query, _texts(documents), **self._options(top_n))
        return _as_dicts(results)

    async def arerank(
        self, documents: Sequence[str | Document], query: str, *, top_n: int | None = -1
    ) -> list[dict[str, Any]]:
        """:meth:`rerank` without blocking the event loop."""
        top_n = self.top_n if top_n == -1 else top_n
        engine = self._reranker or await asyncio.to_thread(self._engine)
        return _as_dicts(await engine.arerank(query, _texts(documents), **self._options(top_n)))

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


def _texts(documents: Sequence[str | Document]) -> list[str]:
    if isinstance(documents, str):
        msg = "documents must be a list of strings or Documents, not a single string"
        raise TypeError(msg)
    return [doc.page_content if isinstance(doc, Document) else doc for doc in documents]


def _as_dicts(results: list[RerankResult]) -> list[dict[str, Any]]:
    return [{"index": r.index, "relevance_score": r.score} for r in results]


def _annotate(documents: Sequence[Document], ranked: list[dict[str, Any]]) -> list[Document]:
    return [
        documents[row["index"]].model_copy(
            update={"metadata": {**documents[row["index"]].metadata, "relevance_score": row["relevance_score"]}}
        )
        for row in ranked
    ]
