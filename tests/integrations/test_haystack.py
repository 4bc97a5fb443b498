"""EttinRanker inside Haystack: a real retriever -> ranker Pipeline, YAML round trip, overrides, async."""

from __future__ import annotations

import asyncio

import pytest
from ettin_rerank import Reranker
from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import ComponentDevice, Secret
from haystack_integrations.components.rankers.ettin import EttinRanker


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Reranker(tiny_checkpoint, device="cpu", dtype="float32")


def _documents(corpus):
    return [Document(id=name, content=text, meta={"name": name, "pos": i}) for i, (name, text) in enumerate(corpus)]


def _ranker(tiny_checkpoint, **kwargs):
    return EttinRanker(model=str(tiny_checkpoint), device=ComponentDevice.from_str("cpu"), dtype="float32", **kwargs)


@pytest.fixture(scope="module")
def pipeline(corpus, tiny_checkpoint):
    store = InMemoryDocumentStore()
    store.write_documents(_documents(corpus))
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=6))
    pipe.add_component("ranker", _ranker(tiny_checkpoint, top_k=3, scale_score=False))
    pipe.connect("retriever.documents", "ranker.documents")
    return pipe


def test_retriever_to_ranker_pipeline(pipeline, query, engine):
    retrieved = pipeline.get_component("retriever").run(query=query)["documents"]
    result = pipeline.run({"retriever": {"query": query}, "ranker": {"query": query}})
    ranked = result["ranker"]["documents"]
    scores = engine.score(query, [d.content for d in retrieved])
    order = sorted(range(len(retrieved)), key=lambda i: -scores[i])[:3]
    assert [d.id for d in ranked] == [retrieved[i].id for i in order]
    assert [d.score for d in ranked] == pytest.approx([scores[i] for i in order], abs=1e-5)
    assert all(d.meta["name"] == d.id for d in ranked)


def test_pipeline_survives_yaml_round_trip(pipeline, query):
    loaded = Pipeline.loads(pipeline.dumps())
    ranker = loaded.get_component("ranker")
    assert isinstance(ranker, EttinRanker) and ranker.top_k == 3 and ranker.scale_score is False
    assert ranker.device == ComponentDevice.from_str("cpu")
    before = pipeline.run({"retriever": {"query": query}, "ranker": {"query": query}})["ranker"]["documents"]
    after = loaded.run({"retriever": {"query": query}, "ranker": {"query": query}})["ranker"]["documents"]
    assert [(d.id, round(d.score, 5)) for d in after] == [(d.id, round(d.score, 5)) for d in before]


def test_to_dict_from_dict(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-value")
    ranker = _ranker(tiny_checkpoint, meta_fields_to_embed=["name"], score_threshold=0.5)
    data = ranker.to_dict()
    assert data["type"] == "haystack_integrations.components.rankers.ettin.ranker.EttinRanker"
    assert data["init_parameters"]["token"] == {"type": "env_var", "env_vars": ["HF_API_TOKEN", "HF_TOKEN"],
                                                "strict": False}
    assert "secret-value" not in str(data)
    restored = EttinRanker.from_dict(data)
    assert isinstance(restored.token, Secret) and restored.token.resolve_value() == "secret-value"
    assert restored.to_dict() == data


def test_overrides_are_honoured(corpus, query, tiny_checkpoint, engine):
    documents = _documents(corpus)
    ranker = _ranker(tiny_checkpoint, top_k=len(corpus), scale_score=True, score_threshold=1e9)
    assert ranker.run(query=query, documents=documents)["documents"] == []  # init threshold applies
    everything = ranker.run(query=query, documents=documents, score_threshold=0.0)["documents"]
    assert len(everything) == len(corpus)  # 0.0 is a value, not "unset"
    raw = ranker.run(query=query, documents=documents, scale_score=False, score_threshold=-1e9)["documents"]
    scores = dict(zip((d.id for d in documents), engine.score(query, [d.content for d in documents]), strict=True))
    assert all(d.score == pytest.approx(scores[d.id], abs=1e-5) for d in raw)
    assert all(0 < d.score < 1 for d in everything)
    assert len(ranker.run(query=query, documents=documents, top_k=2, score_threshold=0.0)["documents"]) == 2
    with pytest.raises(ValueError, match="top_k must be > 0"):
        ranker.run(query=query, documents=documents, top_k=0)
    with pytest.raises(ValueError, match="top_k must be > 0"):
        _ranker(tiny_checkpoint, top_k=0)


def test_meta_fields_prefixes_and_no_mutation(corpus, query, tiny_checkpoint, engine):
    documents = _documents(corpus)
    ranker = _ranker(tiny_checkpoint, meta_fields_to_embed=["name"], document_prefix="passage: ",
                     query_prefix="query: ", scale_score=False, top_k=20)
    out = ranker.run(query=query, documents=documents)["documents"]
    assert all(d.score is None for d in documents)  # inputs untouched; outputs are copies
    assert sorted(d.id for d in out) == sorted(d.id for d in documents)  # none lost or duplicated
    texts = [f"passage: {d.meta['name']}\n{d.content}" for d in documents]
    scores = dict(zip((d.id for d in documents), engine.score("query: " + query, texts), strict=True))
    assert all(d.score == pytest.approx(scores[d.id], abs=1e-5) for d in out)


def test_empty_documents_and_warm_up_reuse(tiny_checkpoint, query):
    ranker = _ranker(tiny_checkpoint)
    assert ranker.run(query=query, documents=[]) == {"documents": []}
    ranker.warm_up()
    first = ranker._reranker
    ranker.warm_up()
    assert ranker._reranker is first and _ranker(tiny_checkpoint).run(query=query, documents=[Document(content="x")])


async def test_run_async_equals_run_and_pipeline_async(corpus, query, tiny_checkpoint, loop_ticker):
    ranker = _ranker(tiny_checkpoint, top_k=4)
    sync = ranker.run(query=query, documents=_documents(corpus))["documents"]
    async with loop_ticker() as ticker:
        results = await asyncio.gather(*(ranker.run_async(query=query, documents=_documents(corpus)) for _ in range(4)))
    assert ticker.ticks > 10, "the event loop was blocked while ranking"
    for result in results:
        assert [(d.id, round(d.score, 5)) for d in result["documents"]] == [(d.id, round(d.score, 5)) for d in sync]
    store = InMemoryDocumentStore()
    store.write_documents(_documents(corpus))
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=8))
    pipe.add_component("ranker", _ranker(tiny_checkpoint, top_k=4))
    pipe.connect("retriever.documents", "ranker.documents")
    out = await pipe.run_async({"retriever": {"query": query}, "ranker": {"query": query}})
    assert [d.id for d in out["ranker"]["documents"]] == [d.id for d in sync]
