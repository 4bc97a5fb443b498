"""Command line: ``ettin-rerank models | rerank | serve | batch | train | calibrate | demo | eval |
build-untrained``.

Thin: each command parses its arguments, then calls one entry point; errors reach the user as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from ettin_rerank.activation import ACTIVATIONS
from ettin_rerank.errors import MissingExtraError
from ettin_rerank.inputs import FORMATS
from ettin_rerank.long_documents import STRATEGIES
from ettin_rerank.models import ETTIN_SHAPES


def _add_engine_options(parser: argparse.ArgumentParser, default_model: str | None = "17m",
                        repeatable_model: bool = False) -> None:
    if repeatable_model:
        parser.add_argument("--model", action="append", default=None,
                            help="reranker to compare: Ettin size, folder or hub id (repeatable; default: 17m)")
    else:
        parser.add_argument("--model", default=default_model, help="Ettin size (17m ... 1b), folder or hub id")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: automatic)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per window (default: model limit)")
    parser.add_argument("--long-document-strategy", choices=STRATEGIES, default="max")
    parser.add_argument("--window-overlap", type=int, default=None,
                        help="tokens shared by consecutive windows of a long document (default: 128)")
    parser.add_argument("--max-tokens-per-doc", type=int, default=None,
                        help="read at most this many tokens of each document (default: no cap)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="token budget of one forward pass")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The ``Reranker`` arguments given by :func:`_add_engine_options` (model excluded)."""
    return {
        "device": args.device,
        "dtype": args.dtype,
        "max_length": args.max_length,
        "long_document_strategy": args.long_document_strategy,
        "window_overlap": args.window_overlap,
        "max_tokens_per_doc": args.max_tokens_per_doc,
        "batch_tokens": args.batch_tokens,
    }


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
    from ettin_rerank.inputs import read_documents
    from ettin_rerank.validation import check_encodable, check_query, check_top_k

    check_query(args.query)
    check_encodable([args.query], lambda _: "the query")
    check_top_k(args.top_k, "--top-k")
    documents = read_documents(args.documents, args.format)
    reranker = Reranker(args.model, activation=args.activation, **engine_kwargs(args))
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
    from ettin_rerank.checkpoints import build_untrained_checkpoint

    folder = build_untrained_checkpoint(args.folder, tokenizer=args.tokenizer, shape=args.size)
    print(f"untrained Ettin {args.size}-shaped checkpoint (random weights) written to {folder}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ettin_rerank.demo import run_demo

    return run_demo(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from ettin_rerank.evaluation.run import run_eval_command

    return run_eval_command(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from ettin_rerank.serving import ServerConfig, serve
    from ettin_rerank.serving.config import API_KEY_ENV

    config = ServerConfig(
        model=args.model, served_model_name=args.served_model_name, device=args.device, dtype=args.dtype,
        attention=args.attention, max_batch_tokens=args.max_batch_tokens, max_batch_pairs=args.max_batch_pairs,
        max_queued_tokens=args.max_queued_tokens, max_documents=args.max_documents, max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout, merge_requests=not args.no_merge,
        max_tokens_per_doc=args.max_tokens_per_doc, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        strict_model_name=args.strict_model_name, activation="calibrated" if args.calibrated else "sigmoid",
    )
    if not args.ray:
        serve(config, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
        return 0
    from ettin_rerank.serving.ray import run

    autoscale = None
    if args.autoscale:
        low, _, high = args.autoscale.partition(":")
        autoscale = (int(low), int(high or low))
    run(config, host=args.host, port=args.port, address=args.ray_address, replicas=args.replicas,
        autoscale=autoscale, cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica)
    return 0


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    from ettin_rerank.backend import ADAPTER_MAX_TOKENS_PER_DOC

    serve = commands.add_parser("serve", help="rerank server for Cohere / Jina / TEI / infinity clients "
                                "(needs ettin-rerank[server])")
    serve.add_argument("--model", default="17m", help="Ettin size (17m ... 1b), folder or hub id")
    serve.add_argument("--served-model-name", default=None, help="the model name responses report")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set ETTIN_API_KEY)")
    serve.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: automatic)")
    serve.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: automatic)")
    serve.add_argument("--attention", default=None, help="sdpa, flash_attn or varlen (default: fastest)")
    serve.add_argument("--max-batch-tokens", type=int, default=None, help="token budget of one forward pass")
    serve.add_argument("--max-batch-pairs", type=int, default=None, help="windows per forward pass at most")
    serve.add_argument("--max-queued-tokens", type=int, default=None,
                       help="tokens waiting for the model before 429 (default: 8 batches)")
    serve.add_argument("--max-documents", type=int, default=1000, help="documents per request at most")
    serve.add_argument("--max-body-bytes", type=int, default=2_000_000, help="request body size at most")
    serve.add_argument("--request-timeout", type=float, default=60.0, help="seconds a request may wait (then 503)")
    serve.add_argument("--max-tokens-per-doc", type=int, default=ADAPTER_MAX_TOKENS_PER_DOC,
                       help="default cap on tokens read per document")
    serve.add_argument("--no-merge", action="store_true",
                       help="run each request's windows on their own (for comparison; slower)")
    serve.add_argument("--calibrated", action="store_true",
                       help="relevance_score from the model's calibration (ettin-rerank calibrate), not the sigmoid")
    serve.add_argument("--strict-model-name", action="store_true",
                       help="answer 404 to requests naming another model (default: ignore the name)")
    ray = serve.add_argument_group("Ray Serve (needs ettin-rerank[ray])")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve: replicas, autoscaling, several nodes")
    ray.add_argument("--ray-address", default=None, help="an existing cluster ('auto', 'ray://head:10001'); "
                     "default: start Ray here")
    ray.add_argument("--replicas", type=int, default=1, help="replicas (each loads the model once)")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0)
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="fractions share a GPU (0.25: four)")
    serve.set_defaults(func=_cmd_serve)


