"""The rerank server as a Ray Serve application, for users who outgrow one machine.

Every replica runs the same FastAPI app as ``ettin-rerank serve`` (all routes, the same wire formats and errors),
loads the engine once, and batches the requests it holds with the same token-budget batcher, so scores equal the
in-process engine's. Serve's own queue is bounded (``max_queued_requests``; its default is unbounded) and answers
429 with ``Retry-After`` when full; each replica's token queue answers 429 too. Fractional GPUs
(``gpus_per_replica=0.25``) let small models share a card.

Python::

    from ray import serve
    from ettin_rerank.serving import ServerConfig
    from ettin_rerank.serving.ray import build_app

    serve.run(build_app(ServerConfig(model="150m"), replicas=4, gpus_per_replica=0.5), route_prefix="/")

``serve run`` / a Serve config YAML (``import_path: ettin_rerank.serving.ray:app_builder``)::

    serve run ettin_rerank.serving.ray:app_builder model=150m replicas=4 gpus_per_replica=0.5

A config file for a cluster (``serve deploy``, ``serve run``, KubeRay's ``RayService.spec.serveConfigV2``) is
written by ``ettin-rerank serve --ray ... --write-config serve.yaml`` (:func:`serve_config`): the same flags, as
``app_builder``'s arguments, checked by Serve's own schema. Secrets are never written: each replica reads
``ETTIN_API_KEY`` from its environment when its configuration has no key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

from ettin_rerank.cluster import init_ray, keep_serve_replica_on_loopback
from ettin_rerank.errors import MissingExtraError
from ettin_rerank.serving.app import create_app
from ettin_rerank.serving.config import API_KEY_ENV, ServerConfig
from ettin_rerank.serving.server import for_host

try:
    from ray import serve
    from ray.serve.config import BackpressureConfig
except ImportError:
    raise MissingExtraError(extra="ray", missing="ray[serve]") from None


logger = logging.getLogger(__name__)
APP_NAME = "ettin-rerank"


@serve.ingress()
class EttinReranker:
    """One replica: the server app built on the replica itself (the model loads in the app's lifespan)."""

    def __init__(self, config: ServerConfig) -> None:
        keep_serve_replica_on_loopback()
        if config.api_key is None and os.environ.get(API_KEY_ENV):  # a config file never holds the key
            config = dataclasses.replace(config, api_key=os.environ[API_KEY_ENV])
        self.config = config

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.config)


