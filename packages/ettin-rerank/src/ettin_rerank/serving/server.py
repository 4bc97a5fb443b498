"""``serve(config)``: the app under uvicorn, on loopback unless told otherwise; SIGTERM finishes queued work."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time

from ettin_rerank.serving.app import create_app
from ettin_rerank.serving.config import ServerConfig

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: ServerConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          log_level: str = "info") -> None:
    """Run the server until SIGINT/SIGTERM: then it stops accepting, answers what is queued, and exits."""
    import uvicorn

    if not is_loopback(host) and config.api_key is None:
        logger.warning("Serving on %s without an API key: anyone who can reach this address can use the model "
                       "(set --api-key or ETTIN_API_KEY)", host)
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=int(config.request_timeout_s), access_log=False)


class BackgroundServer:
    """The server on a free loopback port in a background thread, for tests, benchmarks and notebooks.

    Example:
        ::

            with BackgroundServer(ServerConfig(model="17m")) as url:
                cohere.ClientV2(api_key="-", base_url=url).rerank(model="17m", query=q, documents=docs)
    """

    def __init__(self, config: ServerConfig, *, engine: object = None, host: str = DEFAULT_HOST,
                 port: int = 0, startup_timeout_s: float = 120.0) -> None:
        import uvicorn

        self.app = create_app(config, engine=engine)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
            timeout_graceful_shutdown=int(config.request_timeout_s)))
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
