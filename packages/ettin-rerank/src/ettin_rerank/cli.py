"""Command line: ``ettin-rerank models | rerank | demo | eval | build-untrained``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ettin_rerank.long_documents import STRATEGIES
from ettin_rerank.models import ETTIN_SHAPES


def _add_engine_options(parser: argparse.ArgumentParser, default_model: str | None = "17m") -> None:
    parser.add_argument("--model", default=default_model, help="Ettin size (17m ... 1b), folder or hub id")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: automatic)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per window (default: model limit)")
    parser.add_argument("--long-document-strategy", choices=STRATEGIES, default="max")
    parser.add_argument("--batch-tokens", type=int, default=None, help="token budget of one forward pass")


def _engine_kwargs(args: argparse.Namespace) -> dict:
    return {
        "device": args.device,
        "dtype": args.dtype,
        "max_length": args.max_length,
        "long_document_strategy": args.long_document_strategy,
        "batch_tokens": args.batch_tokens,
    }


def _read_documents(source: str) -> list[str]:
    """Documents from a JSONL file (``text`` field, ``title`` prepended if present), a text file, or ``-``."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and all(line.lstrip().startswith("{") for line in lines):
        documents = []
        for number, line in enumerate(lines, 1):
            record = json.loads(line)
            if "text" not in record:
                msg = f"{source}: line {number} has no 'text' field"
                raise ValueError(msg)
            title = record.get("title")
            documents.append(f"{title}\n{record['text']}" if title else record["text"])
        return documents
    return lines


def _cmd_models(_: argparse.Namespace) -> int:
    print(f"{'size':>5}  {'hub id':<38} {'layers':>6} {'hidden':>6} {'heads':>5}  max tokens")
    for shape in ETTIN_SHAPES.values():
        print(
            f"{shape.size:>5}  {shape.hub_id:<38} {shape.layers:>6} {shape.hidden:>6} {shape.heads:>5}"
            f"  {shape.max_tokens}"
        )
    return 0


def _cmd_rerank(args: argparse.Namespace) -> int:
    from ettin_rerank.engine import Reranker

    documents = _read_documents(args.documents)
    reranker = Reranker(args.model, activation=args.activation, **_engine_kwargs(args))
    for rank, hit in enumerate(reranker.rerank(args.query, documents, top_k=args.top_k, return_documents=True), 1):
        row = {
            "rank": rank,
            "index": hit.index,
            "score": round(hit.score, 6),
            "num_tokens": hit.num_tokens,
            "num_windows": hit.num_windows,
            "truncated": hit.truncated,
            "text": hit.document,
        }
        print(json.dumps(row, ensure_ascii=False))
    return 0


def _cmd_build_untrained(args: argparse.Namespace) -> int:
    from ettin_rerank.checkpoints import build_untrained_checkpoint

    folder = build_untrained_checkpoint(args.folder, tokenizer=args.tokenizer, shape=args.size)
    print(f"untrained Ettin {args.size}-shaped checkpoint (random weights) written to {folder}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ettin_rerank.demo import run_demo

    return run_demo(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from ettin_rerank.evaluation import run_eval_command

    return run_eval_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ettin-rerank", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="list the Ettin sizes").set_defaults(func=_cmd_models)

    rerank = commands.add_parser("rerank", help="rerank documents for a query; JSON lines out, best first")
    rerank.add_argument("query")
    rerank.add_argument("documents", help="JSONL file ('text', optional 'title'), text file (one per line) or -")
    rerank.add_argument("--top-k", type=int, default=None)
    rerank.add_argument("--activation", choices=("none", "sigmoid"), default="none")
    _add_engine_options(rerank)
    rerank.set_defaults(func=_cmd_rerank)

    build = commands.add_parser("build-untrained", help="write a random-weight Ettin-layout checkpoint")
    build.add_argument("folder")
    build.add_argument("--tokenizer", required=True, help="folder of a fast tokenizer to ship with it")
    build.add_argument("--size", choices=list(ETTIN_SHAPES), default="17m")
    build.set_defaults(func=_cmd_build_untrained)

    demo = commands.add_parser("demo", help="retrieve-then-rerank over Qdrant on the bundled corpus")
    _add_engine_options(demo, default_model=None)
    demo.add_argument("--query", action="append", help="query to run (repeatable; default: three built-in ones)")
    demo.add_argument("--qdrant-url", default=None, help="Qdrant server URL (default: embedded, in memory)")
    demo.add_argument("--qdrant-path", default=None, help="embedded Qdrant on disk at this folder")
    demo.add_argument("--embedding-model", default=None, help="Sentence Transformers embedding model")
    demo.add_argument("--top-k", type=int, default=10, help="documents retrieved, then reranked")
    demo.add_argument("--show", type=int, default=5, help="rows printed per query")
    demo.set_defaults(func=_cmd_demo)

    evaluate = commands.add_parser("eval", help="NDCG@10 / Recall / MRR of retrieval vs retrieval + rerank")
    _add_engine_options(evaluate, default_model=None)
    evaluate.add_argument("data", help="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--top-k", type=int, default=100, help="documents retrieved, then reranked")
    evaluate.add_argument("--max-queries", type=int, default=None)
    evaluate.add_argument("--embedding-model", default=None)
    evaluate.add_argument("--qdrant-url", default=None)
    evaluate.add_argument("--output", default="eval-results", help="folder for the JSON result and the plot")
    evaluate.add_argument("--no-rerank", action="store_true", help="retrieval only")
    evaluate.set_defaults(func=_cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ettin-rerank`` command."""
    args = build_parser().parse_args(argv)
    package_logger = logging.getLogger("ettin_rerank")
    package_logger.addHandler(logging.StreamHandler())
    package_logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        print(f"ettin-rerank: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
