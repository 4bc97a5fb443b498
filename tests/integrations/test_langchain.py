"""EttinRerank inside LangChain: ContextualCompressionRetriever, an LCEL chain, async, no mutation."""

from __future__ import annotations

import asyncio

import pytest
from ettin_rerank import Reranker
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ettin import EttinCrossEncoder, EttinRerank
from langchain_huggingface import HuggingFaceEmbeddings
from pydantic import ValidationError


@pytest.fixture(scope="module")
def retriever(corpus, embedding_model_path):
    embeddings = HuggingFaceEmbeddings(model_name=embedding_model_path, model_kwargs={"device": "cpu"})
    store = InMemoryVectorStore(embeddings)
    store.add_documents(
        [Document(page_content=text, metadata={"name": name}, id=name) for name, text in corpus]
    )
    return store.as_retriever(search_kwargs={"k": 6})


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Reranker(tiny_checkpoint, device="cpu", dtype="float32")


def _documents(corpus):
    return [Document(page_content=text, metadata={"name": name, "pos": i}, id=name)
            for i, (name, text) in enumerate(corpus)]


def test_contextual_compression_retriever(retriever, query, engine_options, engine):
    compressor = EttinRerank(top_n=3, **engine_options)
    assert isinstance(compressor, BaseDocumentCompressor)
    pipeline = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=retriever)
    base_docs = retriever.invoke(query)
    scores = engine.score(query, [d.page_content for d in base_docs])
    expected = sorted(range(len(base_docs)), key=lambda i: -scores[i])[:3]
    got = pipeline.invoke(query)
    assert [d.id for d in got] == [base_docs[i].id for i in expected]
    assert [d.metadata["relevance_score"] for d in got] == pytest.approx([scores[i] for i in expected], abs=1e-5)
    assert all(d.metadata["name"] == d.id for d in got)


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


def test_all_documents_kept_with_metadata_and_inputs_untouched(corpus, query, engine_options):
    documents = _documents(corpus)
    out = EttinRerank(top_n=None, **engine_options).compress_documents(documents, query)
    assert sorted(d.id for d in out) == sorted(d.id for d in documents)
    assert all("relevance_score" not in d.metadata for d in documents)
    originals = {d.id: d for d in documents}
    for doc in out:
        assert doc.page_content == originals[doc.id].page_content
        assert {k: v for k, v in doc.metadata.items() if k != "relevance_score"} == originals[doc.id].metadata
    scores = [d.metadata["relevance_score"] for d in out]
    assert scores == sorted(scores, reverse=True)


def test_rerank_returns_index_and_relevance_score(corpus, query, engine_options, engine):
    texts = [text for _, text in corpus]
    rows = EttinRerank(top_n=4, **engine_options).rerank(texts, query)
    scores = engine.score(query, texts)
    assert [r["index"] for r in rows] == sorted(range(len(texts)), key=lambda i: -scores[i])[:4]
    assert set(rows[0]) == {"index", "relevance_score"}


def test_score_threshold_and_empty_input(corpus, query, engine_options, engine):
    documents = _documents(corpus)
    scores = sorted(engine.score(query, [d.page_content for d in documents]), reverse=True)
    threshold = (scores[2] + scores[3]) / 2
    kept = EttinRerank(top_n=None, score_threshold=threshold, **engine_options).compress_documents(documents, query)
    assert len(kept) == 3
    assert EttinRerank(**engine_options).compress_documents([], query) == []


def test_typos_in_arguments_fail():
    with pytest.raises(ValidationError):
        EttinRerank(top_m=3)
    with pytest.raises(ValidationError):
        EttinRerank(top_n=0)


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


def test_cross_encoder_interface(corpus, query, tiny_checkpoint, engine):
    encoder = EttinCrossEncoder(model=str(tiny_checkpoint), device="cpu", dtype="float32")
    assert isinstance(encoder, BaseCrossEncoder)
    pairs = [(query, text) for _, text in corpus]
    assert encoder.score(pairs) == pytest.approx(engine.score_pairs(pairs), abs=1e-6)
    reranker = CrossEncoderReranker(model=encoder, top_n=2)
    out = reranker.compress_documents(_documents(corpus), query)
    scores = engine.score(query, [t for _, t in corpus])
    assert [d.id for d in out] == [corpus[i][0] for i in sorted(range(len(corpus)), key=lambda i: -scores[i])[:2]]
