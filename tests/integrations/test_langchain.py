"""EttinRerank inside LangChain: ContextualCompressionRetriever, an LCEL chain, async (cold too), no mutation, and
the same contract as the framework's own CrossEncoderReranker."""

from __future__ import annotations

import asyncio
import copy
import math

import pytest
from ettin_rerank import METADATA_KEYS, Reranker
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_community.cross_encoders import HuggingFaceCrossEncoder
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ettin import EttinCrossEncoder, EttinRerank
from langchain_huggingface import HuggingFaceEmbeddings
from pydantic import ValidationError


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def retriever(corpus, embedding_model_path):
    embeddings = HuggingFaceEmbeddings(model_name=embedding_model_path, model_kwargs={"device": "cpu"})
    store = InMemoryVectorStore(embeddings)
    store.add_documents([Document(page_content=text, metadata={"name": name}, id=name) for name, text in corpus])
    return store.as_retriever(search_kwargs={"k": 6})


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Reranker(tiny_checkpoint, device="cpu", dtype="float32")


def _documents(corpus):
    return [Document(page_content=text, metadata={"name": name, "pos": i, "tags": ["a"]}, id=name)
            for i, (name, text) in enumerate(corpus)]


def test_contextual_compression_retriever(retriever, query, engine_options, engine):
    compressor = EttinRerank(top_n=3, **engine_options)
    assert isinstance(compressor, BaseDocumentCompressor)
    pipeline = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=retriever)
    base_docs = retriever.invoke(query)
    logits = engine.score(query, [d.page_content for d in base_docs])
    expected = sorted(range(len(base_docs)), key=lambda i: -logits[i])[:3]
    got = pipeline.invoke(query)
    assert [d.id for d in got] == [base_docs[i].id for i in expected]
    assert [d.metadata["relevance_score"] for d in got] == pytest.approx([_sigmoid(logits[i]) for i in expected])
    assert all(d.metadata["name"] == d.id and set(METADATA_KEYS) <= set(d.metadata) for d in got)


def test_same_contract_as_the_cross_encoder_reranker(corpus, query, engine_options, tiny_checkpoint):
    """LangChain's own CrossEncoderReranker on HuggingFaceCrossEncoder, and ours, same checkpoint: same order."""
    theirs = CrossEncoderReranker(model=HuggingFaceCrossEncoder(model_name=str(tiny_checkpoint),
                                                                model_kwargs={"device": "cpu"}), top_n=4)
    expected = theirs.compress_documents(_documents(corpus), query)
    got = EttinRerank(top_n=4, **engine_options).compress_documents(_documents(corpus), query)
    assert [d.id for d in got] == [d.id for d in expected] and len(got) == 4
    assert all(isinstance(d, Document) and 0 <= d.metadata["relevance_score"] <= 1 for d in got)
    assert all({k: v for k, v in d.metadata.items() if k in e.metadata} == e.metadata
               for d, e in zip(got, expected, strict=True))
    as_cross_encoder = CrossEncoderReranker(model=EttinCrossEncoder(**engine_options), top_n=4)
    assert [d.id for d in as_cross_encoder.compress_documents(_documents(corpus), query)] == [d.id for d in expected]


def test_lcel_chain(retriever, query, engine_options):
    compressor = EttinRerank(top_n=2, **engine_options)
    chain = (
        retriever
        | RunnableLambda(lambda docs: compressor.compress_documents(docs, query))
        | RunnableLambda(lambda docs: "\n".join(d.id for d in docs))
    )
    names = chain.invoke(query).splitlines()
    direct = [d.id for d in compressor.compress_documents(retriever.invoke(query), query)]
    assert names == direct and len(names) == 2


def test_all_documents_kept_and_inputs_untouched(corpus, query, engine_options):
    documents = _documents(corpus)
    before = copy.deepcopy(documents)
    out = EttinRerank(top_n=None, **engine_options).compress_documents(documents, query)
    assert sorted(d.id for d in out) == sorted(d.id for d in documents)
    assert documents == before
    out[0].metadata["tags"].append("written downstream")
    assert documents == before, "a returned document shares mutable metadata with its input"
    scores = [d.metadata["relevance_score"] for d in out]
    assert scores == sorted(scores, reverse=True)


