"""Tuning score fusion: the ``alpha`` of ``alpha * retriever + (1 - alpha) * reranker`` (each min-max normalised
within a query's list, :func:`ettin_rerank.results.fuse`), chosen on labelled dev queries and never on the queries
it is reported on. The adapters take the tuned value as ``fusion_weight``. Works on plain runs (no model here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ettin_rerank.evaluation.beir import BeirData, Qrels, load_judged_queries
from ettin_rerank.evaluation.metrics import Run, metrics, ndcg_at_10, paired_bootstrap, per_query_ndcg
from ettin_rerank.results import fuse

ALPHA_GRID = tuple(round(i * 0.05, 2) for i in range(21))


@dataclass(frozen=True)
class FusionQuery:
    """One labelled dev query: judgements, retriever scores and reranker logits by document id."""

    qrels: dict[str, int]
    retrieval: dict[str, float]
    rerank: dict[str, float]

    def fused_run(self, alpha: float) -> dict[str, float]:
        return fused(self.retrieval, self.rerank, alpha)


def fused(retrieval: dict[str, float], rerank: dict[str, float], alpha: float) -> dict[str, float]:
    """One query's fused scores by document id (the documents of ``retrieval``)."""
    ids = list(retrieval)
    return dict(zip(ids, fuse([retrieval[d] for d in ids], [rerank[d] for d in ids], alpha), strict=True))


def tune_alpha(queries: dict[str, FusionQuery], grid: Sequence[float] = ALPHA_GRID) -> tuple[float, float]:
    """``(alpha, NDCG@10)`` of the best ``alpha`` on these (dev) queries; ties go to the larger alpha (more weight
    on the retriever, the safer side)."""
    qrels = {q: item.qrels for q, item in queries.items()}
    best = (-1.0, 0.0)
    for alpha in grid:
        score = ndcg_at_10(qrels, {q: item.fused_run(alpha) for q, item in queries.items()})
        if score >= best[0]:
            best = (score, alpha)
    return best[1], best[0]


@dataclass(frozen=True)
class FusionDev:
    """Labelled dev queries to tune the fusion weight on, disjoint from the evaluated ones."""

    split: str
    queries: dict[str, str]
    qrels: Qrels


def fusion_dev_queries(folder: str | Path, split: str, fusion_split: str | None, fusion_queries: int,
                       test: BeirData, *, strict: bool = False) -> FusionDev:
    """``fusion_split`` (default ``dev`` when the folder has it, else ``train``), never a query of the evaluated
    ``split``, at most ``fusion_queries`` of them.

    Raises:
        FileNotFoundError: the split's qrels file is missing (names the splits looked for and the ones there are).
        ValueError: the split is the evaluated one, or has no query outside it.
    """
    qrels = Path(folder) / "qrels"
    looked_for = [fusion_split] if fusion_split else ["dev", "train"]
    chosen = next((name for name in looked_for if (qrels / f"{name}.tsv").is_file()), None)
    if chosen is None:
        others = sorted(path.stem for path in qrels.glob("*.tsv") if path.stem != split)
        looked = " or ".join(f"qrels/{name}.tsv" for name in looked_for)
        hint = (f"name another split with --fusion-split ({', '.join(others)})" if others else
                f"it holds only the evaluated split ({split}): add labelled dev queries as qrels/dev.tsv, or drop "
                "--fusion")
        what = f"--fusion-split {fusion_split}" if fusion_split else "--fusion tunes alpha on labelled dev queries"
        msg = f"{what}: {folder} has no {looked}; {hint}"
        raise FileNotFoundError(msg)
    if chosen == split:
        msg = f"--fusion-split {chosen} is the evaluated split: tuning there would leak the test queries"
        raise ValueError(msg)
    dev = load_judged_queries(folder, chosen, strict=strict)  # the corpus is the evaluated split's, read once
    kept = [q for q in dev.queries if q not in test.queries][:fusion_queries]
    if not kept:
        msg = f"split {chosen} has no query outside the evaluated split to tune the fusion weight on"
        raise ValueError(msg)
    return FusionDev(chosen, {q: dev.queries[q] for q in kept}, {q: dev.qrels[q] for q in kept})


def fusion_result(qrels: Qrels, dev: dict[str, FusionQuery], retrieval: Run, rerank: Run, *, top_k: int,
                  dev_split: str, retrieval_ndcg: Sequence[float] | None = None) -> dict[str, Any]:
    """Tune alpha on the ``dev`` queries (of ``dev_split``), then report the fused ranking of the evaluated queries
    (``qrels``, with their ``retrieval`` and ``rerank`` runs) against retrieval alone (``retrieval_ndcg``: its
    per-query NDCG@10 in ``qrels`` order, when already computed)."""
    alpha, dev_ndcg = tune_alpha(dev)
    fused_run = {qid: fused(retrieval[qid], rerank[qid], alpha) for qid in retrieval}
    before = per_query_ndcg(qrels, retrieval) if retrieval_ndcg is None else retrieval_ndcg
    verdict = paired_bootstrap(before, per_query_ndcg(qrels, fused_run))
    return {"alpha": alpha, "dev_split": dev_split, "dev_queries": len(dev), "dev_ndcg@10": dev_ndcg,
            "metrics": metrics(qrels, fused_run, top_k), "vs_retrieval": str(verdict)}
