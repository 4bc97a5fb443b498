"""``ettin-rerank eval``: what reranking buys on BEIR-layout data (retrieval alone vs retrieval + rerank).

Embeds the corpus into Qdrant, retrieves the top-K per query, reranks them, and scores both runs with
``ir-measures`` (NDCG@10, Recall@K, MRR@10), writing a JSON result and a plot.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ettin_rerank.engine import Reranker
from ettin_rerank.retrieval import QdrantRetriever

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


@dataclass
class BeirData:
    """A BEIR-layout data set: corpus, the queries of one split, and their relevance judgements."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: Qrels

    def document_text(self, doc_id: str) -> str:
        doc = self.corpus[doc_id]
        return f"{doc.get('title', '')} {doc['text']}".strip()


def load_beir(folder: str | Path, split: str = "test", max_queries: int | None = None) -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``; keep only judged queries."""
    folder = Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / name).exists():
            msg = f"{folder} is not a BEIR-layout folder: {name} is missing"
            raise FileNotFoundError(msg)
    corpus = {}
    with (folder / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            doc = json.loads(line)
            corpus[str(doc["_id"])] = {"title": doc.get("title", ""), "text": doc.get("text", "")}
    qrels: Qrels = {}
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8") as rows:
        for row in csv.DictReader(rows, delimiter="\t"):
            qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    queries = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            query = json.loads(line)
            if str(query["_id"]) in qrels:
                queries[str(query["_id"])] = query["text"]
    if max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    qrels = {qid: qrels[qid] for qid in queries}
    return BeirData(corpus=corpus, queries=queries, qrels=qrels)


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
class EvalResult:
    retrieval: dict[str, float]
    reranked: dict[str, float] | None
    seconds: dict[str, float]
    pairs_per_s: float | None
    settings: dict = field(default_factory=dict)


def evaluate(
    data: BeirData, retriever: QdrantRetriever, reranker: Reranker | None, top_k: int
) -> tuple[EvalResult, Run, Run | None]:
    """Index, retrieve, optionally rerank, and score both runs; times each stage."""
    doc_ids = list(data.corpus)
    index_seconds = retriever.index(doc_ids, [data.document_text(d) for d in doc_ids], show_progress_bar=True)
    query_ids = list(data.queries)
    start = time.perf_counter()
    hits = retriever.search([data.queries[q] for q in query_ids], top_k)
    retrieve_seconds = time.perf_counter() - start
    retrieval_run = {q: {h.doc_id: h.score for h in row} for q, row in zip(query_ids, hits, strict=True)}
    seconds = {"index": index_seconds, "retrieve": retrieve_seconds}
    reranked_run, pairs_per_s = None, None
    if reranker is not None:
        start = time.perf_counter()
        reranked_run = {}
        for qid, row in tqdm(list(zip(query_ids, hits, strict=True)), desc="Reranking", unit="query"):
            results = reranker.rerank(data.queries[qid], [data.document_text(h.doc_id) for h in row])
            reranked_run[qid] = {row[r.index].doc_id: r.score for r in results}
        seconds["rerank"] = time.perf_counter() - start
        pairs_per_s = sum(len(r) for r in hits) / seconds["rerank"]
    result = EvalResult(
        retrieval=metrics(data.qrels, retrieval_run, top_k),
        reranked=metrics(data.qrels, reranked_run, top_k) if reranked_run is not None else None,
        seconds=seconds,
        pairs_per_s=pairs_per_s,
    )
    return result, retrieval_run, reranked_run


def plot(result: EvalResult, path: Path, title: str) -> None:
    """Bar chart: retrieval vs retrieval + rerank, one group per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.retrieval)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    xs = range(len(names))
    ax.bar([x - width / 2 for x in xs], [result.retrieval[n] for n in names], width, label="retrieval")
    if result.reranked:
        ax.bar([x + width / 2 for x in xs], [result.reranked[n] for n in names], width, label="retrieval + rerank")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_eval_command(args: argparse.Namespace) -> int:
    """``ettin-rerank eval DATA``: prints the table, writes ``eval.json`` and ``eval.png`` to ``--output``."""
    from ettin_rerank.demo import resolve_demo_model

    data = load_beir(args.data, args.split, args.max_queries)
    retriever = QdrantRetriever(args.embedding_model, url=args.qdrant_url, collection="ettin-eval")
    reranker, model_label = None, "none"
    if not args.no_rerank:
        model, untrained = resolve_demo_model(args.model)
        reranker = Reranker(model, device=args.device, dtype=args.dtype, max_length=args.max_length,
                            long_document_strategy=args.long_document_strategy, batch_tokens=args.batch_tokens,
                            show_progress_bar=False)
        model_label = f"{args.model or '17m'}{' (UNTRAINED: random weights)' if untrained else ''}"
    result, _, _ = evaluate(data, retriever, reranker, args.top_k)
    result.settings = {"data": str(args.data), "split": args.split, "queries": len(data.queries),
                       "documents": len(data.corpus), "top_k": args.top_k, "reranker": model_label,
                       "embedding_model": retriever.embedding_model}
    print(f"{Path(args.data).name} {args.split}: {len(data.queries)} queries, {len(data.corpus)} documents, "
          f"top-{args.top_k}, reranker {model_label}")
    print(f"{'metric':<12} {'retrieval':>10} {'+ rerank':>10}")
    for name, value in result.retrieval.items():
        reranked = f"{result.reranked[name]:>10.4f}" if result.reranked else f"{'-':>10}"
        print(f"{name:<12} {value:>10.4f} {reranked}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items())
          + (f"; rerank {result.pairs_per_s:.1f} pairs/s" if result.pairs_per_s else ""))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "eval.json").write_text(json.dumps(result.__dict__, indent=2))
    plot(result, output / "eval.png", f"{Path(args.data).name} ({args.split}), reranker {model_label}")
    print(f"wrote {output / 'eval.json'} and {output / 'eval.png'}")
    return 0
