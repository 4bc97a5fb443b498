"""CUDA paths: every attention backend computes the same function. Skipped cleanly without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ettin_rerank import Reranker
from ettin_rerank.engine.attention import available_backends

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def documents():
    rng = np.random.default_rng(0)
    words = "protein cell gene disease study results patients clinical treatment effect".split()
    return [" ".join(rng.choice(words, size=n)) for n in (3, 60, 129, 400, 1500, 6000)]


def test_cuda_fp32_sdpa_matches_cpu(tiny_checkpoint, documents):
    cpu = Reranker(tiny_checkpoint, device="cpu", dtype="float32").score("gene study", documents)
    gpu = Reranker(tiny_checkpoint, device="cuda", dtype="float32", attention="sdpa").score("gene study", documents)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)


@pytest.mark.parametrize("backend", available_backends(torch.device("cuda")) if torch.cuda.is_available() else [])
def test_bf16_backends_agree(tiny_checkpoint, documents, backend):
    reference = Reranker(tiny_checkpoint, device="cpu", dtype="float32").score("gene study", documents)
    got = Reranker(tiny_checkpoint, device="cuda", dtype="bfloat16", attention=backend).score("gene study", documents)
    np.testing.assert_allclose(got, reference, atol=5e-2)


def test_default_dtype_on_cuda_is_bfloat16(tiny_checkpoint):
    assert Reranker(tiny_checkpoint, device="cuda").dtype == torch.bfloat16
