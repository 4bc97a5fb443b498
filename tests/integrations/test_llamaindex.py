"""EttinRerank inside LlamaIndex: a real VectorStoreIndex query engine, events, async, no mutation, and the same
contract as the framework's own SentenceTransformerRerank."""

from __future__ import annotations

import asyncio
import copy
import math

import pytest
from ettin_rerank import METADATA_KEYS, Reranker
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor import SentenceTransformerRerank
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.postprocessor.ettin_rerank import EttinRerank
from pydantic import ValidationError


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def index(corpus, embedding_model_path):
    Settings.llm = MockLLM()
    Settings.embed_model = HuggingFaceEmbedding(model_name=embedding_model_path, device="cpu")
    documents = [Document(text=text, metadata={"name": name, "rank_hint": i}) for i, (name, text) in enumerate(corpus)]
    return VectorStoreIndex.from_documents(documents)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Reranker(tiny_checkpoint, device="cpu", dtype="float32")


def _logits(engine, nodes, query):
    return engine.score(query, [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes])


def _nodes(corpus):
    return [
        NodeWithScore(node=TextNode(text=text, id_=name, metadata={"name": name, "tags": ["a"]}), score=0.1 * i)
        for i, (name, text) in enumerate(corpus)
    ]


def test_is_a_node_postprocessor_named_like_its_siblings(engine_options):
    reranker = EttinRerank(**engine_options)
    assert isinstance(reranker, BaseNodePostprocessor)
    assert reranker.class_name() == "EttinRerank"
    assert reranker.to_dict()["model"] == engine_options["model"]


def test_query_engine_on_a_vector_store_index(index, query, engine_options, engine):
    retrieved = index.as_retriever(similarity_top_k=6).retrieve(query)
    logits = _logits(engine, retrieved, query)
    order = sorted(range(len(retrieved)), key=lambda i: -logits[i])
    query_engine = index.as_query_engine(similarity_top_k=6,
                                         node_postprocessors=[EttinRerank(top_n=3, **engine_options)])
    sources = query_engine.query(query).source_nodes
    assert [n.node.node_id for n in sources] == [retrieved[i].node.node_id for i in order[:3]]
    assert [n.score for n in sources] == pytest.approx([_sigmoid(logits[i]) for i in order[:3]], abs=1e-6)
    for node in sources:
        assert set(METADATA_KEYS) <= set(node.node.metadata) and node.node.metadata["name"]
        text = node.node.get_content()
        assert text[node.node.metadata["ettin_passage_start"]:node.node.metadata["ettin_passage_end"]] == text
        llm_view = node.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "ettin_" not in llm_view and "name: " in llm_view  # our keys stay out of the prompt


def test_same_contract_as_sentence_transformer_rerank(corpus, query, engine_options, tiny_checkpoint):
    """The framework's own reranker and ours, same checkpoint, same arguments: same nodes, same order."""
    theirs = SentenceTransformerRerank(model=str(tiny_checkpoint), top_n=4, device="cpu", keep_retrieval_score=True)
    ours = EttinRerank(top_n=4, keep_retrieval_score=True, activation="none", **engine_options)
    expected = theirs.postprocess_nodes(_nodes(corpus), query_str=query)
    got = ours.postprocess_nodes(_nodes(corpus), query_str=query)
    assert [n.node.node_id for n in got] == [n.node.node_id for n in expected] and len(got) == 4
    assert [n.score for n in got] == pytest.approx([float(n.score) for n in expected], abs=1e-4)
    assert all(isinstance(n, NodeWithScore) for n in got)
    assert [n.node.metadata["retrieval_score"] for n in got] == [n.node.metadata["retrieval_score"] for n in expected]
    default = EttinRerank(top_n=4, **engine_options).postprocess_nodes(_nodes(corpus), query_str=query)
    assert [n.node.node_id for n in default] == [n.node.node_id for n in got]  # the scale never changes the order
    assert all(0 <= n.score <= 1 for n in default)


