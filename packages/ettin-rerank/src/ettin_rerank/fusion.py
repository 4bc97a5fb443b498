"""Score fusion: ``alpha * retriever + (1 - alpha) * reranker``, each min-max normalised within a query's list.

A reranker that is weaker than the retriever on some data can still add to it as a fused feature; ``alpha`` is
tuned on labelled dev queries (``ettin-rerank eval --fusion``), never on the queries it is reported on, and the
adapters accept the tuned value (``fusion_weight``). Imports nothing heavy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ettin_rerank.results import RerankResult

ALPHA_GRID = tuple(round(i * 0.05, 2) for i in range(21))


def minmax(values: Sequence[float]) -> list[float]:
    """Values scaled to [0, 1] within the list (all 0.5 when they are equal); non-finite values become 0."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [0.0] * len(values)
    low, high = min(finite), max(finite)
    if high == low:
        return [0.5 if math.isfinite(v) else 0.0 for v in values]
    return [(v - low) / (high - low) if math.isfinite(v) else 0.0 for v in values]


def fuse(retrieval: Sequence[float], rerank: Sequence[float], alpha: float) -> list[float]:
    """Fused scores of one query's list (same order as the inputs)."""
    if not 0 <= alpha <= 1:
        msg = f"alpha (fusion_weight) must be between 0 and 1, but got {alpha}"
        raise ValueError(msg)
    if len(retrieval) != len(rerank):
        msg = f"got {len(retrieval)} retrieval scores for {len(rerank)} documents"
        raise ValueError(msg)
    return [alpha * r + (1 - alpha) * s for r, s in zip(minmax(retrieval), minmax(rerank), strict=True)]


def rank_fused(results: Sequence[RerankResult], retrieval: Sequence[float], alpha: float, *,
               top_k: int | None = None, score_threshold: float | None = None) -> list[RerankResult]:
    """``results`` (one per input document, any order) best first by fused score, which becomes their ``score``;
    ``retrieval[i]`` is the retriever's score of input ``i``. Ties keep input order."""
    by_index = sorted(results, key=lambda r: r.index)
    fused = fuse(retrieval, [r.logit for r in by_index], alpha)
    ranked = sorted((replace(r, score=f) for r, f in zip(by_index, fused, strict=True)),
                    key=lambda r: (-r.score, r.index))
    if score_threshold is not None:
        ranked = [r for r in ranked if r.score >= score_threshold]
    return ranked[:top_k]


@dataclass(frozen=True)
class FusionQuery:
    """One labelled dev query: judgements, retriever scores and reranker logits by document id."""

    qrels: dict[str, int]
    retrieval: dict[str, float]
    rerank: dict[str, float]

    def fused_run(self, alpha: float) -> dict[str, float]:
        ids = list(self.retrieval)
        return dict(zip(ids, fuse([self.retrieval[d] for d in ids], [self.rerank[d] for d in ids], alpha),
                        strict=True))


def tune_alpha(queries: dict[str, FusionQuery], grid: Sequence[float] = ALPHA_GRID) -> tuple[float, float]:
    """``(alpha, NDCG@10)`` of the best ``alpha`` on these (dev) queries; ties go to the larger alpha (more weight
    on the retriever, the safer side)."""
    import ir_measures
    from ir_measures import nDCG

    qrels = {q: item.qrels for q, item in queries.items()}
    best = (-1.0, 0.0)
    for alpha in grid:
        run = {q: item.fused_run(alpha) for q, item in queries.items()}
        score = float(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10])
        if score >= best[0]:
            best = (score, alpha)
    return best[1], best[0]
