"""The retrieve stage of the demo and the evaluation: a Sentence Transformers embedder over Qdrant.

Qdrant runs embedded (in memory, or on a local folder) by default, or as a server when a URL is given.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from ettin_rerank.checkpoints import default_embedding_model

__all__ = ["Hit", "QdrantRetriever", "default_embedding_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One retrieved document: its id, retrieval score and stored payload."""

    doc_id: str
    score: float
    payload: dict[str, Any]


class QdrantRetriever:
    """Embeds documents into a Qdrant collection and searches it by cosine similarity.

    Args:
        embedding_model: Sentence Transformers model name or folder (default: all-MiniLM-L6-v2).
        url: Qdrant server URL; ``None`` runs Qdrant embedded.
        path: Folder for embedded Qdrant on disk; ``None`` keeps it in memory.
        collection: Collection name (recreated by :meth:`index`).
    """

    def __init__(
        self,
        embedding_model: str | None = None,
        *,
        url: str | None = None,
        path: str | os.PathLike[str] | None = None,
        collection: str = "ettin-rerank",
        device: str | None = None,
    ) -> None:
        from qdrant_client import QdrantClient
        from sentence_transformers import SentenceTransformer

        from ettin_rerank.engine.loading import quiet_progress_bars

        if url is not None and path is not None:
            msg = "give either url (a Qdrant server) or path (embedded Qdrant on disk), not both"
            raise ValueError(msg)
        self.embedding_model = embedding_model or default_embedding_model()
        with quiet_progress_bars(not logger.isEnabledFor(logging.INFO)):
            self.embedder = SentenceTransformer(self.embedding_model, device=device)
        if url:
            self.client = QdrantClient(url=url)
        else:
            self.client = QdrantClient(path=str(path)) if path else QdrantClient(":memory:")
        self.location = url or (f"embedded, {path}" if path else "embedded, in memory")
        self.collection = collection

    def embed(self, texts: Sequence[str], *, show_progress_bar: bool = False, batch_size: int = 64) -> Any:
        return self.embedder.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=show_progress_bar
        )

    def index(
        self, doc_ids: Sequence[str], texts: Sequence[str], payloads: Sequence[dict[str, Any]] | None = None,
        *, batch_size: int = 256, show_progress_bar: bool = False,
    ) -> float:
        """(Re)create the collection with these documents; returns the seconds spent. Upserts go in batches."""
        from qdrant_client import models

        start = time.perf_counter()
        vectors = self.embed(texts, show_progress_bar=show_progress_bar)
        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)
        self.client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=vectors.shape[1], distance=models.Distance.COSINE),
        )
        payloads = payloads or [{} for _ in doc_ids]
        for begin in tqdm(range(0, len(doc_ids), batch_size), desc="Indexing", disable=not show_progress_bar):
            end = begin + batch_size
            self.client.upsert(
                self.collection,
                points=[
                    models.PointStruct(id=begin + i, vector=vector.tolist(), payload={**payload, "doc_id": doc_id})
                    for i, (doc_id, vector, payload) in enumerate(
                        zip(doc_ids[begin:end], vectors[begin:end], payloads[begin:end], strict=True)
                    )
                ],
                wait=True,
            )
        return time.perf_counter() - start

    def search(self, queries: Sequence[str], top_k: int) -> list[list[Hit]]:
        """The ``top_k`` nearest documents of each query, best first."""
        from qdrant_client import models

        vectors = self.embed(queries)
        requests = [models.QueryRequest(query=v.tolist(), limit=top_k, with_payload=True) for v in vectors]
        responses = self.client.query_batch_points(self.collection, requests)
        return [
            [Hit(doc_id=p.payload["doc_id"], score=p.score, payload=p.payload) for p in response.points]
            for response in responses
        ]
