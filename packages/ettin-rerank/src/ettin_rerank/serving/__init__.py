"""The rerank server: ``create_app(config)`` builds a FastAPI app that Cohere, Jina, TEI and infinity clients talk to
unchanged, batching pairs across requests; ``serve(config)`` runs it with uvicorn. Needs the ``server`` extra:
``pip install "ettin-rerank[server]"``.

Rule: layers run one way, HTTP on top. ``batcher`` (windows of many requests -> shared forward passes, imports
without the extra) and ``service`` (texts in, ranked results out, one per model) know nothing of HTTP; ``schemas``
(wire formats), ``errors`` (one status table, each API family's error shape), ``routes`` (one router per API
family), ``limits`` (body size and deadline, as bytes arrive), ``metrics``, ``openapi`` (the document as this server
answers) and ``app`` (the factory) are the HTTP layer; ``server`` runs it under uvicorn (with ``protocol``'s header
deadline), ``ray`` on Ray Serve. The extra is checked when ``create_app``, ``serve`` or ``ServerConfig`` is first
used from here.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ettin_rerank.errors import MissingExtraError

if TYPE_CHECKING:
    from ettin_rerank.serving.app import create_app
    from ettin_rerank.serving.config import ServerConfig
    from ettin_rerank.serving.server import serve

__all__ = ["ServerConfig", "create_app", "serve"]
_EXPORTS = {"ServerConfig": "ettin_rerank.serving.config", "create_app": "ettin_rerank.serving.app",
            "serve": "ettin_rerank.serving.server"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        msg = f"module 'ettin_rerank.serving' has no attribute {name!r}"
        raise AttributeError(msg)
    missing = [module for module in ("fastapi", "uvicorn", "prometheus_client", "fastapi_offline")
               if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingExtraError(extra="server", missing=missing[0])
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
