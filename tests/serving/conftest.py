"""A real rerank server on 127.0.0.1 (uvicorn in a background thread) over the tiny test checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")

from ettin_rerank import Reranker
from ettin_rerank.serving import ServerConfig
from ettin_rerank.serving.server import BackgroundServer

SERVED = "ettin-test"
QUERY = "how does a reranker score a document for a query"
DOCUMENTS = [
    "Ettin is a family of paired encoder and decoder models trained on the same data.",
    "A cross-encoder reranker reads the query and the document together and outputs a relevance score.",
    "Qdrant is a vector database; its local mode runs embedded in the Python process.",
    "BM25 ranks documents by term frequency and inverse document frequency.",
    "Boil the pasta in salted water for nine minutes and keep a cup of the cooking water.",
    "Retrieval-augmented generation retrieves passages and gives them to a language model as context.",
]


@pytest.fixture(scope="session")
def serving_engine(tiny_checkpoint):
    """The in-process engine every server response is compared with (and the one the shared server uses)."""
    return Reranker(tiny_checkpoint, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def server_config(tiny_checkpoint):
    return ServerConfig(model=str(tiny_checkpoint), served_model_name=SERVED, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def server_url(server_config, serving_engine):
    with BackgroundServer(server_config, engine=serving_engine) as url:
        yield url


@dataclass(frozen=True)
class Case:
    """What every contract test sends: the served model name, a query, documents."""

    model: str = SERVED
    query: str = QUERY
    documents: tuple[str, ...] = tuple(DOCUMENTS)


@pytest.fixture(scope="session")
def case():
    return Case()


@pytest.fixture(scope="session")
def expected(serving_engine):
    """The in-process ranking of DOCUMENTS for QUERY: ``[(index, relevance in [0, 1])]`` best first."""
    return [(r.index, r.score) for r in serving_engine.rerank(QUERY, DOCUMENTS, activation="sigmoid")]