def _cmd_batch(args: argparse.Namespace) -> int:
    from ettin_rerank.batch import BatchConfig, rerank_file, rerank_with_ray

    config = BatchConfig(model=args.model, query_column=args.query_column, document_column=args.document_column,
                         score_column=args.score_column, rank=args.rank, group_column=args.group_column,
                         activation=args.activation, engine_options=engine_kwargs(args))
    if args.ray_address is None:
        rows = rerank_file(args.input, args.output, config)
    else:
        rows = rerank_with_ray(args.input, args.output, config, address=args.ray_address, actors=args.actors,
                               cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor)
    print(f"scored {rows} pairs into {args.output}")
    return 0


def _add_batch_parser(commands: argparse._SubParsersAction) -> None:
    batch = commands.add_parser("batch", help="score (query, document) rows of Parquet/JSONL into Parquet, here or "
                                "on Ray Data (needs ettin-rerank[batch] or [ray])")
    batch.add_argument("input", help="Parquet file or folder, or JSONL file, with query and document columns")
    batch.add_argument("output", help="Parquet output (a file here; a folder of files on Ray)")
    _add_engine_options(batch)
    batch.add_argument("--query-column", default="query")
    batch.add_argument("--document-column", default="document")
    batch.add_argument("--score-column", default="score")
    batch.add_argument("--rank", action="store_true", help="add 'rank' (1 = best) within each query")
    batch.add_argument("--group-column", default=None, help="column that identifies a query (default: its text)")
    batch.add_argument("--activation", choices=ACTIVATIONS, default="none")
    batch.add_argument("--ray-address", default=None, help="run on Ray Data: 'local' (start Ray here), 'auto', or a "
                       "cluster address; default: in this process, no cluster")
    batch.add_argument("--actors", type=int, default=1, help="Ray actors, each with one copy of the model")
    batch.add_argument("--cpus-per-actor", type=float, default=1.0)
    batch.add_argument("--gpus-per-actor", type=float, default=0.0)
    batch.set_defaults(func=_cmd_batch)


