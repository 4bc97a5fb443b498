"""What the framework integrations (LlamaIndex, LangChain, Haystack) import, and nothing else of ettin_rerank.

Rule: this package never imports PyTorch (a test checks it), so importing an adapter costs nothing until its first
call loads the model. It holds the adapters' contract: which model (:class:`EngineArgs`) or which server
(:class:`RemoteSpec`), the backend that ranks texts with either (:func:`open_backend`, :class:`BackendUser`), score
fusion, per-call options and results, and the argument checks every adapter shares.
"""

from __future__ import annotations

from ettin_rerank.adapters.backend import (
    API_KEY_ENV,
    Backend,
    BackendUser,
    Fusion,
    RemoteSpec,
    adapter_options,
    check_fusion_weight,
    open_async,
    open_backend,
)
from ettin_rerank.args import EngineArgs
from ettin_rerank.options import ADAPTER_MAX_TOKENS_PER_DOC, Activation, RerankOptions, Strategy
from ettin_rerank.results import METADATA_KEYS, RerankResult
from ettin_rerank.validation import check_count, check_list_of, check_query, check_threshold, check_top_k

__all__ = [
    "ADAPTER_MAX_TOKENS_PER_DOC",
    "API_KEY_ENV",
    "METADATA_KEYS",
    "Activation",
    "Backend",
    "BackendUser",
    "EngineArgs",
    "Fusion",
    "RemoteSpec",
    "RerankOptions",
    "RerankResult",
    "Strategy",
    "adapter_options",
    "check_count",
    "check_fusion_weight",
    "check_list_of",
    "check_query",
    "check_threshold",
    "check_top_k",
    "open_async",
    "open_backend",
]
