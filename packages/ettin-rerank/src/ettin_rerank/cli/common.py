"""The flags every command that loads a model shares, and the typed objects they become."""

from __future__ import annotations

import argparse

from ettin_rerank.args import PRECISIONS, RUNTIMES, EngineArgs
from ettin_rerank.options import ACTIVATIONS, STRATEGIES, RerankOptions


def add_engine_args(parser: argparse.ArgumentParser, *, model: str | None = "17m", repeatable_model: bool = False,
                    batch_aliases: bool = False) -> None:
    """``--model`` and how to load and run it (the fields of :class:`~ettin_rerank.args.EngineArgs`).

    ``batch_aliases`` adds the names ``serve`` took before (``--max-batch-tokens``, ``--max-batch-pairs``).
    """
    if repeatable_model:
        parser.add_argument("--model", action="append", default=None,
                            help="reranker to compare: Ettin size, folder or hub id (repeatable; default: 17m)")
    else:
        parser.add_argument("--model", default=model, help="Ettin size (17m ... 1b), folder or hub id"
                            + (f" (default: {model})" if model else ""))
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of a hub model")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: CUDA if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: automatic)")
    parser.add_argument("--attention", default=None, help="sdpa, flash_attn or varlen (default: fastest)")
    tokens = ["--batch-tokens", "--max-batch-tokens"] if batch_aliases else ["--batch-tokens"]
    pairs = ["--batch-size", "--max-batch-pairs"] if batch_aliases else ["--batch-size"]
    parser.add_argument(*tokens, dest="batch_tokens", type=int, default=None,
                        help="token budget of one forward pass (default: 2,048 on CPU, 65,536 on CUDA)")
    parser.add_argument(*pairs, dest="batch_size", type=int, default=None,
                        help="windows per forward pass at most (default: only the token budget limits it)")
    parser.add_argument("--runtime", choices=RUNTIMES, default=None,
                        help="torch or openvino (CPU; default: the one measured fastest on this CPU kind)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="int8: quantized with NNCF on OpenVINO, an explicit opt-in (not exact)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of a forward pass (default: the usable CPUs, fewer while others are busy)")


def add_call_options(parser: argparse.ArgumentParser, *, activation: bool = True) -> None:
    """How each (query, document) pair is read and scored (the fields of
    :class:`~ettin_rerank.options.RerankOptions`)."""
    parser.add_argument("--max-length", type=int, default=None, help="tokens per window (default: model limit)")
    parser.add_argument("--long-document-strategy", choices=STRATEGIES, default="max")
    parser.add_argument("--window-overlap", type=int, default=None,
                        help="tokens shared by consecutive windows of a long document (default: 128)")
    parser.add_argument("--max-tokens-per-doc", type=int, default=None,
                        help="read at most this many tokens of each document (default: no cap)")
    if activation:
        parser.add_argument("--activation", choices=ACTIVATIONS, default="none")


def engine_args_from(args: argparse.Namespace, model: str | None = None) -> EngineArgs:
    """The :class:`~ettin_rerank.args.EngineArgs` given by :func:`add_engine_args` (``model`` overrides
    ``--model``)."""
    return EngineArgs(model=model or args.model or "17m", revision=args.revision, device=args.device,
                      dtype=args.dtype, attention=args.attention, batch_tokens=args.batch_tokens,
                      batch_size=args.batch_size, runtime=args.runtime, precision=args.precision, threads=args.threads)


def options_from(args: argparse.Namespace) -> RerankOptions:
    """The :class:`~ettin_rerank.options.RerankOptions` given by :func:`add_call_options`."""
    return RerankOptions().merged({
        "max_length": args.max_length, "long_document_strategy": args.long_document_strategy,
        "window_overlap": args.window_overlap, "max_tokens_per_doc": args.max_tokens_per_doc,
        "activation": getattr(args, "activation", None),
    })
