"""Ranking metrics (``ir-measures``: NDCG@10, Recall@K, MRR@10) and whether a difference is real (the paired
bootstrap over queries, with a plain verdict). The only module of the project that imports ``ir_measures``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ettin_rerank.evaluation.beir import Qrels

Run = dict[str, dict[str, float]]


def _measures(top_k: int) -> dict[str, Any]:
    from ir_measures import RR, R, nDCG

    return {"NDCG@10": nDCG @ 10, f"Recall@{top_k}": R @ top_k, "MRR@10": RR @ 10}


def metrics(qrels: Qrels, run: Run, top_k: int) -> dict[str, float]:
    """NDCG@10, Recall@K and MRR@10 of ``run``, averaged over the queries of ``qrels`` (ir-measures)."""
    import ir_measures

    measures = _measures(top_k)
    values = ir_measures.calc_aggregate(list(measures.values()), qrels, run)
    return {name: float(values[measure]) for name, measure in measures.items()}


def per_query_metrics(qrels: Qrels, run: Run, top_k: int) -> dict[str, list[float]]:
    """Each of :func:`metrics`' measures for each query of ``qrels`` (0 for a query the run lacks), in ``qrels``
    order: what a paired comparison of two runs resamples."""
    return _per_query(qrels, run, _measures(top_k))


def _per_query(qrels: Qrels, run: Run, measures: dict[str, Any]) -> dict[str, list[float]]:
    """Each of ``measures`` (name -> ir-measures measure) for each query of ``qrels``, in ``qrels`` order; 0 for a
    query the run lacks."""
    import ir_measures

    names = {str(measure): name for name, measure in measures.items()}
    values: dict[str, dict[str, float]] = {name: {} for name in measures}
    for row in ir_measures.iter_calc(list(measures.values()), qrels, run):
        values[names[str(row.measure)]][row.query_id] = row.value
    return {name: [by_query.get(q, 0.0) for q in qrels] for name, by_query in values.items()}


def ndcg_at_10(qrels: Qrels, run: Run) -> float:
    """NDCG@10 of ``run`` averaged over the queries of ``qrels``."""
    import ir_measures
    from ir_measures import nDCG

    return float(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10])


def oracle_run(qrels: Qrels, run: Run) -> Run:
    """Rerank each query's retrieved documents by their judged relevance (the best any reranker could do)."""
    return {
        qid: {doc_id: float(qrels.get(qid, {}).get(doc_id, 0)) + 1.0 / (rank + 2)
              for rank, doc_id in enumerate(sorted(docs, key=docs.get, reverse=True))}
        for qid, docs in run.items()
    }


@dataclass(frozen=True)
class Verdict:
    """``after - before`` of a per-query metric, with a 95% paired bootstrap interval."""

    delta: float
    low: float
    high: float
    queries: int
    metric: str = "NDCG@10"

    @property
    def label(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "same"

    def __str__(self) -> str:
        return (f"{self.label.upper()}: {self.metric} {self.delta:+.4f} (95% CI {self.low:+.4f} to {self.high:+.4f}, "
                f"{self.queries} queries)")


def paired_bootstrap(before: Sequence[float], after: Sequence[float], *, resamples: int = 2000,
                     seed: int = 12, metric: str = "NDCG@10") -> Verdict:
    """Resample queries with replacement; the interval of the mean difference."""
    differences = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if len(differences) == 0:
        msg = "no queries to compare"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), (resamples, len(differences)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Verdict(float(differences.mean()), float(low), float(high), len(differences), metric)


def per_query_ndcg(qrels: Qrels, run: Run) -> list[float]:
    """NDCG@10 of each query of ``qrels`` (0 for a query the run lacks), in ``qrels`` order."""
    from ir_measures import nDCG

    return _per_query(qrels, run, {"NDCG@10": nDCG @ 10})["NDCG@10"]
