"""``ettin-rerank serve``: the rerank server, here or on Ray Serve (or the Ray Serve config file for a cluster).

Every flag also reads an environment variable, ``ETTIN_`` and the flag's name (``--max-queued-tokens`` ->
``ETTIN_MAX_QUEUED_TOKENS``), as TEI reads ``MODEL_ID`` and ``PORT``, so a container or a Kubernetes manifest
configures the server without a shell; the command line wins over the environment. Repeatable flags take a
comma-separated list (``ETTIN_MODEL=17m,150m``), switches ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/
``off``.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from ettin_rerank.cli.common import add_engine_args
from ettin_rerank.options import ADAPTER_MAX_TOKENS_PER_DOC

if TYPE_CHECKING:
    from ettin_rerank.serving import ServerConfig

ENV_PREFIX = "ETTIN_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="rerank server for Cohere / Jina / TEI / infinity clients "
                                "(needs ettin-rerank[server])")
    add_engine_args(serve, batch_aliases=True, repeatable_model=True)
    _action(serve, "model").help = ("reranker to serve: Ettin size (17m ... 1b), folder or hub id; repeat it to serve "
                                    "several (a request picks one by its 'model' field; the first is the default; "
                                    "default: 17m)")
    serve.add_argument("--served-model-name", action="append", default=None,
                       help="the name responses report, once per --model (default: the short name)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set ETTIN_API_KEY)")
    serve.add_argument("--max-queued-tokens", type=int, default=None,
                       help="tokens waiting for the model before 429 (default: 64 batches)")
    serve.add_argument("--max-documents", type=int, default=1000, help="documents per request at most")
    serve.add_argument("--max-body-bytes", type=int, default=2_000_000, help="request body size at most")
    serve.add_argument("--request-timeout", type=float, default=60.0, help="seconds a request may wait (then 503)")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds a client has to send its request headers (then 408 and the connection closes)")
    serve.add_argument("--body-timeout", type=float, default=30.0,
                       help="seconds a client has to send its whole request body (then 408)")
    serve.add_argument("--max-connections", type=int, default=512,
                       help="open connections at most; past it new requests get 503")
    serve.add_argument("--allowed-hosts", default=None, metavar="HOST[,HOST...]",
                       help="Host header values to answer ('*': any, '*.example.com': subdomains); default: "
                       "loopback names when bound to loopback, else any")
    serve.add_argument("--access-log", action="store_true",
                       help="one line per request: method, route, status, pairs, tokens, milliseconds")
    serve.add_argument("--max-tokens-per-doc", type=int, default=ADAPTER_MAX_TOKENS_PER_DOC,
                       help="default cap on tokens read per document")
    serve.add_argument("--no-merge", action="store_true",
                       help="run each request's windows on their own (for comparison; slower)")
    serve.add_argument("--activation", choices=("sigmoid", "calibrated"), default="sigmoid",
                       help="relevance_score as the sigmoid of the logit, or from the model's calibration "
                       "(ettin-rerank calibrate)")
    serve.add_argument("--calibrated", dest="activation", action="store_const", const="calibrated",
                       help="the same as --activation calibrated")
    serve.add_argument("--strict-model-name", action="store_true",
                       help="answer 404 to requests naming another model (default: ignore the name)")
    ray = serve.add_argument_group("Ray Serve (needs ettin-rerank[ray])")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve: replicas, autoscaling, several nodes")
    ray.add_argument("--ray-address", default=None, help="an existing cluster ('auto', 'ray://head:10001'); "
                     "default: start Ray here")
    ray.add_argument("--replicas", type=int, default=1, help="replicas (each loads the model once)")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    ray.add_argument("--ray-dashboard", action="store_true",
                     help="start Ray's dashboard (on 127.0.0.1) with the local cluster")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0)
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="fractions share a GPU (0.25: four)")
    ray.add_argument("--write-config", default=None, metavar="PATH",
                     help="write the Ray Serve config file of these flags (for 'serve deploy', 'serve run' and "
                     "KubeRay's RayService serveConfigV2) to PATH ('-': standard output) and exit")
    serve.set_defaults(func=_cmd_serve)
    _read_environment(serve)


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(action for action in parser._actions if action.dest == dest)


class _FromEnvironment(str):
    """A default that came from an environment variable (its errors name the variable)."""

    variable = ""


def _read_environment(parser: argparse.ArgumentParser) -> None:
    """Each flag's default from ``ETTIN_<FLAG>`` when set (argparse converts a string default with the flag's own
    type, so a bad value is the usual one-line usage error, naming the variable)."""
    errors: list[str] = []
    lists: dict[str, list[object]] = {}  # applied after parsing: argparse would append the command line to them
    for action in parser._actions:
        names = [option for option in action.option_strings if option.startswith("--")]
        if not names or action.dest in ("help", "func"):
            continue
        variable = ENV_PREFIX + names[0].removeprefix("--").replace("-", "_").upper()
        action.help = f"{action.help or ''} [env {variable}]".strip()
        value = os.environ.get(variable)
        if value is None or value == "":
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction)):
            if value.strip().lower() in _TRUE:
                parser.set_defaults(**{action.dest: action.const})
            elif value.strip().lower() not in _FALSE:
                errors.append(f"{variable} must be one of {', '.join(_TRUE + _FALSE)}, but got {value!r}")
        elif isinstance(action, argparse._AppendAction):
            lists[action.dest] = [item.strip() for item in value.split(",") if item.strip()]
        else:
            default = _FromEnvironment(value)
            default.variable = variable
            action.type = _typed(action, variable)
            parser.set_defaults(**{action.dest: default})
    parser.set_defaults(environment_errors=errors, environment_lists=lists)


def _typed(action: argparse.Action, variable: str) -> object:
    kind = action.type or str
    choices = action.choices

    def convert(value: str) -> object:
        try:
            converted = kind(value)
        except (TypeError, ValueError):
            if isinstance(value, _FromEnvironment):
                msg = f"invalid value {value!r} from {variable}"
                raise argparse.ArgumentTypeError(msg) from None
            raise
        if choices is not None and converted not in choices and isinstance(value, _FromEnvironment):
            msg = f"invalid choice {value!r} from {variable} (choose from {', '.join(map(str, choices))})"
            raise argparse.ArgumentTypeError(msg)
        return converted

    convert.__name__ = getattr(kind, "__name__", "value")
    return convert


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The :class:`~ettin_rerank.serving.ServerConfig` of parsed ``serve`` arguments (environment lists applied)."""
    from ettin_rerank.serving import ServerConfig
    from ettin_rerank.serving.config import API_KEY_ENV

    if args.environment_errors:
        raise ValueError(args.environment_errors[0])
    for dest, values in args.environment_lists.items():
        if getattr(args, dest) is None:
            setattr(args, dest, values)
    return ServerConfig(
        model=tuple(args.model or ["17m"]), revision=args.revision,
        served_model_name=tuple(args.served_model_name) if args.served_model_name else None, device=args.device,
        dtype=args.dtype, attention=args.attention, runtime=args.runtime, precision=args.precision,
        threads=args.threads, max_batch_tokens=args.batch_tokens,
        max_batch_pairs=args.batch_size, max_queued_tokens=args.max_queued_tokens, max_documents=args.max_documents,
        max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout, merge_requests=not args.no_merge,
        max_tokens_per_doc=args.max_tokens_per_doc, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        strict_model_name=args.strict_model_name, activation=args.activation,
        header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout, max_connections=args.max_connections,
        allowed_hosts=tuple(h for h in args.allowed_hosts.split(",") if h.strip()) if args.allowed_hosts else None,
        access_log=args.access_log,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    config = server_config(args)
    if args.write_config and not args.ray:
        msg = "--write-config writes a Ray Serve config: add --ray"
        raise ValueError(msg)
    from ettin_rerank.serving import serve

    logging.getLogger("ettin_rerank.serving").setLevel(logging.INFO)  # where it listens, the model, "ready"
    if not args.ray:
        serve(config, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
        return 0
    from ettin_rerank.serving.ray import run, write_config

    autoscale = None
    if args.autoscale:
        low, _, high = args.autoscale.partition(":")
        autoscale = (int(low), int(high or low))
    options = {"replicas": args.replicas, "autoscale": autoscale, "cpus_per_replica": args.cpus_per_replica,
               "gpus_per_replica": args.gpus_per_replica}
    if args.write_config:
        text = write_config(config, args.write_config, host=args.host, port=args.port, **options)
        if args.write_config == "-":
            print(text, end="")
        else:
            print(f"wrote {args.write_config}: serve deploy {args.write_config} (or serve run), or paste it into a "
                  "RayService's serveConfigV2")
        return 0
    run(config, host=args.host, port=args.port, address=args.ray_address, dashboard=args.ray_dashboard, **options)
    return 0
