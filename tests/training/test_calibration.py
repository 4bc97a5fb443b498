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


def _labelled(model, wide_texts, folder, queries=4):
    """Labelled pairs over the shorter half of the texts (cheap to score), labels drawn from a known map."""
    wide_texts = wide_texts[:12]
    logits = Reranker(model, device="cpu", dtype="float32").score("protein study", wide_texts)
    rng = random.Random(1)
    rows = [{"query": f"protein study {k}", "document": text,
             "label": int(rng.random() < 1 / (1 + math.exp(-(0.25 * logit - 1.5))))}
            for k in range(queries) for text, logit in zip(wide_texts, logits, strict=True)]
    data = folder / "labelled.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return data


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_calibrate_writes_only_its_own_files_and_only_once_complete(wide_checkpoint, wide_texts, tiny_checkpoint,
                                                                    tmp_path, capsys):
    """In place it adds calibration.json and nothing else (replacing one only with --overwrite, never a file it did
    not write); --output writes a whole calibrated copy beside and renames it, and never lands in another model."""
    model = tmp_path / "model"
    shutil.copytree(wide_checkpoint, model)
    data = _labelled(model, wide_texts, tmp_path)
    original = _snapshot(model)
    flags = ["--model", str(model), "--device", "cpu"]
    assert main(["calibrate", str(data), *flags]) == 0
    assert set(_snapshot(model)) - set(original) == {"calibration.json"}
    assert {k: v for k, v in _snapshot(model).items() if k != "calibration.json"} == original
    fitted = json.loads((model / "calibration.json").read_text())
    assert fitted["written_by"] == "ettin-rerank calibrate"
    assert main(["calibrate", str(data), *flags]) == 2
    assert "exists (a calibration fitted before); pass --overwrite" in capsys.readouterr().err
    assert main(["calibrate", str(data), *flags, "--overwrite"]) == 0
    other = tmp_path / "other-model"
    shutil.copytree(tiny_checkpoint, other)
    theirs = _snapshot(other)
    refusals = (([], "exists and is not empty"), (["--overwrite"], "was not written by ettin-rerank calibrate"),
                (["--output", str(model / "calibrated")], "lies inside the model"))
    for extra, message in refusals:
        command = ["calibrate", str(data), *flags, *(["--output", str(other)] if "--output" not in extra else []),
                   *extra]
        assert main(command) == 2
        assert message in capsys.readouterr().err
    assert _snapshot(other) == theirs
    (other / "calibration.json").write_text('{"temperature": 2.0}')  # another tool's file of the same name
    assert main(["calibrate", str(data), "--model", str(other), "--device", "cpu", "--overwrite"]) == 2
    assert "is not a calibration written by ettin-rerank calibrate" in capsys.readouterr().err
    copy = tmp_path / "calibrated"
    for _ in range(2):  # the second time replaces the copy this command wrote
        assert main(["calibrate", str(data), *flags, "--output", str(copy), "--overwrite"]) == 0
        assert json.loads((copy / "calibration.json").read_text())["copy_of"] == str(model)
        assert {k: v for k, v in _snapshot(copy).items() if k != "calibration.json"} == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibrated", "labelled.jsonl", "model", "other-model"]


def test_a_damaged_calibration_never_takes_the_model_down(wide_checkpoint, wide_texts, tmp_path, caplog, capsys):
    model = tmp_path / "model"
    shutil.copytree(wide_checkpoint, model)
    (model / "calibration.json").write_text('{"method": "platt", "slope": 0.21, "interc')  # a truncated write
    with caplog.at_level("WARNING", logger="ettin_rerank"):
        engine = Reranker(model, device="cpu", dtype="float32")
    assert f"{model / 'calibration.json'} cannot be used" in caplog.text
    reference = Reranker(wide_checkpoint, device="cpu", dtype="float32")
    np.testing.assert_allclose(engine.score("protein study", wide_texts[:8]),
                               reference.score("protein study", wide_texts[:8]), atol=1e-6)
    assert engine.score("protein study", wide_texts[:2], activation="sigmoid") == pytest.approx(
        reference.score("protein study", wide_texts[:2], activation="sigmoid"))
    with pytest.raises(ValueError, match=r"needs a calibrated model with a readable calibration\.json"):
        Reranker(model, device="cpu", dtype="float32", activation="calibrated")
    data = tmp_path / "labelled.jsonl"
    data.write_text('{"query": "a", "document": "b", "label": 1}\n{"query": "c", "document": "d", "label": 0}\n')
    assert main(["calibrate", str(data), "--model", str(model), "--device", "cpu"]) == 2
    assert "damaged: it cannot be read); pass --overwrite" in capsys.readouterr().err


def test_a_read_only_model_folder_is_found_before_scoring(wide_checkpoint, wide_texts, tmp_path, capsys):
    """Before: the pairs were scored and fitted, then writing calibration.json failed."""
    import os
    import subprocess

    model = tmp_path / "model"
    shutil.copytree(wide_checkpoint, model)
    data = _labelled(model, wide_texts, tmp_path)
    model.chmod(0o555)
    immutable = False
    try:
        if os.access(model, os.W_OK) and subprocess.run(["chattr", "+i", str(model)], capture_output=True,
                                                        check=False).returncode == 0:
            immutable = True  # root ignores permissions; an immutable folder refuses even root
        try:
            (model / ".probe").touch()
            (model / ".probe").unlink()
            pytest.skip("cannot make a folder read-only here (root, and no chattr)")
        except OSError:
            pass
        assert main(["calibrate", str(data), "--model", str(model), "--device", "cpu"]) == 2
        assert f"--model: cannot write in {model}" in capsys.readouterr().err
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(model)], check=False)
        model.chmod(0o755)
