"""``ettin-rerank batch``: score (query, document) rows of Parquet/JSONL into Parquet, here or on Ray Data."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ettin_rerank.cli.common import add_call_options, add_engine_args, engine_args_from, options_from


def register(commands: argparse._SubParsersAction) -> None:
    batch = commands.add_parser("batch", help="score (query, document) rows of Parquet/JSONL into Parquet, here or "
                                "on Ray Data (needs ettin-rerank[batch] or [ray])")
    batch.add_argument("input", help="Parquet file or folder, or JSONL file, with query and document columns")
    batch.add_argument("output", help="Parquet output (a file here; a folder of files on Ray)")
    add_engine_args(batch)
    add_call_options(batch)
    batch.add_argument("--query-column", default="query")
    batch.add_argument("--document-column", default="document")
    batch.add_argument("--score-column", default="score")
    batch.add_argument("--rank", action="store_true", help="add 'rank' (1 = best) within each query")
    batch.add_argument("--group-column", default=None, help="column that identifies a query (default: its text)")
    batch.add_argument("--ray-address", default=None, help="run on Ray Data: 'local' (start Ray here), 'auto', or a "
                       "cluster address; default: in this process, no cluster")
    batch.add_argument("--actors", type=int, default=1, help="Ray actors, each with one copy of the model")
    batch.add_argument("--cpus-per-actor", type=float, default=1.0)
    batch.add_argument("--gpus-per-actor", type=float, default=0.0)
    batch.set_defaults(func=_cmd_batch)


def _cmd_batch(args: argparse.Namespace) -> int:
    from ettin_rerank.batch import BatchConfig, rerank_file, rerank_with_ray

    engine = engine_args_from(args)
    options = options_from(args)
    config = BatchConfig(model=str(engine.model), query_column=args.query_column,
                         document_column=args.document_column, score_column=args.score_column, rank=args.rank,
                         group_column=args.group_column, activation=options.activation,
                         engine_options={k: v for k, v in {**asdict(engine), **asdict(options)}.items()
                                         if k not in ("model", "activation")})
    if args.ray_address is None:
        rows = rerank_file(args.input, args.output, config)
    else:
        rows = rerank_with_ray(args.input, args.output, config, address=args.ray_address, actors=args.actors,
                               cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor)
    print(f"scored {rows} pairs into {args.output}")
    return 0
