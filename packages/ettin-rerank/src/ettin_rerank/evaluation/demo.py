"""Retrieve-then-rerank demo: the bundled corpus in Qdrant, top-K by embedding, reranked by an Ettin model."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ettin_rerank.args import EngineArgs
from ettin_rerank.checkpoints import default_embedding_model, is_untrained, untrained_checkpoint
from ettin_rerank.errors import ModelNotFoundError
from ettin_rerank.evaluation.retrieval import QdrantRetriever
from ettin_rerank.models import ettin_shape
from ettin_rerank.options import RerankOptions

if TYPE_CHECKING:
    from ettin_rerank.engine.reranker import Reranker

DEMO_QUERIES = (
    "How do I reset the battery after it overheats?",
    "What held the stones of Smeaton's lighthouse together?",
    "Why does a cross-encoder only rerank the top results?",
)
UNTRAINED_NOTE = "UNTRAINED model (random weights): the mechanics and timings are real, the order is not"


def demo_corpus() -> list[dict[str, str]]:
    """The corpus shipped with the package: a few dozen short documents and a few long ones."""
    text = resources.files("ettin_rerank").joinpath("data/demo_corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def resolve_demo_model(model: str | None = None) -> tuple[str, bool]:
    """``(model, untrained)``: the named model, or by default ``17m`` if it can be found or downloaded, else a
    locally built untrained checkpoint of the 17m shape (said in one line). A model the user names is never
    replaced: if it cannot be found, ``ModelNotFoundError`` says so and what to do instead."""
    from ettin_rerank.engine.loading import HubOptions, resolve_model_path

    name = model or "17m"
    try:
        path = resolve_model_path(name, HubOptions())
    except ModelNotFoundError as error:
        if model is not None:
            msg = f"{error}; {_without_the_model(model)}"
            raise ModelNotFoundError(msg) from error
        print(f"{str(error)[0].upper()}{str(error)[1:]}. Falling back to an untrained 17m-shaped checkpoint.")
        return str(untrained_checkpoint()), True
    return str(path), is_untrained(path)


def _without_the_model(model: str) -> str:
    """What to do when a named model cannot be had (offline, say): a named model is never swapped silently."""
    try:
        size = ettin_shape(model).size
    except ValueError:
        return "drop --model to use the default 17m (an untrained 17m-shaped checkpoint when it cannot be found)"
    return (f"drop --model to use the default 17m (an untrained 17m-shaped checkpoint when it cannot be found), "
            f"or build an untrained {size}-shaped one (random weights: real timings, meaningless order) with "
            f"`ettin-rerank build-untrained untrained-{size} --size {size}` and pass --model untrained-{size}")


def embedding_label(model: str) -> str:
    return "all-MiniLM-L6-v2 (offline package)" if model == default_embedding_model() else model


def _document_text(document: Mapping[str, str]) -> str:
    """What is embedded and reranked of a demo document: its title, then its text."""
    return f"{document['title']}\n{document['text']}"


def _snippet(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def run_demo(
    engine: EngineArgs | None = None,
    options: RerankOptions | None = None,
    *,
    fallback: bool | None = None,
    queries: Sequence[str] | None = None,
    qdrant_url: str | None = None,
    qdrant_path: str | None = None,
    embedding_model: str | None = None,
    top_k: int = 10,
    show: int = 5,
) -> None:
    """``ettin-rerank demo``: print a before/after table with timings per stage for each query.

    ``engine``: the reranker (default: ``17m``); ``fallback``: whether a model that cannot be found is replaced by
    an untrained 17m-shaped checkpoint (said on screen); default: only when no ``engine`` is given.
    """
    from ettin_rerank.engine.loading import quiet_progress_bars

    with quiet_progress_bars():  # the demo's work is short: no bars at all, -v or not
        _run_demo(engine, options, fallback=fallback, queries=queries, qdrant_url=qdrant_url,
                  qdrant_path=qdrant_path, embedding_model=embedding_model, top_k=top_k, show=show)


def _run_demo(engine: EngineArgs | None, options: RerankOptions | None, *, fallback: bool | None,
              queries: Sequence[str] | None, qdrant_url: str | None, qdrant_path: str | None,
              embedding_model: str | None, top_k: int, show: int) -> None:
    from ettin_rerank.engine.reranker import Reranker

    fallback = engine is None if fallback is None else fallback
    engine = engine or EngineArgs()
    corpus = demo_corpus()
    model, untrained = resolve_demo_model(None if fallback else str(engine.model))
    start = time.perf_counter()
    retriever = QdrantRetriever(embedding_model, url=qdrant_url, path=qdrant_path, collection="ettin-demo")
    load_embedder = time.perf_counter() - start
    index_seconds = retriever.index(
        [d["_id"] for d in corpus], [_document_text(d) for d in corpus],
        [{"title": d["title"], "text": d["text"]} for d in corpus],
    )
    start = time.perf_counter()
    reranker = Reranker.from_args(replace(engine, model=model), options)
    load_reranker = time.perf_counter() - start
    print(f"Corpus: {len(corpus)} documents ({sum(len(d['text'].split()) > 500 for d in corpus)} long), "
          f"embedded with {embedding_label(retriever.embedding_model)} into Qdrant ({retriever.location}) "
          f"in {index_seconds:.1f} s")
    what = "untrained 17m-shaped checkpoint" if fallback and untrained else str(engine.model)
    where = "" if Path(what).expanduser().resolve() == Path(reranker.model_path).resolve() else \
        f" ({reranker.model_path})"
    how = "OpenVINO (converted once, then read from its cache)" if reranker.runtime == "openvino" else \
        f"PyTorch, {reranker.attention} attention"
    print(f"Reranker: {what}{where} on {reranker.device}, {str(reranker.dtype).removeprefix('torch.')}, {how}; "
          f"loaded in {load_reranker:.1f} s (embedder {load_embedder:.1f} s)")
    if untrained:
        print(f"NOTE: {UNTRAINED_NOTE}.")
    print("Columns: new = rank after reranking, was = rank from embedding search (arrow: moved up/down), "
          "score = reranker score (raw logit), read = what the reranker read of the document.")
    queries = list(queries or DEMO_QUERIES)
    _warm_up(queries[0], retriever, reranker, top_k)
    for query in queries:
        _show_query(query, retriever, reranker, top_k, show)


def _warm_up(query: str, retriever: QdrantRetriever, reranker: Reranker, top_k: int) -> None:
    """One untimed pass through both stages: the first pass of a model pays one-off set-up costs (kernels, thread
    pools, allocator), which would otherwise be billed to the first query's timings."""
    [hits] = retriever.search([query], top_k)
    reranker.rerank(query, [_document_text(h.payload) for h in hits])


