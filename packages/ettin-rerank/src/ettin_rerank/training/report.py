"""Before and after: the held-out queries reranked by a model, scored with the eval harness's metrics, and a plain
verdict with a paired bootstrap confidence interval on NDCG@10."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ettin_rerank.evaluation.significance import Verdict, paired_bootstrap, per_query_ndcg
from ettin_rerank.training.data import TrainingData


@dataclass(frozen=True)
class Heldout:
    """Held-out queries: candidates in retrieval order (with retrieval scores) and relevance judgements."""

    candidates: dict[str, list[tuple[str, float]]]
    qrels: dict[str, dict[str, int]]

    @property
    def top_k(self) -> int:
        return max((len(c) for c in self.candidates.values()), default=0)


def _id(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


def heldout_of(data: TrainingData) -> Heldout:
    """The held-out set of ``data``: BEIR keeps the retriever's candidates and full judgements; JSONL layouts use
    each held-out query's rows in file order, labels as judgements."""
    if "heldout_qrels" in data.notes:
        candidates = {q: [(_id(d), s) for d, s in rows] for q, rows in data.notes["heldout_retrieval"].items()}
        qrels = {q: {_id(d): int(g) for d, g in judged.items()} for q, judged in data.notes["heldout_qrels"].items()}
        return Heldout(candidates, qrels)
    candidates: dict[str, list[tuple[str, float]]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for row in data.heldout:
        rows = candidates.setdefault(row.query, [])
        rows.append((_id(row.document), -float(len(rows))))
        label = row.label if row.label is not None else 0.0
        qrels.setdefault(row.query, {})[_id(row.document)] = round(label)
    return Heldout(candidates, qrels)


def evaluate(model: str | Path, data: TrainingData, heldout: Heldout, **engine_options: Any) -> dict[str, Any]:
    """Rerank every held-out query's candidates with ``model``: metrics of retrieval alone and reranked, and the
    per-query NDCG@10 the verdict compares."""
    from ettin_rerank.engine import Reranker
    from ettin_rerank.evaluation.run import metrics

    texts = {_id(d): d for d in [*data.documents, *(r.document for r in data.heldout)]}
    if "heldout_retrieval" in data.notes:
        texts |= {_id(d): d for rows in data.notes["heldout_retrieval"].values() for d, _ in rows}
    retrieval = {q: dict(rows) for q, rows in heldout.candidates.items()}
    reranked = {}
    with Reranker(model, show_progress_bar=False, **engine_options) as engine:
        for query, rows in heldout.candidates.items():
            results = engine.rerank(query, [texts[d] for d, _ in rows])
            reranked[query] = {rows[r.index][0]: r.logit for r in results}
    return {"retrieval": metrics(heldout.qrels, retrieval, heldout.top_k),
            "reranked": metrics(heldout.qrels, reranked, heldout.top_k),
            "ndcg_per_query": per_query_ndcg(heldout.qrels, reranked)}


def verdict(before: list[float], after: list[float]) -> Verdict:
    """Paired bootstrap over the held-out queries of the NDCG@10 difference."""
    return paired_bootstrap(before, after)
