"""Is a difference real? The paired bootstrap over queries, with a plain verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
                     seed: int = 12) -> Verdict:
    """Resample queries with replacement; the interval of the mean difference."""
    differences = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if len(differences) == 0:
        msg = "no queries to compare"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), (resamples, len(differences)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Verdict(float(differences.mean()), float(low), float(high), len(differences))


def per_query_ndcg(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> list[float]:
    """NDCG@10 of each query of ``qrels`` (0 for a query the run lacks), in ``qrels`` order."""
    import ir_measures
    from ir_measures import nDCG

    values = {m.query_id: m.value for m in ir_measures.iter_calc([nDCG @ 10], qrels, run)}
    return [values.get(q, 0.0) for q in qrels]
