"""``ettin-rerank batch``: score (query, document) rows of Parquet/JSONL into Parquet, here or on Ray Data."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import asdict

from ettin_rerank.cli.common import add_call_options, add_engine_args, engine_args_from, options_from


def register(commands: argparse._SubParsersAction) -> None:
    batch = commands.add_parser("batch", help="score (query, document) rows of Parquet/JSONL into Parquet, here or "
                                "on Ray Data (needs ettin-rerank[batch] or [ray])")
    batch.add_argument("input", help="Parquet file or folder, or JSONL file, with query and document columns")
    batch.add_argument("output", help="Parquet output (a file here; a folder of files on Ray); never the input")
    add_engine_args(batch)
    add_call_options(batch)
    batch.add_argument("--query-column", default="query")
    batch.add_argument("--document-column", default="document")
    batch.add_argument("--score-column", default="score")
    batch.add_argument("--rank", action="store_true", help="add 'rank' (1 = best) within each query")
    batch.add_argument("--group-column", default=None, help="column that identifies a query (default: its text)")
    batch.add_argument("--overwrite", action="store_true",
                       help="replace an existing OUTPUT (only one that ettin-rerank batch wrote)")
    again = batch.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue OUTPUT.partial, failing if there is nothing to continue (the default already "
                       "continues one of the same input and settings)")
    again.add_argument("--restart", action="store_true", help="discard OUTPUT.partial and score every row again")
    batch.add_argument("--chunk-rows", type=int, default=None, help="rows read, scored and written at a time")
    batch.add_argument("--save-every", type=float, default=None,
                       help="seconds of scoring between two parts saved in OUTPUT.partial (what a kill can lose)")
    batch.add_argument("--ray-address", default=None, help="run on Ray Data: 'local' (start Ray here), 'auto', or a "
                       "cluster address; default: in this process, no cluster")
    batch.add_argument("--actors", type=int, default=1, help="Ray actors, each with one copy of the model")
    batch.add_argument("--cpus-per-actor", type=float, default=1.0)
    batch.add_argument("--gpus-per-actor", type=float, default=0.0)
    batch.set_defaults(func=_cmd_batch)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that the scored rows are saved as on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_stops_cleanly() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_batch(args: argparse.Namespace) -> int:
    from ettin_rerank.batch import CHUNK_ROWS, SAVE_EVERY, BatchConfig, rerank_file, rerank_with_ray

    engine = engine_args_from(args)
    options = options_from(args)
    config = BatchConfig(model=str(engine.model), query_column=args.query_column,
                         document_column=args.document_column, score_column=args.score_column, rank=args.rank,
                         group_column=args.group_column, activation=options.activation,
                         engine_options={k: v for k, v in {**asdict(engine), **asdict(options)}.items()
                                         if k not in ("model", "activation")})
    if args.ray_address is not None and (args.resume or args.restart):
        print("ettin-rerank: error: --resume and --restart are for runs in this process, not on Ray",
              file=sys.stderr)
        return 2
    resume = True if args.resume else False if args.restart else None
    try:
        with _sigterm_stops_cleanly():
            if args.ray_address is None:
                rows = rerank_file(args.input, args.output, config, overwrite=args.overwrite, resume=resume,
                                   chunk_rows=CHUNK_ROWS if args.chunk_rows is None else args.chunk_rows,
                                   save_every=SAVE_EVERY if args.save_every is None else args.save_every)
            else:
                rows = rerank_with_ray(args.input, args.output, config, address=args.ray_address, actors=args.actors,
                                       cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                                       overwrite=args.overwrite)
    except _Terminated:  # what was kept, and how to resume, is logged where it was kept
        print("ettin-rerank: terminated", file=sys.stderr)
        return 143
    print(f"scored {rows} pairs into {args.output}")
    return 0
