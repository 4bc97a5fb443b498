"""``serve(config)``: the app under uvicorn, on loopback unless told otherwise; SIGTERM finishes queued work.

The model is loaded and the configuration checked before uvicorn starts (an error is one exception, not a failed
lifespan); then it says where it listens and that it is ready. Connections get a header deadline
(:mod:`~ettin_rerank.serving.protocol`), ``max_connections`` bounds them, and bound to a loopback address the server
only answers loopback ``Host`` names (DNS rebinding) unless ``allowed_hosts`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import threading
import time
from typing import Any

import uvicorn

from ettin_rerank.serving.app import create_app
from ettin_rerank.serving.config import ServerConfig
from ettin_rerank.serving.protocol import protocol_with

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DRAIN_MARGIN_S = 5
"""On SIGTERM, accepted requests get their deadline plus this long to be answered before they are cancelled."""
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def for_host(config: ServerConfig, host: str) -> ServerConfig:
    """``config`` for a server bound to ``host``: without ``allowed_hosts``, a loopback server answers only
    loopback names (a web page cannot reach it through DNS rebinding); any other keeps any ``Host``."""
    if config.allowed_hosts is not None or not is_loopback(host):
        return config
    return dataclasses.replace(config, allowed_hosts=tuple(dict.fromkeys((*LOOPBACK_NAMES, host.lower()))))


def graceful_shutdown_s(config: ServerConfig) -> int:
    """Seconds uvicorn gives accepted requests on SIGTERM: their deadline (rounded up: a sub-second
    ``request_timeout_s`` must not become 0) and a margin for the last passes."""
    return math.ceil(config.request_timeout_s) + DRAIN_MARGIN_S


def uvicorn_config(app: Any, config: ServerConfig, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration every server of this package runs with (deadlines, bounds, shutdown)."""
    return uvicorn.Config(app, host=host, port=port, http=protocol_with(config.header_timeout_s),
                          limit_concurrency=config.max_connections, access_log=False, lifespan="on",
                          timeout_graceful_shutdown=graceful_shutdown_s(config), **options)


class _AnnouncingServer(uvicorn.Server):
    """Says where it listens and that it is ready, once the sockets are bound."""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
                logger.info("listening on %s (API docs: %s/docs)", url, url)
        logger.info("ready")


def serve(config: ServerConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          log_level: str = "info") -> None:
    """Load and check the model, then run the server until SIGINT/SIGTERM: then it stops accepting, answers what
    it accepted, and exits. Progress goes to the ``ettin_rerank.serving`` loggers at INFO."""
    if not is_loopback(host) and config.api_key is None:
        logger.warning("Serving on %s without an API key: anyone who can reach this address can use the model "
                       "(set --api-key or ETTIN_API_KEY)", host)
    config = for_host(config, host)
    app = create_app(config)
    for name, service in app.state.services.items():
        logger.info("loading %s ...", service.config.model)
        service.load()
        engine = service.engine
        logger.info("model %r: %s (%s, %s, runtime %s, attention %s, max input %d tokens)", name, engine.model_path,
                    engine.device, str(engine.dtype).removeprefix("torch."), engine.runtime, engine.attention,
                    engine.model_max_length)
    _AnnouncingServer(uvicorn_config(app, config, host, port, log_level=log_level)).run()


class BackgroundServer:
    """The server on a free loopback port in a background thread, for tests, benchmarks and notebooks.

    Example:
        ::

            with BackgroundServer(ServerConfig(model="17m")) as url:
                cohere.ClientV2(api_key="-", base_url=url).rerank(model="17m", query=q, documents=docs)
    """

    def __init__(self, config: ServerConfig, *, engine: object = None, host: str = DEFAULT_HOST,
                 port: int = 0, startup_timeout_s: float = 120.0) -> None:
        config = for_host(config, host)
        self.app = create_app(config, engine=engine)
        self._server = uvicorn.Server(uvicorn_config(self.app, config, host, port, log_level="warning"))
        self._startup_timeout_s = startup_timeout_s
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> str:
        self._thread = threading.Thread(target=self._server.run, name="ettin-rerank-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                msg = "the rerank server did not start (see the log above)"
                raise RuntimeError(msg)
            time.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def __exit__(self, *exc: object) -> None:
        """Stop as SIGTERM would: stop accepting, finish queued work, shut down."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