def _cmd_train(args: argparse.Namespace) -> int:
    from ettin_rerank.training.train import TrainConfig, train

    config = TrainConfig(
        data=args.data, base=args.base, output=args.output, objective=args.objective, teacher=args.teacher,
        teacher_cache=args.teacher_cache, retriever=args.retriever, split=args.split, heldout_split=args.eval_split,
        holdout=args.holdout, candidates=args.candidates, negatives=args.negatives,
        random_negatives=args.random_negatives, epochs=args.epochs, max_steps=args.max_steps,
        learning_rate=args.lr, batch_size=args.batch_size, max_length=args.max_length,
        early_stopping=args.early_stopping, precision=args.precision, seed=args.seed, device=args.device,
        overwrite=args.overwrite, dry_run=args.dry_run, layout=args.format,
        engine_options={"device": args.device} if args.device else {},
    )
    report = train(config)
    print(f"objective: {report.objective}; data: " + ", ".join(f"{k} {v}" for k, v in report.counts.items()))
    if config.dry_run:
        print(f"{report.steps} steps at {report.seconds_per_step:.2f} s/step measured on this machine: about "
              f"{report.estimated_seconds / 60:.1f} minutes (plus evaluation before and after)")
        return 0
    names = list(report.before["reranked"])
    print(f"{'held-out queries':<22}" + "".join(f"{n:>11}" for n in names))
    for label, values in (("retrieval alone", report.before["retrieval"]), ("before", report.before["reranked"]),
                          ("after", report.after["reranked"])):
        print(f"{label:<22}" + "".join(f"{values[n]:>11.4f}" for n in names))
    print(f"{report.steps} steps, {report.seconds_per_step:.2f} s/step; {report.verdict}")
    print(f"wrote {report.output} (the base model is untouched)")
    return 0


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="adapt a reranker to your data, measured before and after "
                                "(needs ettin-rerank[train])")
    train.add_argument("data", help="BEIR folder, or JSONL pairs / groups / FlagEmbedding / Cohere layout")
    train.add_argument("--base", default="17m", help="the reranker to start from (never modified)")
    train.add_argument("--output", required=True, help="folder for the trained model (must not exist or be empty)")
    train.add_argument("--format", default="auto", choices=("auto", "pairs", "groups", "flag", "cohere", "beir"))
    train.add_argument("--objective", default="auto", choices=("auto", "distill", "bce", "lambda"))
    train.add_argument("--teacher", default=None, help="model that scores every (query, candidate) to distil from")
    train.add_argument("--teacher-cache", default=None, help="JSONL cache of teacher scores (resumable)")
    train.add_argument("--retriever", default=None, help="embedding model for candidates and mining (BEIR data)")
    train.add_argument("--split", default="train", help="BEIR qrels split to train on")
    train.add_argument("--eval-split", default=None, help="BEIR qrels split held out for before/after evaluation "
                       "(default: a fraction of the training queries)")
    train.add_argument("--holdout", type=float, default=0.1, help="fraction of queries held out (query-disjoint)")
    train.add_argument("--candidates", type=int, default=20, help="retrieved candidates per query (BEIR)")
    train.add_argument("--negatives", type=int, default=5, help="mined hard negatives per positive (BEIR, bce)")
    train.add_argument("--random-negatives", type=int, default=1, help="random negatives per query")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: by size, for fine-tuning)")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--max-length", type=int, default=512, help="tokens per pair while training")
    train.add_argument("--early-stopping", type=int, default=3, help="evaluations without improvement to stop")
    train.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="auto: bf16 autocast on CUDA, fp32 on CPU (bf16 training on CPU is a trap)")
    train.add_argument("--seed", type=int, default=12)
    train.add_argument("--device", default=None)
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    train.add_argument("--dry-run", action="store_true", help="count the data and time two steps, then stop")
    train.set_defaults(func=_cmd_train)

    calibrate = commands.add_parser("calibrate", help="fit logits -> probability of relevance on labelled data; "
                                    "activation='calibrated' then uses it")
    calibrate.add_argument("data", help="JSONL pairs/groups with labels, or a BEIR folder")
    calibrate.add_argument("--model", default="17m")
    calibrate.add_argument("--output", default=None, help="write a calibrated copy here (needed for hub models)")
    calibrate.add_argument("--split", default="train", help="BEIR qrels split to calibrate on")
    calibrate.add_argument("--candidates", type=int, default=20, help="retrieved candidates per query (BEIR)")
    calibrate.add_argument("--holdout", type=float, default=0.3, help="fraction of queries to measure ECE on")
    calibrate.add_argument("--device", default=None)
    calibrate.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from ettin_rerank.training.calibration import calibrate

    report = calibrate(args.model, args.data, output=args.output, holdout=args.holdout, split=args.split,
                       candidates=args.candidates, **({"device": args.device} if args.device else {}))
    print(f"p(relevant) = sigmoid({report.calibration.slope:.4f} * logit + {report.calibration.intercept:.4f}), "
          f"fitted on {report.fit_pairs} pairs")
    print(f"expected calibration error on {report.heldout_pairs} held-out pairs: {report.ece_before:.4f} "
          f"(plain sigmoid) -> {report.ece_after:.4f} (calibrated)")
    print(f"wrote {report.path}; use activation='calibrated'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ettin-rerank", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="list the Ettin sizes").set_defaults(func=_cmd_models)

    rerank = commands.add_parser("rerank", help="rerank documents for a query; JSON lines out, best first")
    rerank.add_argument("query")
    rerank.add_argument("documents", help="JSONL file ('text', optional 'title'), text file (one per line) or -")
    rerank.add_argument("--format", choices=FORMATS, default="auto",
                        help="jsonl or lines; auto: by suffix (.jsonl/.json/.ndjson), else by the first line")
    rerank.add_argument("--top-k", type=int, default=None)
    rerank.add_argument("--activation", choices=ACTIVATIONS, default="none")
    _add_engine_options(rerank)
    rerank.set_defaults(func=_cmd_rerank)

    _add_serve_parser(commands)
    _add_batch_parser(commands)
    _add_train_parser(commands)

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

    evaluate = commands.add_parser("eval", help="NDCG@10 / Recall / MRR of retrieval vs retrieval + rerank, "
                                   "for one or several rerankers on the same candidates")
    _add_engine_options(evaluate, default_model=None, repeatable_model=True)
    evaluate.add_argument("data", help="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--top-k", type=int, default=100, help="documents retrieved, then reranked")
    evaluate.add_argument("--max-queries", type=int, default=None)
    evaluate.add_argument("--embedding-model", default=None)
    evaluate.add_argument("--qdrant-url", default=None)
    evaluate.add_argument("--output", default="eval-results", help="folder for the JSON result and the plot")
    evaluate.add_argument("--no-rerank", action="store_true", help="retrieval only")
    evaluate.add_argument("--allow-duplicates", action="store_true",
                          help="keep the first of duplicate corpus ids (with a warning) instead of failing")
    evaluate.add_argument("--fusion", action="store_true",
                          help="also report alpha * retriever + (1 - alpha) * reranker, alpha tuned on dev queries")
    evaluate.add_argument("--fusion-split", default=None, help="qrels split to tune alpha on (default: dev, "
                          "else train; never the evaluated split)")
    evaluate.add_argument("--fusion-queries", type=int, default=100, help="dev queries used to tune alpha")
    evaluate.set_defaults(func=_cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ettin-rerank`` command: exit 0 on success, 2 with one line on stderr for an error."""
    args = build_parser().parse_args(argv)
    package_logger = logging.getLogger("ettin_rerank")
    if not package_logger.handlers:
        package_logger.addHandler(logging.StreamHandler())
    package_logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("ettin-rerank: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError, MissingExtraError) as error:
        print(f"ettin-rerank: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug of ours: still one line, the traceback on request
        if args.verbose:
            raise
        print(f"ettin-rerank: internal error: {type(error).__name__}: {error} (run with -v for the traceback)",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
