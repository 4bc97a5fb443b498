"""One checkpoint, one copy in memory: every adapter and every spelling of the same load arguments share one engine,
and giving back the last reference frees it. Importing an adapter does not import PyTorch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from ettin_rerank import Reranker
from ettin_rerank.adapters.shared import shared_engines
from ettin_rerank.engine import openvino_runtime
from haystack import Document
from haystack.utils import ComponentDevice
from haystack_integrations.components.rankers.ettin import EttinRanker
from langchain_ettin import EttinCrossEncoder
from langchain_ettin import EttinRerank as LangChainRerank
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.ettin_rerank import EttinRerank as LlamaIndexRerank


def _engines_for(folder):
    return [e for e in shared_engines() if e.model_path == folder.resolve()]


def test_every_spelling_and_every_adapter_share_one_engine(checkpoint_factory, monkeypatch):
    folder = checkpoint_factory("17m", layers=2, seed=41)
    monkeypatch.chdir(folder.parent)
    adapters = [
        LlamaIndexRerank(model=str(folder), device="cpu", dtype="float32"),
        LlamaIndexRerank(model=folder.name, device=None, dtype="fp32"),  # relative path, default device
        LangChainRerank(model=f"{folder}/", device="cpu", dtype="float32"),  # trailing slash
        EttinCrossEncoder(model=str(folder), device="cpu", dtype=str(torch.float32)),
        EttinRanker(model=str(folder), device=ComponentDevice.from_str("cpu"), dtype="float32"),
        EttinRanker(model=str(folder), device=None, dtype="float32"),
    ]
    adapters[0].postprocess_nodes([NodeWithScore(node=TextNode(text="a"))], query_str="q")
    adapters[1].postprocess_nodes([NodeWithScore(node=TextNode(text="a"))], query_str="q")
    adapters[2].compress_documents([], "q")
    adapters[2].rerank(["a"], "q")
    adapters[3].score([("q", "a")])
    adapters[4].run(query="q", documents=[Document(content="a")])
    adapters[5].run(query="q", documents=[Document(content="a")])
    [engine] = _engines_for(folder)
    assert all(a._backend.engine is engine for a in adapters)
    for adapter in adapters[:-1]:
        adapter.close()
        assert not engine.closed, "freed while an adapter still uses it"
    adapters[-1].close()
    assert engine.closed and _engines_for(folder) == []
    out = adapters[0].postprocess_nodes([NodeWithScore(node=TextNode(text="a"))], query_str="q")  # loads again
    assert len(out) == 1 and len(_engines_for(folder)) == 1
    adapters[0].close()


def test_different_dtypes_are_different_engines(checkpoint_factory):
    folder = checkpoint_factory("17m", layers=2, seed=42)
    exact = LlamaIndexRerank(model=str(folder), device="cpu", dtype="float32")
    fast = LlamaIndexRerank(model=str(folder), device="cpu", dtype="bfloat16")
    for adapter in (exact, fast):
        adapter.postprocess_nodes([NodeWithScore(node=TextNode(text="a"))], query_str="q")
    assert len(_engines_for(folder)) == 2
    exact.close()
    fast.close()


@pytest.mark.skipif(not openvino_runtime.openvino_available(), reason="needs ettin-rerank[openvino]")
def test_every_adapter_runs_the_runtime_and_threads_it_names(checkpoint_factory, tmp_path, monkeypatch):
    """runtime (Haystack: backend) and threads reach the engine: the three adapters share one OpenVINO engine on one
    thread, with the PyTorch engine's scores; the default runtime (PyTorch in the tests) is another engine."""
    monkeypatch.setenv("ETTIN_RERANK_CACHE", str(tmp_path / "cache"))
    folder = checkpoint_factory("17m", layers=2, seed=43)
    texts = ["protein study of mice", "the weather today", "gene expression in cancer cells"]
    options = {"model": str(folder), "device": "cpu", "dtype": "float32", "threads": 1}
    llama = LlamaIndexRerank(**options, runtime="openvino", activation="none", top_n=3)
    chain = LangChainRerank(**options, runtime="openvino", activation="none", top_n=3)
    haystack = EttinRanker(**{**options, "device": ComponentDevice.from_str("cpu")}, backend="openvino",
                           scale_score=False, top_k=3)
    default = LlamaIndexRerank(**options, activation="none", top_n=3)
    got_llama = llama.postprocess_nodes([NodeWithScore(node=TextNode(text=t)) for t in texts], query_str="protein")
    got_chain = chain.rerank(texts, "protein")
    got_haystack = haystack.run(query="protein", documents=[Document(content=t) for t in texts])["documents"]
    default.postprocess_nodes([NodeWithScore(node=TextNode(text="a"))], query_str="q")
    engines = _engines_for(folder)
    [openvino] = [e for e in engines if e.runtime == "openvino"]
    assert {e.runtime for e in engines} == {"openvino", "torch"}
    assert all(a._backend.engine is openvino for a in (llama, chain, haystack))
    assert openvino._threads.threads == 1 and not openvino._threads.adaptive
    with Reranker(folder, device="cpu", dtype="float32", runtime="torch") as exact:
        want = exact.rerank("protein", texts)
    assert [texts.index(n.node.get_content()) for n in got_llama] == [r.index for r in want]
    assert [r["index"] for r in got_chain] == [r.index for r in want]
    assert [texts.index(d.content) for d in got_haystack] == [r.index for r in want]
    for node, result in zip(got_llama, want, strict=True):
        assert node.score == pytest.approx(result.score, abs=1e-4)
    for adapter in (llama, chain, haystack, default):
        adapter.close()
    assert _engines_for(folder) == []


@pytest.mark.parametrize("module", ["langchain_ettin", "llama_index.postprocessor.ettin_rerank", "ettin_rerank"])
def test_importing_an_adapter_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False", f"import {module} loaded PyTorch"
