"""Scores at the released models' scale: ranking by raw logit, squashed scores in float64, NaN ranked last."""

from __future__ import annotations

import logging
import math
import shutil

import numpy as np
import pytest
import torch
from ettin_rerank import Reranker
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

QUERY = "protein study"


@pytest.fixture(scope="module")
def wide(wide_checkpoint):
    return Reranker(wide_checkpoint, device="cpu", dtype="float32")


def test_fixture_reaches_the_published_logit_range(wide, wide_texts):
    logits = wide.score(QUERY, wide_texts)
    assert min(logits) < -11 and max(logits) > 21
    assert sum(logit > 16.6 for logit in logits) >= 2, "need several logits where a float32 sigmoid saturates"


def test_sigmoid_never_changes_the_order(wide, wide_texts):
    raw = wide.rerank(QUERY, wide_texts)
    squashed = wide.rerank(QUERY, wide_texts, activation="sigmoid")
    assert [r.index for r in squashed] == [r.index for r in raw]
    top = [r for r in squashed if r.logit > 16.6]
    assert len({r.score for r in top}) == len(top), "float32 would tie these at 1.0"
    for row in squashed:
        assert row.score == pytest.approx(1 / (1 + math.exp(-row.logit)), rel=1e-15, abs=1e-300)
        assert isinstance(row.score, float)
    assert [r.index for r in wide.rerank(QUERY, wide_texts, top_k=1, activation="sigmoid")] == [raw[0].index]


def test_threshold_compares_in_the_space_asked_for(wide, wide_texts):
    logits = sorted(wide.score(QUERY, wide_texts), reverse=True)
    cut = (logits[1] + logits[2]) / 2  # between the second and third best, both above 16.6
    probability = 1 / (1 + math.exp(-cut))
    assert probability < 1.0
    kept = wide.rerank(QUERY, wide_texts, activation="sigmoid", score_threshold=probability)
    assert len(kept) == 2
    assert len(wide.rerank(QUERY, wide_texts, score_threshold=cut)) == 2  # raw logits, raw threshold
    assert len(wide.rerank(QUERY, wide_texts, score_threshold=np.float32(cut))) == 2
    assert len(wide.rerank(QUERY, wide_texts, top_k=np.int64(3))) == 3


def test_calibration_factor_scales_the_logit_before_the_sigmoid(wide, wide_texts):
    rows = wide.rerank(QUERY, wide_texts, activation="sigmoid", calibration_factor=0.1)
    assert all(r.score == pytest.approx(1 / (1 + math.exp(-0.1 * r.logit)), rel=1e-12) for r in rows)


def test_mean_strategy_averages_raw_logits(wide, wide_texts):
    document = " ".join(wide_texts[-6:])
    [mean] = wide.rerank(QUERY, [document], max_length=64, long_document_strategy="mean", activation="sigmoid")
    windows = wide.rerank(QUERY, [document], max_length=64, long_document_strategy="max")[0].num_windows
    assert mean.num_windows == windows > 1
    assert mean.score == pytest.approx(1 / (1 + math.exp(-mean.logit)), rel=1e-12)


@pytest.fixture(scope="module")
def nan_engine(tmp_path_factory, tiny_checkpoint):
    """A checkpoint whose embedding of the word "cancer" is NaN: any document holding it scores NaN."""
    folder = tmp_path_factory.mktemp("nan") / "ettin-nan"
    shutil.copytree(tiny_checkpoint, folder)
    token = AutoTokenizer.from_pretrained(str(folder))("cancer", add_special_tokens=False)["input_ids"]
    assert len(token) == 1
    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if "tok_embeddings" in k)
    weights[key][token[0]] = torch.nan
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return Reranker(folder, device="cpu", dtype="float32")


def test_a_nan_score_is_ranked_last_and_reported(nan_engine, caplog):
    documents = ["gene data", "cancer cell", "protein study results", "cell cancer risk", "brain"]
    finite = nan_engine.score(QUERY, [documents[i] for i in (0, 2, 4)])
    expected_best = [0, 2, 4][int(np.argmax(finite))]
    with caplog.at_level(logging.WARNING, logger="ettin_rerank"):
        rows = nan_engine.rerank(QUERY, documents)
    assert [r.index for r in rows[-2:]] == [1, 3] and all(math.isnan(r.score) for r in rows[-2:])
    assert [r.index for r in rows[:3]] == sorted((0, 2, 4), key=lambda i: -nan_engine.score(QUERY, [documents[i]])[0])
    assert "non-finite score (input positions 1, 3)" in caplog.text
    assert [r.index for r in nan_engine.rerank(QUERY, documents, top_k=1)] == [expected_best]
    thresholded = nan_engine.rerank(QUERY, documents, score_threshold=-1e9)
    assert sorted(r.index for r in thresholded) == [0, 2, 4]


def test_a_nan_threshold_is_rejected(reranker):
    with pytest.raises(ValueError, match="score_threshold must be a number, not NaN"):
        reranker.rerank(QUERY, ["a"], score_threshold=float("nan"))
    with pytest.raises(TypeError, match="score_threshold must be a number or None"):
        reranker.rerank(QUERY, ["a"], score_threshold="0.5")
