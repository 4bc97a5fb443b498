"""``ettin-rerank eval``: what reranking buys on BEIR-layout data, for one model or several side by side.

Embeds the corpus into Qdrant, retrieves the top-K per query once, reranks the same candidates with each model,
and scores every run with ``ir-measures`` (NDCG@10, Recall@K, MRR@10), with pairs/s and peak memory per model.
Everything that can be checked is checked before the embedding starts; results are written as soon as each stage
is done, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ettin_rerank.engine import Reranker
from ettin_rerank.evaluation.beir import BeirData, Qrels, load_beir
from ettin_rerank.evaluation.memory import PeakMemory
from ettin_rerank.evaluation.retrieval import Hit, QdrantRetriever

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]


def metrics(qrels: Qrels, run: Run, top_k: int) -> dict[str, float]:
    """NDCG@10, Recall@K and MRR@10 of ``run``, averaged over the queries of ``qrels`` (ir-measures)."""
    import ir_measures
    from ir_measures import RR, R, nDCG

    measures = {"NDCG@10": nDCG @ 10, f"Recall@{top_k}": R @ top_k, "MRR@10": RR @ 10}
    values = ir_measures.calc_aggregate(list(measures.values()), qrels, run)
    return {name: float(values[measure]) for name, measure in measures.items()}


def oracle_run(qrels: Qrels, run: Run) -> Run:
    """Rerank each query's retrieved documents by their judged relevance (the best any reranker could do)."""
    return {
        qid: {doc_id: float(qrels.get(qid, {}).get(doc_id, 0)) + 1.0 / (rank + 2)
              for rank, doc_id in enumerate(sorted(docs, key=docs.get, reverse=True))}
        for qid, docs in run.items()
    }


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


def retrieve(data: BeirData, retriever: QdrantRetriever, top_k: int) -> Retrieved:
    """Index the corpus, retrieve the top-K of every query, and score retrieval alone."""
    doc_ids = list(data.corpus)
    index_seconds = retriever.index(doc_ids, [data.document_text(d) for d in doc_ids], show_progress_bar=True)
    query_ids = list(data.queries)
    start = time.perf_counter()
    hits = retriever.search([data.queries[q] for q in query_ids], top_k)
    seconds = {"index": index_seconds, "retrieve": time.perf_counter() - start}
    run = {q: {h.doc_id: h.score for h in row} for q, row in zip(query_ids, hits, strict=True)}
    return Retrieved(query_ids, hits, run, metrics(data.qrels, run, top_k), seconds)


def rerank_candidates(data: BeirData, retrieved: Retrieved, reranker: Reranker, *, top_k: int, model: str,
                      label: str) -> ModelResult:
    """Rerank every query's candidates with ``reranker``; times it and measures its working memory."""
    pairs = sum(len(row) for row in retrieved.hits)
    run: Run = {}
    with PeakMemory(reranker.device.type) as memory:
        start = time.perf_counter()
        for qid, row in tqdm(list(zip(retrieved.query_ids, retrieved.hits, strict=True)), desc=f"Reranking ({label})",
                             unit="query"):
            results = reranker.rerank(data.queries[qid], [data.document_text(h.doc_id) for h in row])
            run[qid] = {row[r.index].doc_id: r.logit for r in results}
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


def _check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        msg = f"--output {output} is a file; give a folder (it is created if missing)"
        raise ValueError(msg)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        msg = f"--output {output} cannot be created: {error.strerror or error}"
        raise ValueError(msg) from error


def _write(output: Path, record: dict[str, Any]) -> None:
    (output / "eval.json").write_text(json.dumps(record, indent=2))


def run_eval_command(args: argparse.Namespace) -> int:
    """``ettin-rerank eval DATA``: prints one table, writes ``eval.json`` and ``eval.png`` to ``--output``."""
    from ettin_rerank.cli import engine_kwargs
    from ettin_rerank.demo import resolve_demo_model
    from ettin_rerank.validation import check_count

    check_count(args.top_k, "--top-k", allow_none=False)
    check_count(args.max_queries, "--max-queries")
    check_count(args.fusion_queries, "--fusion-queries", allow_none=False)
    output = Path(args.output)
    _check_output(output)
    names = [] if args.no_rerank else (args.model or ["17m"])
    models = [(name, *resolve_demo_model(name if args.model else None)) for name in names]  # fail before the work
    data = load_beir(args.data, args.split, args.max_queries, allow_duplicates=args.allow_duplicates)
    dev = fusion_dev_queries(args, data) if args.fusion and names else None
    print(f"{Path(args.data).name} {args.split}: {len(data.queries)} queries, {len(data.corpus)} documents, "
          f"top-{args.top_k}")
    retriever = QdrantRetriever(args.embedding_model, url=args.qdrant_url, collection="ettin-eval")
    retrieved = retrieve(data, retriever, args.top_k)
    dev_hits = retriever.search(list(dev.queries.values()), args.top_k) if dev else None
    record: dict[str, Any] = {
        "settings": {"data": str(args.data), "split": args.split, "queries": len(data.queries),
                     "documents": len(data.corpus), "top_k": args.top_k, "embedding_model": retriever.embedding_model},
        "retrieval": retrieved.metrics, "seconds": retrieved.seconds, "models": [], "complete": False,
    }
    _write(output, record)
    results = []
    for name, path, untrained in models:
        label = f"{name}{' (UNTRAINED)' if untrained else ''}"
        with Reranker(path, show_progress_bar=False, **engine_kwargs(args)) as reranker:
            result = rerank_candidates(data, retrieved, reranker, top_k=args.top_k, model=name, label=label)
            if dev:
                result.fusion = fusion_result(data, dev, dev_hits=dev_hits, retrieved=retrieved, result=result,
                                              reranker=reranker, top_k=args.top_k)
        results.append(result)
        record["models"].append({k: v for k, v in asdict(result).items() if k != "run"} | {"untrained": untrained})
        _write(output, record)
    record["complete"] = True
    _write(output, record)
    _print_table(retrieved, results)
    plot(retrieved.metrics, results, output / "eval.png", f"{Path(args.data).name} ({args.split}), top-{args.top_k}")
    print(f"wrote {output / 'eval.json'} and {output / 'eval.png'}")
    return 0


