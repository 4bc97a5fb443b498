"""``ettin-rerank eval``'s library: what reranking buys on BEIR-layout data, for one model or several side by side.

Embeds the corpus into Qdrant, retrieves the top-K per query once, reranks the same candidates with each model,
and scores every run with ``ir-measures`` (NDCG@10, Recall@K, MRR@10), with pairs/s and peak memory per model and
each model's paired 95% interval against retrieval alone. Everything that can be checked is checked before the
embedding starts; results are written as soon as each stage is done (each file written beside and renamed), so an
interrupted run keeps what it measured, and a run that fails before measuring anything leaves no folder behind.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
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
from ettin_rerank.evaluation.metrics import Run, metrics, paired_bootstrap, per_query_metrics
from ettin_rerank.evaluation.retrieval import Hit, QdrantRetriever
from ettin_rerank.options import RerankOptions
from ettin_rerank.outputs import check_writable, write_bytes_atomic, write_text_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
    per_query: dict[str, list[float]] = field(repr=False, default_factory=dict)


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
    vs_retrieval: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per metric: ``delta`` against retrieval alone, its paired 95% bootstrap interval (``low``, ``high``) and
    the ``verdict`` (better / same / worse)."""


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
    return Retrieved(list(by_query), list(by_query.values()), run, metrics(data.qrels, run, top_k), seconds,
                     per_query_metrics(data.qrels, run, top_k))


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
    """Rerank every query's candidates with ``reranker``; times it, measures its working memory, and compares it
    with retrieval alone query by query (paired bootstrap)."""
    pairs = sum(len(row) for row in retrieved.hits)
    candidates = _candidates(data, retrieved.query_ids, retrieved.hits)
    with PeakMemory(reranker.device.type) as memory:
        start = time.perf_counter()
        run = rerank_run(reranker, data.queries, candidates, progress=f"Reranking ({label})")
        seconds = time.perf_counter() - start
    return ModelResult(model=model, label=label, metrics=metrics(data.qrels, run, top_k), seconds=seconds,
                       pairs_per_s=pairs / seconds if seconds else 0.0, peak_memory_mib=memory.peak_mib, run=run,
                       vs_retrieval=versus(retrieved.per_query, per_query_metrics(data.qrels, run, top_k)))


