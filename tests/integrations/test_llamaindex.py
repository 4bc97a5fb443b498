"""EttinRerank inside LlamaIndex: a real VectorStoreIndex query engine, events, async, no mutation."""

from __future__ import annotations

import asyncio

import pytest
from ettin_rerank import shared_reranker
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.postprocessor.ettin_rerank import EttinRerank


@pytest.fixture(scope="module")
def index(corpus, embedding_model_path):
    Settings.llm = MockLLM()
    Settings.embed_model = HuggingFaceEmbedding(model_name=embedding_model_path, device="cpu")
    documents = [Document(text=text, metadata={"name": name, "rank_hint": i}) for i, (name, text) in enumerate(corpus)]
    return VectorStoreIndex.from_documents(documents)


def _expected_order(nodes, query, options):
    engine = shared_reranker(options["model"], device="cpu", dtype="float32", batch_tokens=None,
                             trust_remote_code=False)
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    scores = engine.score(query, texts)
    return sorted(range(len(nodes)), key=lambda i: -scores[i]), scores


def _nodes(corpus):
    return [
        NodeWithScore(node=TextNode(text=text, id_=name, metadata={"name": name}), score=0.1 * i)
        for i, (name, text) in enumerate(corpus)
    ]


def test_is_a_node_postprocessor_named_like_its_siblings(engine_options):
    reranker = EttinRerank(**engine_options)
    assert isinstance(reranker, BaseNodePostprocessor)
    assert reranker.class_name() == "EttinRerank"
    assert reranker.to_dict()["model"] == engine_options["model"]


def test_query_engine_on_a_vector_store_index(index, query, engine_options):
    retriever = index.as_retriever(similarity_top_k=6)
    retrieved = retriever.retrieve(query)
    order, scores = _expected_order(retrieved, query, engine_options)
    engine = index.as_query_engine(similarity_top_k=6, node_postprocessors=[EttinRerank(top_n=3, **engine_options)])
    response = engine.query(query)
    sources = response.source_nodes
    assert len(sources) == 3
    assert [n.node.node_id for n in sources] == [retrieved[i].node.node_id for i in order[:3]]
    assert [n.score for n in sources] == pytest.approx([scores[i] for i in order[:3]], abs=1e-5)
    assert all(n.node.metadata["name"] for n in sources)


def test_every_node_accounted_for_and_inputs_untouched(corpus, query, engine_options):
    nodes = _nodes(corpus)
    before = [(n.score, dict(n.node.metadata)) for n in nodes]
    out = EttinRerank(top_n=len(nodes) + 5, keep_retrieval_score=True, **engine_options).postprocess_nodes(
        nodes, query_str=query
    )
    assert sorted(n.node.node_id for n in out) == sorted(n.node.node_id for n in nodes)
    assert [(n.score, n.node.metadata) for n in nodes] == before  # caller's nodes not mutated
    by_id = {n.node.node_id: n for n in nodes}
    for new in out:
        assert new.node.metadata["retrieval_score"] == by_id[new.node.node_id].score
        assert new.node.metadata["name"] == by_id[new.node.node_id].node.metadata["name"]
    assert [n.score for n in out] == sorted((n.score for n in out), reverse=True)


def test_empty_input_and_missing_query(engine_options):
    reranker = EttinRerank(**engine_options)
    assert reranker.postprocess_nodes([], query_str="anything") == []
    with pytest.raises(ValueError, match="Missing query bundle"):
        reranker.postprocess_nodes(_nodes([("a", "text")]))


def test_emits_rerank_events(corpus, query, engine_options):
    seen = []

    class Collect(BaseEventHandler):
        def handle(self, event, **kwargs):
            if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
                seen.append(event)

    handler = Collect()
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        out = EttinRerank(top_n=2, **engine_options).postprocess_nodes(_nodes(corpus), query_str=query)
    finally:
        root.event_handlers.remove(handler)
    assert [type(e) for e in seen] == [ReRankStartEvent, ReRankEndEvent]
    assert seen[0].top_n == 2 and seen[0].model_name == engine_options["model"]
    assert [n.node.node_id for n in seen[1].nodes] == [n.node.node_id for n in out]


async def test_async_equals_sync_and_does_not_block_the_loop(corpus, query, engine_options, loop_ticker):
    reranker = EttinRerank(top_n=4, **engine_options)
    sync = reranker.postprocess_nodes(_nodes(corpus), query_str=query)
    async with loop_ticker() as ticker:
        calls = (reranker.apostprocess_nodes(_nodes(corpus), query_str=query) for _ in range(4))
        results = await asyncio.gather(*calls)
    assert ticker.ticks > 10, "the event loop was blocked while reranking"
    for result in results:
        assert [(n.node.node_id, round(n.score, 5)) for n in result] == [
            (n.node.node_id, round(n.score, 5)) for n in sync
        ]


def test_model_is_loaded_once_and_shared(engine_options):
    first, second = EttinRerank(**engine_options), EttinRerank(top_n=5, **engine_options)
    first.postprocess_nodes(_nodes([("a", "x")]), query_str="q")
    second.postprocess_nodes(_nodes([("a", "x")]), query_str="q")
    assert first._reranker is second._reranker
