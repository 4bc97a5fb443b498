"""Command line: ``ettin-rerank models | rerank | serve | batch | train | calibrate | demo | eval |
build-untrained``.

Rule: this package is the only home of argparse. Each module registers its commands and turns the parsed
``Namespace`` into typed arguments (:class:`~ettin_rerank.args.EngineArgs`, :class:`~ettin_rerank.options.
RerankOptions`, a config object) for one library function; no module outside ``cli`` imports it. Errors reach the
user as one line; loading a model draws no progress bar unless ``-v``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ettin_rerank.cli import batch, evaluate, rerank, serve, train
from ettin_rerank.errors import MissingExtraError

DESCRIPTION = """\
Rerank documents with the Ettin cross-encoders (17m ... 1b) or any Sentence Transformers CrossEncoder: from the
command line, as a server for Cohere / Jina / TEI clients, in batch over Parquet or JSONL files, and measured on
your own BEIR-layout data. Run "ettin-rerank COMMAND --help" for a command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ettin-rerank", description=DESCRIPTION,
                                     epilog="Errors are one line and exit with status 2; -v adds the library's log "
                                     "(and transformers' loading bars) and shows the traceback of an internal error.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    rerank.register(commands)
    serve.register(commands)
    batch.register(commands)
    train.register(commands)
    evaluate.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ettin-rerank`` command: exit 0 on success, 2 with one line on stderr for an error."""
    args = build_parser().parse_args(argv)
    package_logger = logging.getLogger("ettin_rerank")
    level = package_logger.level
    handler = None if package_logger.handlers else logging.StreamHandler()  # this call's stderr
    if handler is not None:
        package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return _run(args)
    finally:  # leave the process as it was (main() is also called in process, by tests and notebooks)
        if handler is not None:
            package_logger.removeHandler(handler)
        package_logger.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "models":  # loads nothing
            return args.func(args)
        from ettin_rerank.engine.loading import quiet_progress_bars

        with quiet_progress_bars(not args.verbose):
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
