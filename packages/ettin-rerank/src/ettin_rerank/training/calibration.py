"""Calibration: a two-parameter map from raw logits to the probability that a document is relevant.

The released Ettin rerankers emit logits from about -12 to 22 (their teacher's scale); a plain sigmoid of that is a
relevance *score*, not a probability. Platt scaling fits ``p = sigmoid(slope * logit + intercept)`` to labelled
(query, document) pairs by maximum likelihood; the fit is stored as ``calibration.json`` in the model folder and
used by ``activation="calibrated"`` in the engine, the adapters and the server (or in a calibrated copy of the
model). Reported: expected calibration error (ECE) before (plain sigmoid) and after, on held-out queries.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ettin_rerank.args import EngineArgs
from ettin_rerank.engine.activation import CALIBRATION_FILE, Calibration, sigmoid
from ettin_rerank.outputs import check_output_folder, check_writable, read_json_object, staged, write_text_atomic

WRITTEN_BY = "ettin-rerank calibrate"


def fit_platt(logits: Sequence[float], labels: Sequence[float], *, iterations: int = 100) -> Calibration:
    """Maximum-likelihood ``(slope, intercept)`` (Platt's smoothed targets): Newton's method with a backtracking
    line search, on standardised logits (plain Newton diverges from a poor start on logits as wide as -12..22)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(x) != len(y) or len(x) < 2:
        msg = "calibration needs at least 2 (logit, label) pairs of the same length"
        raise ValueError(msg)
    positives, negatives = float((y > 0).sum()), float((y <= 0).sum())
    if positives == 0 or negatives == 0:
        msg = "calibration needs both relevant and non-relevant examples"
        raise ValueError(msg)
    target = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))  # Platt (1999)
    center, scale = float(x.mean()), float(x.std()) or 1.0
    z = (x - center) / scale

    def loss(w: np.ndarray) -> float:
        margin = w[0] * z + w[1]
        return float(np.sum(np.logaddexp(0.0, margin) - target * margin))

    w = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(w[0] * z + w[1])))
        gradient = np.array([np.sum((p - target) * z), np.sum(p - target)])
        weight = np.maximum(p * (1 - p), 1e-12)
        hessian = np.array([[np.sum(weight * z * z), np.sum(weight * z)], [np.sum(weight * z), np.sum(weight)]])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        size, current = 1.0, loss(w)
        while size > 1e-6 and loss(w - size * step) > current:
            size /= 2
        w = w - size * step
        if np.abs(size * step).max() < 1e-10:
            break
    slope = w[0] / scale
    return Calibration(slope=float(slope), intercept=float(w[1] - slope * center))


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[float], bins: int = 10) -> float:
    """Weighted mean gap between confidence and accuracy over equal-width probability bins."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return float(error)


@dataclass(frozen=True)
class CalibrationReport:
    """The fit and the calibration error before (plain sigmoid) and after, on held-out queries."""

    calibration: Calibration
    ece_before: float
    ece_after: float
    fit_pairs: int
    heldout_pairs: int
    path: str


def calibrate_pairs(logits: Sequence[float], labels: Sequence[float], queries: Sequence[str], *,
                    holdout: float = 0.3, seed: int = 12) -> tuple[Calibration, float, float, int, int]:
    """Fit on some queries, measure ECE on the others (query-disjoint)."""
    names = sorted(set(queries))
    if len(names) < 2:
        msg = "calibration needs at least 2 distinct queries (one is held out to measure the result)"
        raise ValueError(msg)
    random.Random(seed).shuffle(names)
    held = set(names[: max(1, round(len(names) * holdout))])
    fit = [i for i, q in enumerate(queries) if q not in held]
    test = [i for i, q in enumerate(queries) if q in held]
    calibration = fit_platt([logits[i] for i in fit], [labels[i] for i in fit])
    before = expected_calibration_error([sigmoid(logits[i]) for i in test], [labels[i] for i in test])
    after = expected_calibration_error([calibration(logits[i]) for i in test], [labels[i] for i in test])
    return calibration, before, after, len(fit), len(test)


def write_calibration(folder: str | Path, calibration: Calibration, **details: Any) -> Path:
    """Store ``calibration`` as ``calibration.json`` in a model folder (what ``activation="calibrated"`` reads),
    atomically: a reader sees the previous file or the new one, never a truncated one."""
    record = {"method": "platt", "written_by": WRITTEN_BY, **asdict(calibration), **details}
    return write_text_atomic(Path(folder) / CALIBRATION_FILE, json.dumps(record, indent=2))


def calibrate(engine: EngineArgs, data: str, *, output: str | None = None, overwrite: bool = False,
              holdout: float = 0.3, seed: int = 12, split: str = "train", candidates: int = 20,
              retriever: str | None = None) -> CalibrationReport:
    """Score the labelled pairs of ``data`` (JSONL pairs or groups with labels, or a BEIR folder: ``split``'s
    judged queries and their ``candidates`` retrieved by ``retriever``) with the model of ``engine``, fit the map,
    and store it.

    Where: by default ``calibration.json`` is added to the model folder (nothing else there changes); with
    ``output``, a calibrated copy of the model is written there (needed for a model in the Hugging Face cache).
    What it refuses, before scoring anything: a ``calibration.json`` already there unless ``overwrite`` (and
    never one that is not a calibration of this command), a model folder it cannot write in, an ``output`` that is,
    holds or lies inside the model or the data, and an existing ``output`` that is not a copy this command wrote
    (or any, without ``overwrite``). A copy is written beside and renamed into place when complete.
    """
    from dataclasses import replace

    from ettin_rerank.engine.loading import HubOptions, resolve_model_path
    from ettin_rerank.engine.reranker import Reranker
    from ettin_rerank.training.data import detect_layout, load_examples

    model = engine.model
    folder = resolve_model_path(model, HubOptions(revision=engine.revision, token=engine.token,
                                                  cache_folder=engine.cache_folder,
                                                  local_files_only=engine.local_files_only))
    copy = output is not None and Path(output).resolve() != folder.resolve()
    if copy:
        check_output_folder(output, {"model": folder, "calibration data": data}, command="calibrate",
                            marker=CALIBRATION_FILE, overwrite=overwrite,
                            is_ours=lambda existing: "copy_of" in (read_json_object(existing / CALIBRATION_FILE)
                                                                    or {}))
    else:
        if _in_hub_cache(folder):
            msg = f"{model} lives in the Hugging Face cache; give --output to write a calibrated copy elsewhere"
            raise ValueError(msg)
        _check_replaceable_calibration(folder / CALIBRATION_FILE, overwrite)
        check_writable(folder, argument="--model")
    if Path(data).is_dir() and detect_layout(data) == "beir":
        examples = _beir_examples(data, split, candidates, retriever)
    else:
        _, examples = load_examples(data)
    labelled = [e for e in examples if e.label is not None]
    if not labelled:
        msg = f"{data} has no labelled pairs to calibrate on"
        raise ValueError(msg)
    with Reranker.from_args(replace(engine, model=folder), show_progress_bar=False) as reranker:
        logits = reranker.score_pairs([(e.query, e.document) for e in labelled])
    labels = [1.0 if (e.label or 0) > 0 else 0.0 for e in labelled]
    calibration, before, after, fitted, tested = calibrate_pairs(logits, labels, [e.query for e in labelled],
                                                                 holdout=holdout, seed=seed)
    details = {"ece_before": before, "ece_after": after, "pairs": len(labelled)}
    if not copy:
        path = write_calibration(folder, calibration, **details)
        return CalibrationReport(calibration, before, after, fitted, tested, str(path))
    with staged(output) as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        write_calibration(staging, calibration, **details, copy_of=str(folder))
    return CalibrationReport(calibration, before, after, fitted, tested, str(Path(output) / CALIBRATION_FILE))


def _check_replaceable_calibration(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    record = read_json_object(path)
    if record is not None and record.get("method") != "platt":
        msg = (f"{path} exists and is not a calibration written by ettin-rerank calibrate; it is never replaced: "
               "move it away, or give --output to write a calibrated copy")
        raise ValueError(msg)
    if not overwrite:
        state = "a calibration fitted before" if record is not None else "damaged: it cannot be read"
        msg = f"{path} exists ({state}); pass --overwrite to replace it"
        raise ValueError(msg)


def _in_hub_cache(folder: Path) -> bool:
    return "snapshots" in folder.parts and any(part.startswith("models--") for part in folder.parts)


def _beir_examples(folder: str, split: str, candidates: int, retriever: str | None) -> list:
    """The pairs a reranker sees: each judged query's top ``candidates`` from the retriever, labelled by the qrels
    (unjudged = not relevant)."""
    from ettin_rerank.evaluation.beir import load_beir
    from ettin_rerank.evaluation.compare import search_corpus
    from ettin_rerank.evaluation.retrieval import QdrantRetriever
    from ettin_rerank.training.data import Example

    data = load_beir(folder, split)
    hits, _ = search_corpus(data, QdrantRetriever(retriever, collection="ettin-calibrate"), data.queries, candidates)
    return [Example(data.queries[qid], data.document_text(h.doc_id), float(data.qrels[qid].get(h.doc_id, 0) > 0))
            for qid, row in hits.items() for h in row]


__all__ = ["CalibrationReport", "calibrate", "expected_calibration_error", "fit_platt"]
