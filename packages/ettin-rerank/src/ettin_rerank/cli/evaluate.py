"""``ettin-rerank demo`` (retrieve-then-rerank over Qdrant) and ``eval`` (what reranking buys on BEIR data)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ettin_rerank.cli.common import add_call_options, add_engine_args, engine_args_from, options_from


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="retrieve-then-rerank over Qdrant on the bundled corpus")
    add_engine_args(demo, model=None)
    add_call_options(demo, activation=False)
    demo.add_argument("--query", action="append", help="query to run (repeatable; default: three built-in ones)")
    demo.add_argument("--qdrant-url", default=None, help="Qdrant server URL (default: embedded, in memory)")
    demo.add_argument("--qdrant-path", default=None, help="embedded Qdrant on disk at this folder")
    demo.add_argument("--embedding-model", default=None, help="Sentence Transformers embedding model")
    demo.add_argument("--top-k", type=int, default=10, help="documents retrieved, then reranked")
    demo.add_argument("--show", type=int, default=5, help="rows printed per query")
    demo.set_defaults(func=_cmd_demo)

    evaluate = commands.add_parser("eval", help="NDCG@10 / Recall / MRR of retrieval vs retrieval + rerank, "
                                   "for one or several rerankers on the same candidates")
    add_engine_args(evaluate, repeatable_model=True)
    add_call_options(evaluate, activation=False)
    evaluate.add_argument("data", help="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    evaluate.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    evaluate.add_argument("--top-k", type=int, default=100, help="documents retrieved, then reranked (default: 100)")
    evaluate.add_argument("--max-queries", type=int, default=None, help="evaluate the first N judged queries")
    evaluate.add_argument("--embedding-model", default=None,
                          help="Sentence Transformers embedding model (default: all-MiniLM-L6-v2)")
    evaluate.add_argument("--qdrant-url", default=None, help="Qdrant server URL (default: embedded, in memory)")
    evaluate.add_argument("--output", default="eval-results", help="folder for eval.json and the two charts "
                          "(default: eval-results; created when the first result is written)")
    evaluate.add_argument("--no-rerank", action="store_true", help="retrieval only")
    evaluate.add_argument("--allow-duplicates", action="store_true",
                          help="keep the first of duplicate corpus ids (with a warning) instead of failing")
    evaluate.add_argument("--strict", action="store_true",
                          help="refuse qrels that judge queries queries.jsonl lacks (default: leave them out, "
                          "with a counted warning, as leaderboard evaluators do)")
    evaluate.add_argument("--fusion", action="store_true",
                          help="also report alpha * retriever + (1 - alpha) * reranker, alpha tuned on dev queries")
    evaluate.add_argument("--fusion-split", default=None, help="qrels split to tune alpha on (default: dev, "
                          "else train; never the evaluated split)")
    evaluate.add_argument("--fusion-queries", type=int, default=100,
                          help="dev queries used to tune alpha (default: 100)")
    evaluate.set_defaults(func=_cmd_eval)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ettin_rerank.evaluation.demo import run_demo

    run_demo(engine_args_from(args), options_from(args), fallback=args.model is None, queries=args.query,
             qdrant_url=args.qdrant_url, qdrant_path=args.qdrant_path, embedding_model=args.embedding_model,
             top_k=args.top_k, show=args.show)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """Checks every argument, then runs :func:`ettin_rerank.evaluation.compare.evaluate`."""
    from ettin_rerank.evaluation.compare import evaluate
    from ettin_rerank.validation import check_count

    check_count(args.top_k, "--top-k", allow_none=False)
    check_count(args.max_queries, "--max-queries")
    check_count(args.fusion_queries, "--fusion-queries", allow_none=False)
    models = [] if args.no_rerank else (args.model or ["17m"])
    evaluate(args.data, Path(args.output), models=models, engine=engine_args_from(args, model=(models or ["17m"])[0]),
             options=options_from(args), fallback=not args.model, split=args.split, top_k=args.top_k,
             max_queries=args.max_queries, embedding_model=args.embedding_model, qdrant_url=args.qdrant_url,
             allow_duplicates=args.allow_duplicates, strict=args.strict, fusion=args.fusion,
             fusion_split=args.fusion_split, fusion_queries=args.fusion_queries)
    return 0
