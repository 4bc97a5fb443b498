"""EttinRanker inside Haystack: real pipelines, YAML round trips, dedup, cold async, drop-in for Haystack's ranker."""

from __future__ import annotations

import asyncio
import copy
import logging
import math

import pytest
import torch
import yaml
from ettin_rerank import METADATA_KEYS, Reranker
from haystack import Document, Pipeline
from haystack.components.joiners import ListJoiner
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.utils import ComponentDevice, Secret
from haystack_integrations.components.rankers.ettin import EttinRanker
from haystack_integrations.components.rankers.sentence_transformers import SentenceTransformersSimilarityRanker


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Reranker(tiny_checkpoint, device="cpu", dtype="float32")


def _documents(corpus):
    return [Document(id=name, content=text, meta={"name": name, "pos": i, "tags": ["a"]})
            for i, (name, text) in enumerate(corpus)]


def _ranker(checkpoint, **kwargs):
    kwargs = {"device": ComponentDevice.from_str("cpu"), "dtype": "float32", **kwargs}
    return EttinRanker(model=str(checkpoint), **kwargs)


@pytest.fixture(scope="module")
def store(corpus):
    store = InMemoryDocumentStore()
    store.write_documents(_documents(corpus))
    return store


def _pipeline(store, ranker, top_k=6):
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=top_k))
    pipe.add_component("ranker", ranker)
    pipe.connect("retriever.documents", "ranker.documents")
    return pipe


def test_retriever_to_ranker_pipeline(store, query, engine, tiny_checkpoint):
    pipeline = _pipeline(store, _ranker(tiny_checkpoint, top_k=3))
    retrieved = pipeline.get_component("retriever").run(query=query)["documents"]
    ranked = pipeline.run({"retriever": {"query": query}, "ranker": {"query": query}})["ranker"]["documents"]
    logits = engine.score(query, [d.content for d in retrieved])
    order = sorted(range(len(retrieved)), key=lambda i: -logits[i])[:3]
    assert [d.id for d in ranked] == [retrieved[i].id for i in order]
    assert [d.score for d in ranked] == pytest.approx([_sigmoid(logits[i]) for i in order], abs=1e-6)
    assert all(0 <= d.score <= 1 for d in ranked) and all(d.meta["name"] == d.id for d in ranked)
    for document in ranked:
        assert set(METADATA_KEYS) <= set(document.meta)
        assert document.meta["ettin_logit"] == pytest.approx(logits[[d.id for d in retrieved].index(document.id)],
                                                             abs=1e-5)
        assert document.content[document.meta["ettin_passage_start"]:document.meta["ettin_passage_end"]]
        assert document.meta["ettin_num_windows"] == 1 and document.meta["ettin_truncated"] is False


def test_duplicates_from_two_retrievers_are_removed_keeping_the_best_copy(store, query, tiny_checkpoint):
    pipe = Pipeline()
    pipe.add_component("bm25", InMemoryBM25Retriever(document_store=store, top_k=4))
    pipe.add_component("bm25_again", InMemoryBM25Retriever(document_store=store, top_k=6, scale_score=True))
    pipe.add_component("joiner", ListJoiner(list[Document]))  # joins without removing duplicates
    pipe.add_component("ranker", _ranker(tiny_checkpoint, top_k=20))
    pipe.connect("bm25.documents", "joiner.values")
    pipe.connect("bm25_again.documents", "joiner.values")
    pipe.connect("joiner.values", "ranker.documents")
    result = pipe.run({"bm25": {"query": query}, "bm25_again": {"query": query}, "ranker": {"query": query}},
                      include_outputs_from={"joiner"})
    joined = result["joiner"]["values"]
    ranked = result["ranker"]["documents"]
    assert len(joined) > len({d.id for d in joined}), "the test needs duplicates"
    assert sorted(d.id for d in ranked) == sorted({d.id for d in joined})
    ranker = _ranker(tiny_checkpoint)
    low, high = Document(id="x", content="same text", score=0.1), Document(id="x", content="same text", score=0.9)
    [kept] = ranker.run(query=query, documents=[low, high])["documents"]
    assert kept.id == "x"


def test_pipeline_survives_yaml_round_trip(store, query, tiny_checkpoint):
    pipeline = _pipeline(store, _ranker(tiny_checkpoint, top_k=3, scale_score=False, calibration_factor=0.5,
                                        model_kwargs={"torch_dtype": torch.float32}, max_tokens_per_doc=4096))
    loaded = Pipeline.loads(pipeline.dumps())
    ranker = loaded.get_component("ranker")
    assert isinstance(ranker, EttinRanker) and ranker.top_k == 3 and ranker.scale_score is False
    assert ranker.device == ComponentDevice.from_str("cpu") and ranker.max_tokens_per_doc == 4096
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


