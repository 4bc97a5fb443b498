"""The rerank server: ``create_app(config)`` builds a FastAPI app that Cohere, Jina, TEI and infinity clients talk to
unchanged, batching pairs across requests; ``serve(config)`` runs it with uvicorn. Needs the ``server`` extra:
``pip install "ettin-rerank[server]"``.
"""

from __future__ import annotations

import importlib.util

from ettin_rerank.errors import MissingExtraError

_missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(name) is None]
if _missing:
    raise MissingExtraError(extra="server", missing=_missing[0])

from ettin_rerank.serving.app import create_app  # noqa: E402
from ettin_rerank.serving.config import ServerConfig  # noqa: E402
from ettin_rerank.serving.server import serve  # noqa: E402

__all__ = ["ServerConfig", "create_app", "serve"]