def versus(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """``after - before`` for each metric, with its paired 95% bootstrap interval over queries and the verdict."""
    compared = {}
    for name, values in before.items():
        verdict = paired_bootstrap(values, after[name], metric=name)
        compared[name] = {"delta": verdict.delta, "low": verdict.low, "high": verdict.high,
                          "verdict": verdict.label}
    return compared


def short_label(model: str) -> str:
    """What a chart or a table calls ``model``: an Ettin size as given, a folder by its name, a hub id by the part
    after the owner."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve().name
    return model.rsplit("/", 1)[-1]


def short_labels(models: Sequence[str]) -> list[str]:
    """:func:`short_label` of each model, made unique (a folder name shared by two models gets its parent)."""
    labels = [short_label(m) for m in models]
    shared = {label for label, count in Counter(labels).items() if count > 1}
    for i, label in enumerate(labels):
        if label in shared:
            path = Path(models[i]).expanduser().resolve()
            labels[i] = f"{path.parent.name}/{path.name}" if path.exists() else models[i]
    return labels


def _error_bar(value: float, baseline: float, interval: dict[str, Any]) -> tuple[float, float]:
    """How far below and above ``value`` the error bar reaches: to ``baseline`` plus the ``low`` and ``high`` ends of
    the paired interval of the difference (never negative)."""
    return max(0.0, value - (baseline + interval["low"])), max(0.0, baseline + interval["high"] - value)


def bar_chart(retrieval: dict[str, float], models: Sequence[ModelResult], title: str) -> Figure:
    """One group per metric: retrieval alone, then each reranker with its paired 95% interval against retrieval
    (error bar), every bar labelled with its value."""
    from matplotlib.figure import Figure

    names = list(retrieval)
    series = [("retrieval alone", retrieval, None)] + [(f"+ {m.label}", m.metrics, m) for m in models]
    fig = Figure(figsize=(max(7.0, 2 + 1.3 * len(series) * len(names) / 2), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(series)
    for i, (label, values, model) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(names))]
        heights = [values[n] for n in names]
        yerr = None
        if model is not None and model.vs_retrieval:
            extents = [_error_bar(h, retrieval[n], model.vs_retrieval[n]) for h, n in zip(heights, names, strict=True)]
            yerr = [[low for low, _ in extents], [high for _, high in extents]]
        bars = ax.bar(xs, heights, width, label=label, yerr=yerr, capsize=3 if yerr else 0)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2, rotation=90 if len(series) > 3 else 0)
    ax.set_xticks(list(range(len(names))), names)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", ncols=min(len(series), 3))
    if models:
        fig.text(0.01, 0.01, "error bars: 95% paired bootstrap interval of each reranker against retrieval alone",
                 fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def speed_chart(retrieval: dict[str, float], models: Sequence[ModelResult], title: str) -> Figure:
    """NDCG@10 against reranking throughput (pairs/s), one point per model with its paired 95% interval, and
    retrieval alone as the baseline: what each size buys and what it costs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.subplots()
    base = retrieval["NDCG@10"]
    ax.axhline(base, linestyle="--", color="0.4", label=f"retrieval alone ({base:.3f})")
    for model in models:
        value = model.metrics["NDCG@10"]
        interval = model.vs_retrieval.get("NDCG@10")
        yerr = None
        if interval:
            low, high = _error_bar(value, base, interval)
            yerr = [[low], [high]]
        ax.errorbar([model.pairs_per_s], [value], yerr=yerr, fmt="o", capsize=4, label=model.label)
        ax.annotate(f"{model.label}\n{value:.3f}", (model.pairs_per_s, value), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    speeds = [m.pairs_per_s for m in models if m.pairs_per_s > 0]
    if speeds and max(speeds) > 5 * min(speeds):
        ax.set_xscale("log")
    if speeds:
        ax.set_xlim(min(speeds) / 1.5, max(speeds) * 1.5)
    ax.set_xlabel("reranking throughput (pairs/s, this machine)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.text(0.01, 0.01, "error bars: 95% paired bootstrap interval against retrieval alone", fontsize=7,
             color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _save_figure(fig: Figure, path: Path) -> None:
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix.removeprefix("."), dpi=120)
    write_bytes_atomic(path, image.getvalue())


def _check_output_folder(output: Path) -> None:
    """``output`` can be written: a folder, or a path whose nearest existing parent is a writable folder. Nothing
    is created here, so a run that fails before its first result leaves nothing behind."""
    if output.exists() and not output.is_dir():
        msg = f"--output {output} is a file; give a folder (it is created if missing)"
        raise ValueError(msg)
    existing = next(parent for parent in (output, *output.absolute().parents) if parent.exists())
    if not existing.is_dir():
        msg = f"--output {output} cannot be created: {existing} is a file"
        raise ValueError(msg)
    check_writable(output, argument="--output")


def _write(output: Path, record: dict[str, Any]) -> None:
    """``eval.json`` in ``output`` (created on the first write), written beside and renamed."""
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "eval.json", json.dumps(record, indent=2))


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
    strict: bool = False,
    fusion: bool = False,
    fusion_split: str | None = None,
    fusion_queries: int = 100,
) -> list[ModelResult]:
    """Retrieval alone, then retrieval + each of ``models`` (none: retrieval only) on the same candidates; prints
    one table and writes ``eval.json``, ``eval.png`` (metrics) and ``accuracy-vs-speed.png`` (NDCG@10 against
    pairs/s) into the folder ``output``, created when the first result is written.

    ``engine`` gives every model's load arguments (its ``model`` is replaced by each of ``models``); ``fallback``
    lets the default model fall back to an untrained checkpoint when it cannot be found (the CLI without
    ``--model``); ``strict`` refuses qrels that judge queries ``queries.jsonl`` lacks (else they are left out,
    counted); ``fusion`` also reports ``alpha * retriever + (1 - alpha) * reranker`` with alpha tuned on dev
    queries of ``fusion_split``.

    Raises:
        ValueError: ``output`` is a file, lies under one, or cannot be written; checked before anything is read.
    """
    from ettin_rerank.engine.reranker import Reranker

    _check_output_folder(output)
    resolved = [(name, *resolve_demo_model(None if fallback else name)) for name in models]  # fail before the work
    labels = short_labels([name for name, *_ in resolved])
    data = load_beir(data_folder, split, max_queries, allow_duplicates=allow_duplicates, strict=strict)
    dev = (fusion_dev_queries(data_folder, split, fusion_split, fusion_queries, data, strict=strict)
           if fusion and models else None)
    left_out = f"; {data.judged_without_text} judged quer(ies) without text left out" if data.judged_without_text \
        else ""
    print(f"{Path(data_folder).name} {split}: {len(data.queries)} queries, {len(data.corpus)} documents, "
          f"top-{top_k}{left_out}")
    retriever = QdrantRetriever(embedding_model, url=qdrant_url, collection="ettin-eval")
    retrieved = retrieve(data, retriever, top_k)
    dev_hits = retriever.search(list(dev.queries.values()), top_k) if dev else None
    record: dict[str, Any] = {
        "settings": {"data": str(data_folder), "split": split, "queries": len(data.queries),
                     "judged_without_text": data.judged_without_text, "documents": len(data.corpus),
                     "top_k": top_k, "embedding_model": retriever.embedding_model},
        "retrieval": retrieved.metrics, "seconds": retrieved.seconds, "models": [], "complete": False,
    }
    _write(output, record)
    results = []
    for (name, path, untrained), short in zip(resolved, labels, strict=True):
        label = f"{short}{' (UNTRAINED)' if untrained else ''}"
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
    title = f"{Path(data_folder).name} ({split}, {len(data.queries)} queries), top-{top_k}"
    written = [output / "eval.json", output / "eval.png"]
    _save_figure(bar_chart(retrieved.metrics, results, title), written[1])
    if results:
        written.append(output / "accuracy-vs-speed.png")
        _save_figure(speed_chart(retrieved.metrics, results, title), written[2])
    print(f"wrote {', '.join(str(path) for path in written)}")
    return results