def test_drop_in_for_the_sentence_transformers_ranker(store, query, tiny_checkpoint):
    """A pipeline YAML written for SentenceTransformersSimilarityRanker loads with only the type changed, and
    both rankers give the same documents in the same order (same checkpoint: same logits)."""
    theirs = SentenceTransformersSimilarityRanker(
        model=str(tiny_checkpoint), device=ComponentDevice.from_str("cpu"), top_k=4, query_prefix="q: ",
        query_suffix=" ?", document_prefix="d: ", document_suffix=" .", meta_fields_to_embed=["name"],
        batch_size=8, model_kwargs={"dtype": torch.float32}, tokenizer_kwargs={"model_max_length": 256},
    )
    pipeline = _pipeline(store, theirs)
    inputs = {"retriever": {"query": query}, "ranker": {"query": query}}
    expected = pipeline.run(inputs)["ranker"]["documents"]  # before dumps(): theirs serialises model_kwargs in place
    data = yaml.safe_load(pipeline.dumps())
    data["components"]["ranker"]["type"] = "haystack_integrations.components.rankers.ettin.ranker.EttinRanker"
    ours = Pipeline.loads(yaml.safe_dump(data))
    got = ours.run(inputs)["ranker"]["documents"]
    assert isinstance(ours.get_component("ranker"), EttinRanker)
    assert [d.id for d in got] == [d.id for d in expected] and len(got) == 4
    assert [d.score for d in got] == pytest.approx([d.score for d in expected], abs=1e-4)
    assert all(isinstance(d, Document) and 0 <= d.score <= 1 for d in got)
    assert all(d.meta["name"] == e.meta["name"] for d, e in zip(got, expected, strict=True))


def test_overrides_are_honoured(corpus, query, tiny_checkpoint, engine):
    documents = _documents(corpus)
    ranker = _ranker(tiny_checkpoint, top_k=len(corpus), scale_score=True, score_threshold=0.9999)
    assert ranker.run(query=query, documents=documents)["documents"] == []  # init threshold applies
    everything = ranker.run(query=query, documents=documents, score_threshold=0.0)["documents"]
    assert len(everything) == len(corpus)  # 0.0 is a value, not "unset"
    raw = ranker.run(query=query, documents=documents, scale_score=False, score_threshold=-1e9)["documents"]
    scores = dict(zip((d.id for d in documents), engine.score(query, [d.content for d in documents]), strict=True))
    assert all(d.score == pytest.approx(scores[d.id], abs=1e-5) for d in raw)
    assert [d.id for d in raw] == [d.id for d in everything]  # the scale never changes the order
    assert len(ranker.run(query=query, documents=documents, top_k=2, score_threshold=0.0)["documents"]) == 2
    calibrated = _ranker(tiny_checkpoint, calibration_factor=3.0).run(query=query, documents=documents)["documents"]
    assert all(d.score == pytest.approx(_sigmoid(3.0 * scores[d.id]), abs=1e-6) for d in calibrated)
    with pytest.raises(ValueError, match="top_k must be > 0"):
        ranker.run(query=query, documents=documents, top_k=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"top_k": 0}, ValueError, "top_k must be > 0"),
        ({"long_document_strategy": "chunks"}, ValueError, "long_document_strategy must be one of"),
        ({"window_overlap": -1}, ValueError, "window_overlap must be an integer >= 0"),
        ({"max_tokens_per_doc": 0}, ValueError, "max_tokens_per_doc must be > 0"),
        ({"dtype": "int8"}, ValueError, "dtype must be one of"),
        ({"backend": "onnx"}, ValueError, "backend must be 'torch' or 'openvino'"),
        ({"precision": "int4"}, ValueError, "precision must be one of int8"),
        ({"threads": 0}, ValueError, "threads must be a positive integer"),
        ({"model_kwargs": {"load_in_8bit": True}}, ValueError, r"model_kwargs: only dtype"),
        ({"tokenizer_kwargs": {"padding_side": "left"}}, ValueError, r"tokenizer_kwargs: only model_max_length"),
        ({"batch_sise": 4}, TypeError, "batch_sise"),
    ],
)
def test_arguments_are_checked_at_construction(tiny_checkpoint, kwargs, error, message):
    with pytest.raises(error, match=message):
        _ranker(tiny_checkpoint, **kwargs)