@dataclass(frozen=True)
class FusionDev:
    """Labelled dev queries to tune the fusion weight on, disjoint from the evaluated ones."""

    split: str
    queries: dict[str, str]
    qrels: Qrels


def fusion_dev_queries(args: argparse.Namespace, test: BeirData) -> FusionDev:
    """``--fusion-split`` (default ``dev`` when the folder has it, else ``train``), never a query of the evaluated
    split, at most ``--fusion-queries``."""
    split = args.fusion_split or ("dev" if (Path(args.data) / "qrels" / "dev.tsv").is_file() else "train")
    if split == args.split:
        msg = f"--fusion-split {split} is the evaluated split: tuning there would leak the test queries"
        raise ValueError(msg)
    dev = load_beir(args.data, split, allow_duplicates=args.allow_duplicates)
    kept = [q for q in dev.queries if q not in test.queries][: args.fusion_queries]
    if not kept:
        msg = f"split {split} has no query outside the evaluated split to tune the fusion weight on"
        raise ValueError(msg)
    return FusionDev(split, {q: dev.queries[q] for q in kept}, {q: dev.qrels[q] for q in kept})


def fusion_result(data: BeirData, dev: FusionDev, *, dev_hits: list[list[Hit]], retrieved: Retrieved,
                  result: ModelResult, reranker: Reranker, top_k: int) -> dict[str, Any]:
    """Tune alpha on the dev queries, then report the fused ranking of the evaluated queries."""
    from ettin_rerank.evaluation.significance import paired_bootstrap, per_query_ndcg
    from ettin_rerank.fusion import FusionQuery, fuse, tune_alpha

    items = {}
    for qid, hits in zip(dev.queries, dev_hits, strict=True):
        rows = reranker.rerank(dev.queries[qid], [data.document_text(h.doc_id) for h in hits])
        items[qid] = FusionQuery(dev.qrels[qid], {h.doc_id: h.score for h in hits},
                                 {hits[r.index].doc_id: r.logit for r in rows})
    alpha, dev_ndcg = tune_alpha(items)
    fused_run = {}
    for qid in retrieved.query_ids:
        ids = list(retrieved.run[qid])
        fused_run[qid] = dict(zip(ids, fuse([retrieved.run[qid][d] for d in ids], [result.run[qid][d] for d in ids],
                                            alpha), strict=True))
    verdict = paired_bootstrap(per_query_ndcg(data.qrels, retrieved.run), per_query_ndcg(data.qrels, fused_run))
    return {"alpha": alpha, "dev_split": dev.split, "dev_queries": len(items), "dev_ndcg@10": dev_ndcg,
            "metrics": metrics(data.qrels, fused_run, top_k), "vs_retrieval": str(verdict)}


def _print_table(retrieved: Retrieved, results: list[ModelResult]) -> None:
    names = list(retrieved.metrics)
    print(f"{'':<28}" + "".join(f"{n:>11}" for n in names) + f"{'pairs/s':>10}{'peak MiB':>10}")
    print(f"{'retrieval alone':<28}" + "".join(f"{retrieved.metrics[n]:>11.4f}" for n in names))
    for result in results:
        print(f"{'+ ' + result.label:<28}" + "".join(f"{result.metrics[n]:>11.4f}" for n in names)
              + f"{result.pairs_per_s:>10.1f}{result.peak_memory_mib:>10.0f}")
        if result.fusion:
            fused = result.fusion
            print(f"{'  fused, alpha=' + format(fused['alpha'], '.2f'):<28}"
                  + "".join(f"{fused['metrics'][n]:>11.4f}" for n in names)
                  + f"   vs retrieval: {fused['vs_retrieval']} (alpha tuned on {fused['dev_queries']} "
                  f"{fused['dev_split']} queries)")
    seconds = ", ".join(f"{k} {v:.1f}" for k, v in retrieved.seconds.items())
    print(f"seconds: {seconds}" + "".join(f"; {r.label} {r.seconds:.1f}" for r in results))