def _fusion(data: BeirData, dev: FusionDev, dev_hits: list[list[Hit]], *, retrieved: Retrieved,
            result: ModelResult, reranker: Reranker, top_k: int) -> dict[str, Any]:
    candidates = _candidates(data, list(dev.queries), dev_hits)
    dev_run = rerank_run(reranker, dev.queries, candidates, progress=f"Tuning fusion ({result.label})")
    items = {qid: FusionQuery(dev.qrels[qid], {h.doc_id: h.score for h in hits}, dev_run[qid])
             for qid, hits in zip(dev.queries, dev_hits, strict=True)}
    return fusion_result(data.qrels, items, retrieved.run, result.run, top_k=top_k, dev_split=dev.split,
                         retrieval_ndcg=retrieved.per_query["NDCG@10"])


def _print_table(retrieved: Retrieved, results: list[ModelResult]) -> None:
    names = list(retrieved.metrics)
    width = max([28, *(len(r.label) + 3 for r in results)])
    lines = [f"{'':<{width}}" + "".join(f"{n:>11}" for n in names) + f"{'pairs/s':>10}{'peak MiB':>10}"
             + ("   NDCG@10 vs retrieval (95% CI)" if results else ""),
             f"{'retrieval alone':<{width}}" + "".join(f"{retrieved.metrics[n]:>11.4f}" for n in names)]
    for result in results:
        versus_line = ""
        if result.vs_retrieval:
            ndcg = result.vs_retrieval["NDCG@10"]
            versus_line = (f"   {ndcg['delta']:+.4f} [{ndcg['low']:+.4f}, {ndcg['high']:+.4f}] "
                           f"{ndcg['verdict'].upper()}")
        lines.append(f"{'+ ' + result.label:<{width}}" + "".join(f"{result.metrics[n]:>11.4f}" for n in names)
                     + f"{result.pairs_per_s:>10.1f}{result.peak_memory_mib:>10.0f}{versus_line}")
        if result.fusion:
            fused = result.fusion
            lines.append(f"{'  fused, alpha=' + format(fused['alpha'], '.2f'):<{width}}"
                         + "".join(f"{fused['metrics'][n]:>11.4f}" for n in names)
                         + f"   vs retrieval: {fused['vs_retrieval']} (alpha tuned on {fused['dev_queries']} "
                         f"{fused['dev_split']} queries)")
    seconds = ", ".join(f"{k} {v:.1f}" for k, v in retrieved.seconds.items())
    lines.append(f"seconds: {seconds}" + "".join(f"; {r.label} {r.seconds:.1f}" for r in results))
    print("\n".join(lines))
