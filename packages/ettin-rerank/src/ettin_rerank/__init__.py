"""ettin-rerank: fast reranking with the Ettin cross-encoders (and any Sentence Transformers CrossEncoder).

Importing the package is cheap: PyTorch and transformers load when a public name that needs them is first used
(``Reranker``, ``shared_reranker``, ...), so frameworks can import the adapters without paying for the model.

Layout, one rule per part: the top-level modules are the public data types and checks (``args``, ``options``,
``results``, ``errors``, ``validation``, ``models``) plus ``checkpoints``, ``inputs`` and ``batch``; ``engine/`` may
import torch; ``adapters/`` never does (the only module the framework integrations import); ``serving/``,
``evaluation/`` and ``training/`` are applications behind their extras; ``cli/`` is the only home of argparse.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ETTIN_SHAPES": "ettin_rerank.models",
    "EttinShape": "ettin_rerank.models",
    "ettin_shape": "ettin_rerank.models",
    "LONG_DOCUMENT_STRATEGIES": "ettin_rerank.options",
    "ACTIVATIONS": "ettin_rerank.options",
    "EngineArgs": "ettin_rerank.args",
    "RerankOptions": "ettin_rerank.options",
    "RerankResult": "ettin_rerank.results",
    "TextSpan": "ettin_rerank.results",
    "METADATA_KEYS": "ettin_rerank.results",
    "ModelLoadError": "ettin_rerank.errors",
    "ModelNotFoundError": "ettin_rerank.errors",
    "Reranker": "ettin_rerank.engine.reranker",
    "build_untrained_checkpoint": "ettin_rerank.checkpoints",
    "is_untrained": "ettin_rerank.checkpoints",
    "shared_reranker": "ettin_rerank.adapters.shared",
    "release_shared": "ettin_rerank.adapters.shared",
}
_RENAMED = {"LONG_DOCUMENT_STRATEGIES": "STRATEGIES"}

__all__ = [
    "ACTIVATIONS",
    "ETTIN_SHAPES",
    "LONG_DOCUMENT_STRATEGIES",
    "METADATA_KEYS",
    "EngineArgs",
    "EttinShape",
    "ModelLoadError",
    "ModelNotFoundError",
    "RerankOptions",
    "RerankResult",
    "Reranker",
    "TextSpan",
    "__version__",
    "build_untrained_checkpoint",
    "ettin_shape",
    "is_untrained",
    "release_shared",
    "shared_reranker",
]

if TYPE_CHECKING:
    from ettin_rerank.adapters.shared import release_shared, shared_reranker
    from ettin_rerank.args import EngineArgs
    from ettin_rerank.checkpoints import build_untrained_checkpoint, is_untrained
    from ettin_rerank.engine.reranker import Reranker
    from ettin_rerank.errors import ModelLoadError, ModelNotFoundError
    from ettin_rerank.models import ETTIN_SHAPES, EttinShape, ettin_shape
    from ettin_rerank.options import ACTIVATIONS, RerankOptions
    from ettin_rerank.options import STRATEGIES as LONG_DOCUMENT_STRATEGIES
    from ettin_rerank.results import METADATA_KEYS, RerankResult, TextSpan


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        msg = f"module 'ettin_rerank' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
