"""Before and after: the held-out queries reranked by a model, scored with the eval harness's metrics, and a plain
verdict with a paired bootstrap confidence interval on NDCG@10."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ettin_rerank.args import EngineArgs
from ettin_rerank.evaluation.metrics import Verdict, metrics, paired_bootstrap, per_query_ndcg
from ettin_rerank.training.data import TrainingData


@dataclass(frozen=True)
class Heldout:
    """Held-out queries: candidates in retrieval order (with retrieval scores) and relevance judgements."""

    candidates: dict[str, list[tuple[str, float]]]
    qrels: dict[str, dict[str, int]]

    @property
    def top_k(self) -> int:
        return max((len(c) for c in self.candidates.values()), default=0)


def doc_key(text: str) -> str:
    """A short stable key of a document text (run and judgement ids)."""
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


def heldout_of(data: TrainingData) -> Heldout:
    """The held-out set of ``data``: BEIR keeps the retriever's candidates and full judgements; JSONL layouts use
    each held-out query's rows in file order, labels as judgements."""
    if "heldout_qrels" in data.notes:
        candidates = {q: [(doc_key(d), s) for d, s in rows] for q, rows in data.notes["heldout_retrieval"].items()}
        qrels = {q: {doc_key(d): int(g) for d, g in judged.items()}
                 for q, judged in data.notes["heldout_qrels"].items()}
        return Heldout(candidates, qrels)
    candidates: dict[str, list[tuple[str, float]]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for row in data.heldout:
        rows = candidates.setdefault(row.query, [])
        rows.append((doc_key(row.document), -float(len(rows))))
        label = row.label if row.label is not None else 0.0
        qrels.setdefault(row.query, {})[doc_key(row.document)] = round(label)
    return Heldout(candidates, qrels)


TEACHER_GRADES = (3, 2, 2, 1, 1)
"""Relevance given to a held-out query's documents by the teacher's rank (1st, 2nd, ... 5th); the rest: 0."""


def heldout_from_scores(data: TrainingData, scores: dict[tuple[str, str], float]) -> Heldout:
    """Held-out judgements from a teacher's scores, for data without labels: each query's top documents by the
    teacher are relevant (graded by rank), so NDCG@10 measures agreement with the teacher's ranking."""
    heldout = heldout_of(data)
    by_query: dict[str, list[tuple[float, str]]] = {}
    for row in data.heldout:
        by_query.setdefault(row.query, []).append((scores[(row.query, row.document)], doc_key(row.document)))
    qrels = {}
    for query, rows in by_query.items():
        ranked = [doc for _, doc in sorted(rows, key=lambda r: -r[0])]
        qrels[query] = {doc: grade for doc, grade in zip(ranked, TEACHER_GRADES, strict=False)}
    return Heldout(heldout.candidates, qrels)


def evaluate(engine: EngineArgs, data: TrainingData, heldout: Heldout) -> dict[str, Any]:
    """Rerank every held-out query's candidates with the model of ``engine``: metrics of retrieval alone and
    reranked, and the per-query NDCG@10 the verdict compares."""
    from ettin_rerank.engine.reranker import Reranker
    from ettin_rerank.evaluation.compare import rerank_run

    texts = {doc_key(d): d for d in [*data.documents, *(r.document for r in data.heldout)]}
    if "heldout_retrieval" in data.notes:
        texts |= {doc_key(d): d for rows in data.notes["heldout_retrieval"].values() for d, _ in rows}
    retrieval = {q: dict(rows) for q, rows in heldout.candidates.items()}
    candidates = {q: [(d, texts[d]) for d, _ in rows] for q, rows in heldout.candidates.items()}
    with Reranker.from_args(engine, show_progress_bar=False) as reranker:
        reranked = rerank_run(reranker, {q: q for q in candidates}, candidates)
    return {"retrieval": metrics(heldout.qrels, retrieval, heldout.top_k),
            "reranked": metrics(heldout.qrels, reranked, heldout.top_k),
            "ndcg_per_query": per_query_ndcg(heldout.qrels, reranked)}


def verdict(before: list[float], after: list[float]) -> Verdict:
    """Paired bootstrap over the held-out queries of the NDCG@10 difference."""
    return paired_bootstrap(before, after)
