"""``ettin-rerank eval``'s library: what reranking buys on BEIR-layout data, for one model or several side by side.

Embeds the corpus into Qdrant, retrieves the top-K per query once, reranks the same candidates with each model,
and scores every run with ``ir-measures`` (NDCG@10, Recall@K, MRR@10), with pairs/s and peak memory per model.
Everything that can be checked is checked before the embedding starts; results are written as soon as each stage
is done, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ettin_rerank.args import EngineArgs
from ettin_rerank.evaluation.beir import BeirData, load_beir
from ettin_rerank.evaluation.demo import resolve_demo_model
from ettin_rerank.evaluation.fusion import FusionDev, FusionQuery, fusion_dev_queries, fusion_result
from ettin_rerank.evaluation.memory import PeakMemory
from ettin_rerank.evaluation.metrics import Run, metrics
from ettin_rerank.evaluation.retrieval import Hit, QdrantRetriever
from ettin_rerank.options import RerankOptions

if TYPE_CHECKING:
    from ettin_rerank.engine.reranker import Reranker

logger = logging.getLogger(__name__)


@dataclass
class Retrieved:
    """The retrieve stage, done once: each query's candidates, their run and metrics, and the time it took."""

    query_ids: list[str]
    hits: list[list[Hit]]
    run: Run
    metrics: dict[str, float]
    seconds: dict[str, float]


@dataclass
class ModelResult:
    """One reranker on the shared candidates."""

    model: str
    label: str
    metrics: dict[str, float]
    seconds: float
    pairs_per_s: float
    peak_memory_mib: float
    run: Run = field(repr=False, default_factory=dict)
    fusion: dict[str, Any] | None = None


def search_corpus(data: BeirData, retriever: QdrantRetriever, queries: dict[str, str],
                  top_k: int) -> tuple[dict[str, list[Hit]], dict[str, float]]:
    """Index ``data``'s corpus, then retrieve the top-K of each query (by id); with the seconds each stage took."""
    doc_ids = list(data.corpus)
    index_seconds = retriever.index(doc_ids, [data.document_text(d) for d in doc_ids], show_progress_bar=True)
    start = time.perf_counter()
    hits = retriever.search(list(queries.values()), top_k)
    return dict(zip(queries, hits, strict=True)), {"index": index_seconds, "retrieve": time.perf_counter() - start}


def retrieve(data: BeirData, retriever: QdrantRetriever, top_k: int) -> Retrieved:
    """Index the corpus, retrieve the top-K of every query, and score retrieval alone."""
    by_query, seconds = search_corpus(data, retriever, data.queries, top_k)
    run = {q: {h.doc_id: h.score for h in row} for q, row in by_query.items()}
    return Retrieved(list(by_query), list(by_query.values()), run, metrics(data.qrels, run, top_k), seconds)


def rerank_run(reranker: Reranker, queries: dict[str, str], candidates: dict[str, Sequence[tuple[str, str]]], *,
               progress: str | None = None) -> Run:
    """Each query's ``(doc_id, text)`` candidates reranked: a run of raw logits keyed by document id."""
    run: Run = {}
    for qid in tqdm(list(candidates), desc=progress, unit="query", disable=progress is None):
        rows = candidates[qid]
        results = reranker.rerank(queries[qid], [text for _, text in rows])
        run[qid] = {rows[r.index][0]: r.logit for r in results}
    return run


def _candidates(data: BeirData, query_ids: Sequence[str], hits: Sequence[list[Hit]]) -> dict[str, list[tuple]]:
    return {qid: [(h.doc_id, data.document_text(h.doc_id)) for h in row]
            for qid, row in zip(query_ids, hits, strict=True)}


def rerank_candidates(data: BeirData, retrieved: Retrieved, reranker: Reranker, *, top_k: int, model: str,
                      label: str) -> ModelResult:
    """Rerank every query's candidates with ``reranker``; times it and measures its working memory."""
    pairs = sum(len(row) for row in retrieved.hits)
    candidates = _candidates(data, retrieved.query_ids, retrieved.hits)
    with PeakMemory(reranker.device.type) as memory:
        start = time.perf_counter()
        run = rerank_run(reranker, data.queries, candidates, progress=f"Reranking ({label})")
        seconds = time.perf_counter() - start
    return ModelResult(model=model, label=label, metrics=metrics(data.qrels, run, top_k), seconds=seconds,
                       pairs_per_s=pairs / seconds if seconds else 0.0, peak_memory_mib=memory.peak_mib, run=run)