def _show_query(query: str, retriever: QdrantRetriever, reranker: Reranker, top_k: int, show: int) -> None:
    start = time.perf_counter()
    [hits] = retriever.search([query], top_k)
    retrieve_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    texts = [_document_text(h.payload) for h in hits]
    ranked = reranker.rerank(query, texts, return_documents=True)
    rerank_ms = (time.perf_counter() - start) * 1000
    print(f"\nQuery: {query}")
    print(f"  retrieve top-{len(hits)}: {retrieve_ms:.0f} ms   rerank {len(hits)} documents: {rerank_ms:.0f} ms "
          f"({len(hits) / (rerank_ms / 1000):.0f} docs/s)")
    print(f"  {'new':>3} {'was':>4} {'score':>8}  {'title':<46} read")
    for new_rank, row in enumerate(ranked[:show], 1):
        hit = hits[row.index]
        moved = row.index + 1 - new_rank
        arrow = "↑" if moved > 0 else "↓" if moved < 0 else "="
        span = row.best_window
        read = f"whole, {row.num_tokens} tokens"
        if row.num_windows > 1 or row.truncated:
            read = f"window {span.token_start}-{span.token_end} of {row.num_tokens} tokens ({row.num_windows} windows)"
        title = _snippet(hit.payload["title"], 46)
        print(f"  {new_rank:>3} {row.index + 1:>3}{arrow} {row.score:>8.3f}  {title:<46} {read}")
        print(textwrap.indent(_snippet(row.passage or "", 110), "               "))
