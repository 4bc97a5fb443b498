"""The engine: load a cross-encoder once, then score (query, document) pairs fast.

Rule: the modules of this package may import PyTorch; nothing outside the engine, serving, batch, training and
evaluation code imports them at module level (the adapters reach the engine through ``ettin_rerank.adapters``,
which never imports torch). One stage a module: ``loading`` (find and load a checkpoint), ``tokenization`` (pairs
-> token ids), ``windows`` (pairs -> windows -> results), ``budget`` (token-budget batches), ``packing``,
``attention`` and ``scorers`` (the forward pass), ``export`` and ``openvino_runtime`` (the forward pass on OpenVINO),
``threads`` (how many CPU threads a pass may use), ``activation`` (logit -> score), ``device`` (device, dtype and
the runtime per CPU kind), ``reranker`` (the :class:`Reranker` that runs them).

``Reranker`` is imported on first use, so ``ettin_rerank.engine.budget`` and friends load without PyTorch's
import cost where they do not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ettin_rerank.errors import CancelledError

if TYPE_CHECKING:
    from ettin_rerank.engine.reranker import Reranker

__all__ = ["CancelledError", "Reranker"]


def __getattr__(name: str) -> Any:
    if name == "Reranker":
        from ettin_rerank.engine.reranker import Reranker

        return Reranker
    msg = f"module 'ettin_rerank.engine' has no attribute {name!r}"
    raise AttributeError(msg)