def plot(retrieval: dict[str, float], models: list[ModelResult], path: Path, title: str) -> None:
    """Bar chart: one group per metric, one bar for retrieval alone and one per reranker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(retrieval)
    series = [("retrieval", retrieval)] + [(f"+ {m.label}", m.metrics) for m in models]
    fig, ax = plt.subplots(figsize=(max(7, 2 + 1.2 * len(series)), 4))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in range(len(names))], [values[n] for n in names],
               width, label=label)
    ax.set_xticks(list(range(len(names))), names)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(output: Path, record: dict[str, Any]) -> None:
    (output / "eval.json").write_text(json.dumps(record, indent=2))


def evaluate(
    data_folder: str | Path,
    output: Path,
    *,
    models: Sequence[str],
    engine: EngineArgs,
    options: RerankOptions,
    fallback: bool = False,
    split: str = "test",
    top_k: int = 100,
    max_queries: int | None = None,
    embedding_model: str | None = None,
    qdrant_url: str | None = None,
    allow_duplicates: bool = False,
    fusion: bool = False,
    fusion_split: str | None = None,
    fusion_queries: int = 100,
) -> list[ModelResult]:
    """Retrieval alone, then retrieval + each of ``models`` (none: retrieval only) on the same candidates; prints
    one table and writes ``eval.json`` and ``eval.png`` into the folder ``output`` (which must exist).

    ``engine`` gives every model's load arguments (its ``model`` is replaced by each of ``models``); ``fallback``
    lets the default model fall back to an untrained checkpoint when it cannot be found (the CLI without
    ``--model``); ``fusion`` also reports ``alpha * retriever + (1 - alpha) * reranker`` with alpha tuned on dev
    queries of ``fusion_split``.
    """
    from ettin_rerank.engine.reranker import Reranker

    resolved = [(name, *resolve_demo_model(None if fallback else name)) for name in models]  # fail before the work
    data = load_beir(data_folder, split, max_queries, allow_duplicates=allow_duplicates)
    dev = (fusion_dev_queries(data_folder, split, fusion_split, fusion_queries, data,
                              allow_duplicates=allow_duplicates) if fusion and models else None)
    print(f"{Path(data_folder).name} {split}: {len(data.queries)} queries, {len(data.corpus)} documents, "
          f"top-{top_k}")
    retriever = QdrantRetriever(embedding_model, url=qdrant_url, collection="ettin-eval")
    retrieved = retrieve(data, retriever, top_k)
    dev_hits = retriever.search(list(dev.queries.values()), top_k) if dev else None
    record: dict[str, Any] = {
        "settings": {"data": str(data_folder), "split": split, "queries": len(data.queries),
                     "documents": len(data.corpus), "top_k": top_k, "embedding_model": retriever.embedding_model},
        "retrieval": retrieved.metrics, "seconds": retrieved.seconds, "models": [], "complete": False,
    }
    _write(output, record)
    results = []
    for name, path, untrained in resolved:
        label = f"{name}{' (UNTRAINED)' if untrained else ''}"
        with Reranker.from_args(replace(engine, model=path), options, show_progress_bar=False) as reranker:
            result = rerank_candidates(data, retrieved, reranker, top_k=top_k, model=name, label=label)
            if dev:
                result.fusion = _fusion(data, dev, dev_hits, retrieved=retrieved, result=result, reranker=reranker,
                                        top_k=top_k)
        results.append(result)
        record["models"].append({k: v for k, v in asdict(result).items() if k != "run"} | {"untrained": untrained})
        _write(output, record)
    record["complete"] = True
    _write(output, record)
    _print_table(retrieved, results)
    plot(retrieved.metrics, results, output / "eval.png", f"{Path(data_folder).name} ({split}), top-{top_k}")
    print(f"wrote {output / 'eval.json'} and {output / 'eval.png'}")
    return results


def _fusion(data: BeirData, dev: FusionDev, dev_hits: list[list[Hit]], *, retrieved: Retrieved,
            result: ModelResult, reranker: Reranker, top_k: int) -> dict[str, Any]:
    dev_run = rerank_run(reranker, dev.queries, _candidates(data, list(dev.queries), dev_hits))
    items = {qid: FusionQuery(dev.qrels[qid], {h.doc_id: h.score for h in hits}, dev_run[qid])
             for qid, hits in zip(dev.queries, dev_hits, strict=True)}
    return fusion_result(data.qrels, items, retrieved.run, result.run, top_k=top_k, dev_split=dev.split)


def _print_table(retrieved: Retrieved, results: list[ModelResult]) -> None:
    names = list(retrieved.metrics)
    lines = [f"{'':<28}" + "".join(f"{n:>11}" for n in names) + f"{'pairs/s':>10}{'peak MiB':>10}",
             f"{'retrieval alone':<28}" + "".join(f"{retrieved.metrics[n]:>11.4f}" for n in names)]
    for result in results:
        lines.append(f"{'+ ' + result.label:<28}" + "".join(f"{result.metrics[n]:>11.4f}" for n in names)
                     + f"{result.pairs_per_s:>10.1f}{result.peak_memory_mib:>10.0f}")
        if result.fusion:
            fused = result.fusion
            lines.append(f"{'  fused, alpha=' + format(fused['alpha'], '.2f'):<28}"
                         + "".join(f"{fused['metrics'][n]:>11.4f}" for n in names)
                         + f"   vs retrieval: {fused['vs_retrieval']} (alpha tuned on {fused['dev_queries']} "
                         f"{fused['dev_split']} queries)")
    seconds = ", ".join(f"{k} {v:.1f}" for k, v in retrieved.seconds.items())
    lines.append(f"seconds: {seconds}" + "".join(f"; {r.label} {r.seconds:.1f}" for r in results))
    print("\n".join(lines))