def test_rerank_returns_index_relevance_score_and_what_was_read(corpus, query, engine_options, engine):
    texts = [text for _, text in corpus]
    rows = EttinRerank(top_n=4, activation="none", **engine_options).rerank(texts, query)
    logits = engine.score(query, texts)
    assert [r["index"] for r in rows] == sorted(range(len(texts)), key=lambda i: -logits[i])[:4]
    assert [r["relevance_score"] for r in rows] == pytest.approx(sorted(logits, reverse=True)[:4], abs=1e-5)
    assert set(rows[0]) == {"index", "relevance_score", *METADATA_KEYS}


def test_score_threshold_and_empty_input(corpus, query, engine_options, engine):
    documents = _documents(corpus)
    logits = sorted(engine.score(query, [d.page_content for d in documents]), reverse=True)
    threshold = _sigmoid((logits[2] + logits[3]) / 2)
    kept = EttinRerank(top_n=None, score_threshold=threshold, **engine_options).compress_documents(documents, query)
    assert len(kept) == 3
    assert EttinRerank(**engine_options).compress_documents([], query) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"top_m": 3}, {"top_n": 0}, {"long_document_strategy": "chunks"}, {"window_overlap": -1},
     {"max_tokens_per_doc": 0}, {"activation": "softmax"}, {"attention": "magic"}, {"score_threshold": float("nan")},
     {"runtime": "onnx"}, {"precision": "int4"}, {"threads": 0}],
)
def test_arguments_are_checked_at_construction(kwargs):
    with pytest.raises(ValidationError):
        EttinRerank(**kwargs)
    if "top_n" not in kwargs and "score_threshold" not in kwargs:
        with pytest.raises(ValidationError):
            EttinCrossEncoder(**kwargs)


def test_bad_inputs_are_named(engine_options, query):
    compressor = EttinRerank(**engine_options)
    with pytest.raises(TypeError, match="documents must be a list of strings or Documents, but got NoneType"):
        compressor.compress_documents(None, query)
    with pytest.raises(TypeError, match="but got a single string"):
        compressor.rerank("one document", query)
    with pytest.raises(TypeError, match=r"documents\[1\] must be a string or a Document, but got int"):
        compressor.rerank(["fine", 3], query)
    with pytest.raises(TypeError, match="query must be a string"):
        compressor.compress_documents([Document(page_content="x")], None)
    with pytest.raises(ValueError, match=r"documents\[0\] is not valid Unicode"):
        compressor.rerank(["\ud800"], query)


async def test_async_equals_sync_and_runs_concurrently(corpus, query, engine_options, loop_ticker):
    compressor = EttinRerank(top_n=5, **engine_options)
    sync = compressor.compress_documents(_documents(corpus), query)
    async with loop_ticker() as ticker:
        results = await asyncio.gather(*(compressor.acompress_documents(_documents(corpus), query) for _ in range(4)))
    assert ticker.ticks > 10, "the event loop was blocked while reranking"
    for result in results:
        assert [(d.id, round(d.metadata["relevance_score"], 5)) for d in result] == [
            (d.id, round(d.metadata["relevance_score"], 5)) for d in sync
        ]


async def test_cold_async_call_never_blocks_the_loop(corpus, query, silent_hub, cached_hub_model, loop_ticker):
    name, cache = cached_hub_model
    compressor = EttinRerank(model=name, cache_folder=cache, device="cpu", top_n=3)
    async with loop_ticker() as ticker:
        out = await compressor.acompress_documents(_documents(corpus), query)
    assert len(out) == 3
    assert ticker.longest_stall < 0.5, f"the event loop stalled {ticker.longest_stall:.2f} s during the cold load"


def test_cross_encoder_interface(corpus, query, engine_options, engine):
    encoder = EttinCrossEncoder(activation="none", **engine_options)
    assert isinstance(encoder, BaseCrossEncoder)
    pairs = [(query, text) for _, text in corpus]
    assert encoder.score(pairs) == pytest.approx(engine.score_pairs(pairs), abs=1e-6)
    assert EttinCrossEncoder(**engine_options).score(pairs) == pytest.approx(
        [_sigmoid(s) for s in engine.score_pairs(pairs)], abs=1e-6)


def test_deepcopy_shares_the_model(engine_options, corpus, query):
    compressor = EttinRerank(**engine_options)
    compressor.compress_documents(_documents(corpus), query)
    clone = copy.deepcopy(compressor)
    assert clone._backend.engine is compressor._backend.engine