def build_app(
    config: ServerConfig | None = None,
    *,
    replicas: int = 1,
    autoscale: tuple[int, int] | None = None,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
    max_ongoing_requests: int = 64,
    max_queued_requests: int = 256,
    retry_after_s: int = 1,
    target_ongoing_requests: float = 16,
) -> serve.Application:
    """A bound Serve application of the rerank server.

    Args:
        config: The server configuration of each replica (model, limits, API key...).
        replicas: Fixed number of replicas (ignored with ``autoscale``).
        autoscale: ``(min, max)`` replicas; Serve scales on ``target_ongoing_requests`` per replica.
        cpus_per_replica, gpus_per_replica: Ray resources of each replica (fractions allowed).
        max_ongoing_requests: Requests a replica holds at once; the ones it holds are merged into shared forward
            passes, so keep it well above 1 (Serve's default of 5 merges little).
        max_queued_requests: Requests waiting in Serve's router; past it, 429 with ``Retry-After``.
        retry_after_s: The ``Retry-After`` of Serve's 429.
        target_ongoing_requests: Autoscaling target per replica.
    """
    config = config or ServerConfig()
    if replicas < 1 or (autoscale is not None and not 1 <= autoscale[0] <= autoscale[1]):
        msg = f"replicas must be >= 1 and autoscale (min, max) with 1 <= min <= max, got {replicas}, {autoscale}"
        raise ValueError(msg)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=retry_after_s),
        "health_check_period_s": 10,
        "health_check_timeout_s": 60,
    }
    if autoscale is None:
        options["num_replicas"] = replicas
    else:
        options["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                         "target_ongoing_requests": target_ongoing_requests}
    deployment = serve.deployment(EttinReranker).options(name="EttinReranker", **options)
    return deployment.bind(config)


_BUILD_OPTIONS = {"replicas": int, "cpus_per_replica": float, "gpus_per_replica": float, "max_ongoing_requests": int,
                  "max_queued_requests": int, "retry_after_s": int, "target_ongoing_requests": float}


def app_builder(args: dict[str, str]) -> serve.Application:
    """For ``serve run ettin_rerank.serving.ray:app_builder key=value ...`` and Serve config files: ``ServerConfig``
    fields (``model=150m``, ``api_key=...``) and :func:`build_app` options (``replicas=4``, ``autoscale=1:8``)."""
    config_fields = {f.name: f.type for f in fields(ServerConfig)}
    config: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in args.items():
        if key == "autoscale":
            low, _, high = str(value).partition(":")
            options["autoscale"] = (int(low), int(high or low))
        elif key in _BUILD_OPTIONS:
            options[key] = _BUILD_OPTIONS[key](value)
        elif key in config_fields:
            config[key] = _parse_field(str(config_fields[key]), value)
        else:
            msg = f"unknown argument {key!r}: use ServerConfig fields or {', '.join([*_BUILD_OPTIONS, 'autoscale'])}"
            raise ValueError(msg)
    return build_app(ServerConfig(**config), **options)


def _parse_field(kind: str, value: Any) -> Any:
    """A ``key=value`` argument (a string from ``serve run``, or a YAML value) as the field's type."""
    if isinstance(value, list):  # a YAML list (several models, allowed hosts)
        return tuple(value)
    if not isinstance(value, str):
        return value
    if value.lower() in ("none", "null"):
        result: Any = None
    elif "tuple" in kind and ("," in value or not kind.startswith("str")):
        result = tuple(item.strip() for item in value.split(",") if item.strip())
    elif kind.startswith("bool"):
        result = value.lower() in ("1", "true", "yes", "on")
    elif kind.startswith(("int", "float")):
        result = (int if kind.startswith("int") else float)(value)
    else:
        result = value
    return result


CONFIG_MARKER = "# Written by `ettin-rerank serve --ray --write-config`"
_SECRETS = ("api_key", "token")
_BUILD_DEFAULTS = {"replicas": 1, "autoscale": None, "cpus_per_replica": 1.0, "gpus_per_replica": 0.0}


def serve_config(config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8080,
                 **build_options: Any) -> dict[str, Any]:
    """The Ray Serve config (``serve deploy``'s file, KubeRay's ``serveConfigV2``) of this app: ``app_builder``
    with every setting that differs from the defaults (never a secret), validated by Serve's own schema."""
    from ray.serve.schema import ServeDeploySchema

    config = for_host(config, host)
    defaults = ServerConfig()
    args: dict[str, Any] = {"model": _yaml_value(config.model)}
    for item in fields(ServerConfig):
        value = getattr(config, item.name)
        if item.name in ("model", *_SECRETS) or value == getattr(defaults, item.name):
            continue
        args[item.name] = _yaml_value(value)
    for name, value in build_options.items():
        if value != _BUILD_DEFAULTS.get(name, object()):
            args[name] = f"{value[0]}:{value[1]}" if name == "autoscale" else value
    document = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": f"{__name__}:app_builder",
                          "runtime_env": {}, "args": args}],
    }
    ServeDeploySchema.model_validate(document)
    return document


def write_config(config: ServerConfig, path: str, **options: Any) -> str:
    """:func:`serve_config` as YAML, written to ``path`` (beside, then renamed; ``"-"``: only returned). A file
    this command did not write is never overwritten."""
    import yaml

    from ettin_rerank import __version__

    text = (f"{CONFIG_MARKER} (ettin-rerank {__version__}, Ray {ray_version()}): for `serve deploy`, `serve run`\n"
            "# and KubeRay's RayService.spec.serveConfigV2. Each replica reads ETTIN_API_KEY from its environment.\n"
            + yaml.safe_dump(serve_config(config, **options), sort_keys=False))
    if path == "-":
        return text
    target = Path(path)
    if target.exists() and not target.read_text(encoding="utf-8", errors="replace").startswith(CONFIG_MARKER):
        msg = f"{target} exists and was not written by --write-config; remove it or choose another path"
        raise FileExistsError(msg)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)
    return text


def ray_version() -> str:
    import ray

    return ray.__version__


def _yaml_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def run(config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8080, address: str | None = None,
        dashboard: bool = False, **build_options: Any) -> None:
    """``ettin-rerank serve --ray``: connect to Ray (or start a local cluster on 127.0.0.1 only, see
    :mod:`ettin_rerank.cluster`), serve the app, block until SIGINT/SIGTERM, then shut the application down (each
    replica finishes what it accepted) and the local cluster with it."""
    import signal

    import ray

    stop = threading.Event()
    started = init_ray(address, dashboard=dashboard)
    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(signum, lambda *_: stop.set())
    if started:
        logger.info("Ray: a local cluster on 127.0.0.1 only (token auth: %s)", os.environ.get("RAY_AUTH_MODE"))
    else:
        logger.info("Ray: the cluster at %s", address or "this process's")
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(build_app(for_host(config, host), **build_options), name=APP_NAME, route_prefix="/")
        except RuntimeError as error:  # Serve's message holds each replica's traceback: keep its last line
            msg = f"the Ray Serve application did not start: {_last_line(error)}"
            raise RuntimeError(msg) from None
        logger.info("listening on http://%s:%d (Ray Serve)", host, port)
        logger.info("ready")
        stop.wait()
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        if started:
            ray.shutdown()


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]
    return (errors or lines or [type(error).__name__])[-1]
