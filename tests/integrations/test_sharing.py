"""One checkpoint, one copy in memory: every adapter and every spelling of the same load arguments share one engine,
and giving back the last reference frees it. Importing an adapter does not import PyTorch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from ettin_rerank.adapters.shared import shared_engines
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


@pytest.mark.parametrize("module", ["langchain_ettin", "llama_index.postprocessor.ettin_rerank", "ettin_rerank"])
def test_importing_an_adapter_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False", f"import {module} loaded PyTorch"
