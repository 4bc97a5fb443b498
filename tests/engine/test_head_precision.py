"""The pooled vector and the head run in float32 whatever the encoder's dtype (issue 25, item 1).

A bf16 head rounds logits to steps of 0.0625-0.125 where the released models' top documents sit (-12..22), so
documents tie that float32 tells apart. On a checkpoint in that range, bf16 must make no tie that float32 does
not have, and rank like the exact path. (bf16 is emulated on an AVX2-only CPU: slow but exact enough to test.)
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from ettin_rerank import Reranker
from scipy.stats import spearmanr

QUERY = "protein study"
WORDS = "protein cell gene disease study results patients clinical treatment effect model analysis".split()


@pytest.fixture(scope="module")
def many_texts(wide_texts):
    """80 texts (the wide fixture's 24 and variations of them): logits spread over the released range, 33 of them
    above 8, where a bf16 head's step is 0.0625 or more (the bf16 head tied pairs here that float32 does not)."""
    rng = random.Random(25)
    extra = [f"{text} {' '.join(rng.choices(WORDS, k=rng.randint(0, 6)))}" for text in wide_texts for _ in range(5)]
    return [*wide_texts, *extra][:80]


@pytest.fixture(scope="module")
def exact_and_bf16(wide_checkpoint, many_texts):
    exact = Reranker(wide_checkpoint, device="cpu", dtype="float32").score(QUERY, many_texts)
    engine = Reranker(wide_checkpoint, device="cpu", dtype="bfloat16")
    return np.array(exact), np.array(engine.score(QUERY, many_texts)), engine


def _tied_pairs(scores: np.ndarray) -> set[tuple[int, int]]:
    return {(i, j) for i in range(len(scores)) for j in range(i + 1, len(scores)) if scores[i] == scores[j]}


def test_the_probe_spans_the_released_range(exact_and_bf16):
    exact, _, _ = exact_and_bf16
    assert exact.min() < -8 and exact.max() > 18
    assert (exact > 8).sum() >= 20, "need many logits where bf16's step is 0.0625 or more"


def test_bf16_makes_no_tie_that_float32_does_not_have(exact_and_bf16):
    exact, bf16, _ = exact_and_bf16
    assert _tied_pairs(bf16) <= _tied_pairs(exact)
    high = bf16[np.abs(bf16) > 8]
    on_bf16_grid = torch.from_numpy(high).to(torch.bfloat16).float().numpy() == high
    assert not on_bf16_grid.all(), "every logit above 8 sits on bf16's grid: the head still rounds to bf16"


def test_bf16_ranks_like_the_exact_path(exact_and_bf16):
    exact, bf16, _ = exact_and_bf16
    assert spearmanr(exact, bf16).statistic >= 0.99
    top = set(np.argsort(-exact)[:10]) & set(np.argsort(-bf16)[:10])
    assert len(top) >= 8


def test_the_encoder_stays_bf16_and_the_loaded_model_untouched(exact_and_bf16):
    _, _, engine = exact_and_bf16
    modules = list(engine._cross_encoder)
    assert modules[0].model.embeddings.tok_embeddings.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for m in modules[2:] for p in m.parameters()), (
        "the float32 head is the scorer's own copy; the CrossEncoder keeps its dtype"
    )
