"""Training data in the layouts users already have, normalised into one table of (query, document, label, score).

Detected from the file (or folder):

- a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): positives from the qrels; candidates
  and negatives come from the user's retriever over the corpus (``prepare_beir``);
- JSONL pairs ``{query, document, label}`` (binary or graded) or ``{query, document, score}`` (teacher logits);
- JSONL groups ``{query, positive | positives, negatives}``, FlagEmbedding's ``{query, pos, neg, pos_scores?,
  neg_scores?}`` and Cohere's fine-tuning ``{query, relevant_passages, hard_negatives}``.

Every row problem is one error naming file, line and field. Held-out queries are split off before anything else
(query-disjoint), so nothing about them reaches training.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ettin_rerank.inputs import InputError, jsonl_records, read_text
from ettin_rerank.validation import has_text

LAYOUTS = ("beir", "pairs", "groups", "flag", "cohere")


@dataclass(frozen=True)
class Example:
    """One (query, document) row: a relevance ``label`` (0/1 or graded) and/or a teacher ``score`` (raw logit)."""

    query: str
    document: str
    label: float | None = None
    score: float | None = None


@dataclass
class TrainingData:
    """Training rows and held-out queries (query-disjoint), with where they came from."""

    layout: str
    train: list[Example]
    heldout: list[Example]
    documents: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def has_scores(self) -> bool:
        return bool(self.train) and all(e.score is not None for e in self.train)

    @property
    def graded(self) -> bool:
        return any(e.label is not None and e.label not in (0.0, 1.0) for e in self.train)

    def counts(self) -> dict[str, int]:
        positives = sum(1 for e in self.train if e.label is not None and e.label > 0)
        return {
            "train_rows": len(self.train), "train_queries": len({e.query for e in self.train}),
            "train_positives": positives, "train_labelled_negatives": sum(1 for e in self.train if e.label == 0),
            "heldout_rows": len(self.heldout), "heldout_queries": len({e.query for e in self.heldout}),
        }


def detect_layout(path: str | Path) -> str:
    """The layout of ``path``: ``beir`` for a folder with ``corpus.jsonl``, else from the first JSONL record."""
    path = Path(path)
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return "beir"
        msg = f"{path} is a folder but not a BEIR-layout folder (no corpus.jsonl)"
        raise InputError(msg)
    for number, record in jsonl_records(read_text(path), str(path)):
        keys = set(record)
        if {"query", "document"} <= keys:
            return "pairs"
        if "relevant_passages" in keys:
            return "cohere"
        if "pos" in keys:
            return "flag"
        if "positive" in keys or "positives" in keys:
            return "groups"
        msg = (f"{path}:{number}: cannot tell the layout from the fields {sorted(keys)}: expected query + document "
               "(+ label or score), query + positive(s) + negatives, FlagEmbedding's query + pos + neg, or Cohere's "
               "query + relevant_passages + hard_negatives")
        raise InputError(msg)
    msg = f"{path} holds no records"
    raise InputError(msg)


def load_examples(path: str | Path, layout: str = "auto") -> tuple[str, list[Example]]:
    """``(layout, rows)`` of a JSONL file in any of the JSONL layouts (BEIR folders: see ``prepare_beir``)."""
    path = Path(path)
    layout = detect_layout(path) if layout == "auto" else layout
    if layout not in LAYOUTS or layout == "beir":
        msg = f"layout must be one of {', '.join(LAYOUTS[1:])} for a JSONL file, but got {layout!r}"
        raise ValueError(msg)
    rows: list[Example] = []
    for number, record in jsonl_records(read_text(path), str(path)):
        where = f"{path}:{number}"
        query = _text(record, "query", where)
        if layout == "pairs":
            label, score = _number(record, "label", where), _number(record, "score", where)
            if label is None and score is None:
                msg = f"{where}: needs a number 'label' (relevance) or 'score' (teacher logit)"
                raise InputError(msg)
            rows.append(Example(query, _text(record, "document", where), label, score))
            continue
        positive_key, negative_key = {"groups": ("positives", "negatives"), "flag": ("pos", "neg"),
                                      "cohere": ("relevant_passages", "hard_negatives")}[layout]
        if layout == "groups" and "positive" in record:
            positives = [_text(record, "positive", where)]
        else:
            positives = _texts(record, positive_key, where)
        negatives = _texts(record, negative_key, where, required=layout != "cohere")
        scores = (_numbers(record, "pos_scores", where, len(positives)), _numbers(record, "neg_scores", where,
                                                                                  len(negatives)))
        for documents, label, teacher in ((positives, 1.0, scores[0]), (negatives, 0.0, scores[1])):
            for position, document in enumerate(documents):
                rows.append(Example(query, document, label, teacher[position] if teacher else None))
    if not rows:
        msg = f"{path} holds no training rows"
        raise InputError(msg)
    return layout, rows


def split_heldout(rows: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """``(train, heldout)``: a ``fraction`` of the queries (at least one) held out whole (query-disjoint)."""
    queries = sorted({row.query for row in rows})
    if len(queries) < 2:
        msg = f"the data has {len(queries)} distinct quer(ies); at least 2 are needed to hold one out for evaluation"
        raise InputError(msg)
    random.Random(seed).shuffle(queries)
    held = set(queries[: max(1, round(len(queries) * fraction))])
    return [r for r in rows if r.query not in held], [r for r in rows if r.query in held]


def add_random_negatives(rows: list[Example], pool: list[str], per_query: int, seed: int) -> list[Example]:
    """Each query of ``rows`` gets ``per_query`` documents from ``pool`` that it does not already have, labelled 0
    (random negatives keep a reranker from getting lost on easy cases: sentence-transformers#3085)."""
    if per_query <= 0 or not pool:
        return rows
    rng = random.Random(seed)
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        seen[row.query].add(row.document)
    extra = []
    for query, documents in seen.items():
        candidates = [d for d in rng.sample(pool, min(len(pool), per_query * 4 + len(documents))) if d not in documents]
        extra += [Example(query, document, 0.0) for document in candidates[:per_query]]
    return rows + extra


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not has_text(value):
        got = "missing" if value is None else f"a {type(value).__name__}" if not isinstance(value, str) else "blank"
        msg = f"{where}: '{key}' must be non-empty text ({got})"
        raise InputError(msg)
    return value


def _texts(record: dict[str, Any], key: str, where: str, *, required: bool = True) -> list[str]:
    value = record.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or (required and not value):
        msg = f"{where}: '{key}' must be a non-empty list of strings"
        raise InputError(msg)
    return value


def _number(record: dict[str, Any], key: str, where: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if not _finite_number(value):
        msg = f"{where}: '{key}' must be a finite number, got {value!r}"
        raise InputError(msg)
    return float(value)


def _numbers(record: dict[str, Any], key: str, where: str, count: int) -> list[float] | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != count or not all(_finite_number(v) for v in value):
        msg = f"{where}: '{key}' must be a list of {count} finite numbers, one per document"
        raise InputError(msg)
    return [float(v) for v in value]


def _finite_number(value: Any) -> bool:
    """A JSON number that is a finite float: not a bool, NaN or infinity, nor an integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
