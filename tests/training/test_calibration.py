"""Calibration turns raw logits into probabilities: it fits a known map back, lowers the calibration error on
held-out queries, and `activation="calibrated"` uses the stored fit everywhere."""

from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pytest
from ettin_rerank import Reranker
from ettin_rerank.cli import main
from ettin_rerank.training.calibration import calibrate_pairs, expected_calibration_error, fit_platt


def _synthetic(count=4000, slope=0.3, intercept=-2.0, seed=0):
    """Logits on the released models' scale (-12..22) whose true probability is sigmoid(slope*x + intercept):
    a plain sigmoid of the logit is far too confident."""
    rng = random.Random(seed)
    logits = [rng.uniform(-12, 22) for _ in range(count)]
    labels = [float(rng.random() < 1 / (1 + math.exp(-(slope * x + intercept)))) for x in logits]
    queries = [f"q{i % 200}" for i in range(count)]
    return logits, labels, queries


def test_platt_fit_recovers_a_known_map():
    logits, labels, _ = _synthetic()
    fit = fit_platt(logits, labels)
    assert fit.slope == pytest.approx(0.3, abs=0.05) and fit.intercept == pytest.approx(-2.0, abs=0.3)


def test_calibration_lowers_the_error_on_held_out_queries():
    logits, labels, queries = _synthetic()
    _, before, after, fitted, tested = calibrate_pairs(logits, labels, queries)
    assert before > 0.1 and after < before / 3, (before, after)
    assert fitted + tested == len(logits) and tested > 0
    perfect = expected_calibration_error([0.0, 1.0, 0.0, 1.0], [0, 1, 0, 1])
    assert perfect == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="both relevant and non-relevant"):
        fit_platt([1.0, 2.0, 3.0], [1, 1, 1])
    with pytest.raises(ValueError, match="at least 2 distinct queries"):
        calibrate_pairs([1.0, 2.0], [0, 1], ["q", "q"])


def test_calibrate_command_writes_a_fit_the_engine_and_adapters_use(wide_checkpoint, wide_texts, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(wide_checkpoint, model)
    logits = Reranker(model, device="cpu", dtype="float32").score("protein study", wide_texts)
    rng = random.Random(1)
    rows = [{"query": f"protein study {k}", "document": text,
             "label": int(rng.random() < 1 / (1 + math.exp(-(0.25 * logit - 1.5))))}
            for k in range(12) for text, logit in zip(wide_texts, logits, strict=True)]
    data = tmp_path / "labelled.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match="needs a calibrated model"):
        Reranker(model, device="cpu", dtype="float32", activation="calibrated")
    assert main(["calibrate", str(data), "--model", str(model), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "expected calibration error" in printed and "use activation='calibrated'" in printed
    stored = json.loads((model / "calibration.json").read_text())
    engine = Reranker(model, device="cpu", dtype="float32", activation="calibrated")
    rows = engine.rerank("protein study", wide_texts)
    for row in rows:
        assert row.score == pytest.approx(1 / (1 + math.exp(-(stored["slope"] * row.logit + stored["intercept"]))))
    assert [r.index for r in rows] == list(np.argsort(-np.asarray(logits), kind="stable"))
    from langchain_ettin import EttinRerank

    out = EttinRerank(model=str(model), device="cpu", dtype="float32", activation="calibrated", top_n=3).rerank(
        wide_texts, "protein study")
    assert [r["relevance_score"] for r in out] == pytest.approx([r.score for r in rows[:3]])