def test_meta_fields_prefixes_and_no_mutation(corpus, query, tiny_checkpoint, engine):
    documents = _documents(corpus)
    before = copy.deepcopy(documents)
    ranker = _ranker(tiny_checkpoint, meta_fields_to_embed=["name"], document_prefix="passage: ",
                     query_prefix="query: ", scale_score=False, top_k=20)
    out = ranker.run(query=query, documents=documents)["documents"]
    assert documents == before  # inputs untouched; outputs are copies
    out[0].meta["tags"].append("written downstream")
    assert documents == before, "a returned document shares mutable metadata with its input"
    assert sorted(d.id for d in out) == sorted(d.id for d in documents)  # none lost or duplicated
    texts = [f"passage: {d.meta['name']}\n{d.content}" for d in documents]
    scores = dict(zip((d.id for d in documents), engine.score("query: " + query, texts), strict=True))
    assert all(d.score == pytest.approx(scores[d.id], abs=1e-5) for d in out)


@pytest.mark.parametrize(
    ("query", "documents", "error", "message"),
    [
        (None, [], TypeError, "query must be a string, but got NoneType"),
        ("q", None, TypeError, "documents must be a list of Documents, but got NoneType"),
        ("q", ["plain text"], TypeError, r"documents\[0\] must be a Document, but got str"),
        ("q", [Document(content="ok"), Document(id="b", content="bad \ud800")], ValueError,
         r"documents\[1\] is not valid Unicode"),
    ],
)
def test_bad_run_arguments_are_named(tiny_checkpoint, query, documents, error, message):
    with pytest.raises(error, match=message):
        _ranker(tiny_checkpoint).run(query=query, documents=documents)


def test_long_documents_are_capped_and_long_queries_cut(tiny_checkpoint, make_text, caplog):
    ranker = _ranker(tiny_checkpoint, max_length=256, max_tokens_per_doc=1000, scale_score=False)
    huge = Document(id="huge", content=make_text(40_000))
    [row] = ranker.run(query="protein study", documents=[huge])["documents"]
    assert row.meta["ettin_truncated"] is True and row.meta["ettin_num_tokens"] >= 40_000
    assert row.meta["ettin_num_windows"] <= 6  # 1,000 tokens in windows of ~250, not 40,000 tokens
    with caplog.at_level(logging.WARNING, logger="ettin_rerank"):
        out = ranker.run(query=make_text(300), documents=[Document(content="short")])["documents"]
    assert len(out) == 1 and "only its first" in caplog.text


def test_empty_documents_and_warm_up_reuse(tiny_checkpoint, query):
    ranker = _ranker(tiny_checkpoint)
    assert ranker.run(query=query, documents=[]) == {"documents": []}
    ranker.warm_up()
    first = ranker._backend.engine
    ranker.warm_up()
    assert ranker._backend.engine is first
    assert _ranker(tiny_checkpoint).run(query=query, documents=[Document(content="x")])


async def test_cold_run_async_never_blocks_the_event_loop(corpus, query, silent_hub, cached_hub_model, loop_ticker):
    name, cache = cached_hub_model  # a first load that waits on the network, as real cold starts do
    store = InMemoryDocumentStore()
    store.write_documents(_documents(corpus))
    pipeline = _pipeline(store, _ranker(name, top_k=4, cache_folder=cache))
    async with loop_ticker() as ticker:
        out = await pipeline.run_async({"retriever": {"query": query}, "ranker": {"query": query}})
    assert ticker.longest_stall < 0.5, f"the event loop stalled {ticker.longest_stall:.2f} s during the cold load"
    sync = pipeline.run({"retriever": {"query": query}, "ranker": {"query": query}})
    assert [d.id for d in out["ranker"]["documents"]] == [d.id for d in sync["ranker"]["documents"]]


async def test_run_async_equals_run(corpus, query, tiny_checkpoint, loop_ticker):
    ranker = _ranker(tiny_checkpoint, top_k=4)
    sync = ranker.run(query=query, documents=_documents(corpus))["documents"]
    async with loop_ticker() as ticker:
        results = await asyncio.gather(*(ranker.run_async(query=query, documents=_documents(corpus)) for _ in range(4)))
    assert ticker.ticks > 10, "the event loop was blocked while ranking"
    for result in results:
        assert [(d.id, round(d.score, 5)) for d in result["documents"]] == [(d.id, round(d.score, 5)) for d in sync]