def test_every_node_accounted_for_and_inputs_untouched(corpus, query, engine_options):
    nodes = _nodes(corpus)
    before = copy.deepcopy(nodes)
    out = EttinRerank(top_n=len(nodes) + 5, keep_retrieval_score=True, **engine_options).postprocess_nodes(
        nodes, query_str=query
    )
    assert sorted(n.node.node_id for n in out) == sorted(n.node.node_id for n in nodes)
    assert [(n.score, n.node.metadata) for n in nodes] == [(n.score, n.node.metadata) for n in before]
    out[0].node.metadata["tags"].append("written downstream")
    assert [n.node.metadata for n in nodes] == [n.node.metadata for n in before], "metadata shared with the input"
    by_id = {n.node.node_id: n for n in nodes}
    for new in out:
        assert new.node.metadata["retrieval_score"] == by_id[new.node.node_id].score
    assert [n.score for n in out] == sorted((n.score for n in out), reverse=True)


def test_score_threshold_and_activation(corpus, query, engine_options, engine):
    nodes = _nodes(corpus)
    logits = sorted(_logits(engine, nodes, query), reverse=True)
    cut = (logits[2] + logits[3]) / 2
    kept = EttinRerank(top_n=10, score_threshold=_sigmoid(cut), **engine_options).postprocess_nodes(
        nodes, query_str=query)
    assert len(kept) == 3
    raw = EttinRerank(top_n=10, activation="none", score_threshold=cut, **engine_options).postprocess_nodes(
        nodes, query_str=query)
    assert [n.score for n in raw] == pytest.approx(logits[:3], abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 3}, "top_k"),
        ({"top_n": 0}, "top_n"),
        ({"long_document_strategy": "chunks"}, "long_document_strategy"),
        ({"activation": "softmax"}, "activation"),
        ({"max_tokens_per_doc": 0}, "max_tokens_per_doc must be > 0"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"score_threshold": float("nan")}, "score_threshold must be a number, not NaN"),
        ({"runtime": "onnx"}, "runtime must be one of torch, openvino"),
        ({"precision": "int4"}, "precision must be one of int8"),
        ({"threads": 0}, "threads must be a positive integer"),
    ],
)
def test_arguments_are_checked_at_construction(engine_options, kwargs, message):
    with pytest.raises(ValidationError, match=message):
        EttinRerank(**{**engine_options, **kwargs})


def test_bad_inputs_are_named(engine_options):
    reranker = EttinRerank(**engine_options)
    assert reranker.postprocess_nodes([], query_str="anything") == []
    with pytest.raises(ValueError, match="Missing query bundle"):
        reranker.postprocess_nodes(_nodes([("a", "text")]))
    with pytest.raises(TypeError, match="nodes must be a list of NodeWithScore, but got NoneType"):
        reranker.postprocess_nodes(None, query_str="q")
    with pytest.raises(TypeError, match=r"nodes\[0\] must be a NodeWithScore, but got TextNode"):
        reranker.postprocess_nodes([TextNode(text="x")], query_str="q")
    with pytest.raises(ValueError, match="query_str must not be empty"):
        reranker.postprocess_nodes(_nodes([("a", "text")]), query_str="  ")
    with pytest.raises(ValueError, match=r"documents\[1\] is not valid Unicode"):
        reranker.postprocess_nodes(_nodes([("a", "fine"), ("b", "bad \udcff")]), query_str="q")


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


async def test_cold_async_call_never_blocks_the_loop(corpus, query, silent_hub, cached_hub_model, loop_ticker):
    name, cache = cached_hub_model
    reranker = EttinRerank(model=name, cache_folder=cache, device="cpu", top_n=3)
    async with loop_ticker() as ticker:
        out = await reranker.apostprocess_nodes(_nodes(corpus), query_str=query)
    assert len(out) == 3
    assert ticker.longest_stall < 0.5, f"the event loop stalled {ticker.longest_stall:.2f} s during the cold load"


def test_deepcopy_shares_the_model(engine_options, corpus, query):
    reranker = EttinRerank(**engine_options)
    reranker.postprocess_nodes(_nodes(corpus), query_str=query)
    clone = copy.deepcopy(reranker)
    assert clone._backend.engine is reranker._backend.engine
    assert [n.node.node_id for n in clone.postprocess_nodes(_nodes(corpus), query_str=query)] == [
        n.node.node_id for n in reranker.postprocess_nodes(_nodes(corpus), query_str=query)]
