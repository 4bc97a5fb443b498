"""Every existing client reaches the server by URL alone and gets the in-process engine's ranking: the official
Cohere SDK (v1 and v2), Haystack's Cohere, TEI and Jina rankers, LlamaIndex's Cohere, TEI and Jina rerankers,
LangChain's CohereRerank, and this project's own adapters in remote mode."""

from __future__ import annotations

import pytest

cohere = pytest.importorskip("cohere")


def _check(got: list[tuple[int, float]], expected: list[tuple[int, float]], top: int | None = None) -> None:
    expected = expected[:top] if top else expected
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-6)


def test_cohere_sdk_v2(case, server_url, expected):
    response = cohere.ClientV2(api_key="any", base_url=server_url).rerank(
        model=case.model, query=case.query, documents=case.documents, top_n=3)
    _check([(r.index, r.relevance_score) for r in response.results], expected, 3)


def test_cohere_sdk_v1_with_documents(case, server_url, expected):
    response = cohere.Client(api_key="any", base_url=server_url).rerank(
        model=case.model, query=case.query, documents=case.documents, return_documents=True)
    _check([(r.index, r.relevance_score) for r in response.results], expected)
    assert all(r.document.text == case.documents[r.index] for r in response.results)


def test_haystack_cohere_ranker(case, server_url, expected):
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.cohere import CohereRanker

    ranker = CohereRanker(model=case.model, api_base_url=server_url, api_key=Secret.from_token("any"), top_k=4)
    documents = [Document(id=str(i), content=text) for i, text in enumerate(case.documents)]
    out = ranker.run(query=case.query, documents=documents)["documents"]
    _check([(int(d.id), d.score) for d in out], expected, 4)


def test_haystack_tei_ranker(case, server_url, expected):
    from haystack import Document
    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker

    ranker = HuggingFaceTEIRanker(url=server_url, top_k=4, token=None)
    documents = [Document(id=str(i), content=text) for i, text in enumerate(case.documents)]
    out = ranker.run(query=case.query, documents=documents)["documents"]
    _check([(int(d.id), d.score) for d in out], expected, 4)


def test_haystack_jina_ranker(case, server_url, expected):
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.jina import JinaRanker

    ranker = JinaRanker(model=case.model, api_key=Secret.from_token("any"), top_k=3, base_url=f"{server_url}/v1/rerank")
    documents = [Document(id=str(i), content=text) for i, text in enumerate(case.documents)]
    out = ranker.run(query=case.query, documents=documents)["documents"]
    _check([(int(d.id), d.score) for d in out], expected, 3)


def _nodes(case):
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(text=text, id_=str(i)), score=0.0) for i, text in enumerate(case.documents)]


def test_llamaindex_cohere_rerank(case, server_url, expected):
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    out = CohereRerank(api_key="any", base_url=server_url, model=case.model, top_n=3).postprocess_nodes(
        _nodes(case), query_str=case.query)
    _check([(int(n.node.node_id), n.score) for n in out], expected, 3)


def test_llamaindex_tei_rerank(case, server_url, expected):
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    out = TextEmbeddingInference(base_url=server_url, top_n=3, auth_token="Bearer any").postprocess_nodes(
        _nodes(case), query_str=case.query)
    _check([(int(n.node.node_id), n.score) for n in out], expected, 3)


def test_llamaindex_jina_rerank(case, server_url, expected):
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    out = JinaRerank(base_url=f"{server_url}/v1", api_key="any", model=case.model, top_n=3).postprocess_nodes(
        _nodes(case), query_str=case.query)
    _check([(int(n.node.node_id), n.score) for n in out], expected, 3)


def test_langchain_cohere_rerank(case, server_url, expected):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    compressor = CohereRerank(model=case.model, base_url=server_url, cohere_api_key="any", top_n=3)
    documents = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(case.documents)]  # it drops ids
    out = compressor.compress_documents(documents, case.query)
    _check([(d.metadata["i"], d.metadata["relevance_score"]) for d in out], expected, 3)


def _facts(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k != "ettin_logit"}


def test_our_adapters_in_remote_mode_equal_the_local_engine(case, server_url, engine_options, expected):
    from haystack import Document
    from haystack_integrations.components.rankers.ettin import EttinRanker
    from langchain_core.documents import Document as LangChainDocument
    from langchain_ettin import EttinRerank as LangChainRerank
    from llama_index.postprocessor.ettin_rerank import EttinRerank as LlamaIndexRerank

    local = LlamaIndexRerank(top_n=6, **engine_options).postprocess_nodes(_nodes(case), query_str=case.query)
    remote = LlamaIndexRerank(top_n=6, base_url=server_url).postprocess_nodes(_nodes(case), query_str=case.query)
    # the same documents, order and window facts; scores to float noise (the server packs requests together and
    # the thread governor may pick another thread count: sums in another order)
    assert [(n.node.node_id, _facts(n.node.metadata)) for n in remote] == [
        (n.node.node_id, _facts(n.node.metadata)) for n in local]
    assert [n.node.metadata["ettin_logit"] for n in remote] == pytest.approx(
        [n.node.metadata["ettin_logit"] for n in local], abs=1e-5)
    assert [n.score for n in remote] == pytest.approx([n.score for n in local], abs=1e-5)
    _check([(int(n.node.node_id), n.score) for n in remote], expected)
    docs = [LangChainDocument(page_content=t, id=str(i)) for i, t in enumerate(case.documents)]
    lc = LangChainRerank(top_n=6, base_url=server_url).compress_documents(docs, case.query)
    _check([(int(d.id), d.metadata["relevance_score"]) for d in lc], expected)
    hs = EttinRanker(url=server_url, top_k=6).run(query=case.query, documents=[Document(id=str(i), content=t)
                                                                            for i, t in enumerate(case.documents)])
    _check([(int(d.id), d.score) for d in hs["documents"]], expected)
