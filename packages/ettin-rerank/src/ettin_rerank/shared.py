"""One engine per set of load arguments, shared by every adapter in the process (loaded on first use)."""

from __future__ import annotations

import os
import threading
from typing import Any

from ettin_rerank.engine import Reranker

_ENGINES: dict[tuple, Reranker] = {}
_LOCK = threading.Lock()


def shared_reranker(model: str | os.PathLike[str] = "17m", **load_options: Any) -> Reranker:
    """The process-wide :class:`Reranker` for these arguments, loading it the first time it is asked for."""
    key = (str(model), tuple(sorted((name, repr(value)) for name, value in load_options.items())))
    with _LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = Reranker(model, **load_options)
        return _ENGINES[key]
