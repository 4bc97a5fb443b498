"""ettin-rerank: fast reranking with the Ettin cross-encoders (and any Sentence Transformers CrossEncoder).

Importing the package is cheap: PyTorch and transformers load when a public name that needs them is first used
(``Reranker``, ``shared_reranker``, ...), so frameworks can import the adapters without paying for the model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ETTIN_SHAPES": "ettin_rerank.models",
    "EttinShape": "ettin_rerank.models",
    "ettin_shape": "ettin_rerank.models",
    "LONG_DOCUMENT_STRATEGIES": "ettin_rerank.long_documents",
    "ACTIVATIONS": "ettin_rerank.activation",
    "RerankOptions": "ettin_rerank.options",
    "RerankResult": "ettin_rerank.results",
    "TextSpan": "ettin_rerank.results",
    "METADATA_KEYS": "ettin_rerank.results",
    "ModelLoadError": "ettin_rerank.errors",
    "ModelNotFoundError": "ettin_rerank.errors",
    "Reranker": "ettin_rerank.engine",
    "build_untrained_checkpoint": "ettin_rerank.checkpoints",
    "is_untrained": "ettin_rerank.checkpoints",
    "shared_reranker": "ettin_rerank.shared",
    "release_shared": "ettin_rerank.shared",
}
_RENAMED = {"LONG_DOCUMENT_STRATEGIES": "STRATEGIES"}

__all__ = [
    "ACTIVATIONS",
    "ETTIN_SHAPES",
    "LONG_DOCUMENT_STRATEGIES",
    "METADATA_KEYS",
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
    from ettin_rerank.activation import ACTIVATIONS
    from ettin_rerank.checkpoints import build_untrained_checkpoint, is_untrained
    from ettin_rerank.engine import Reranker
    from ettin_rerank.errors import ModelLoadError, ModelNotFoundError
    from ettin_rerank.long_documents import STRATEGIES as LONG_DOCUMENT_STRATEGIES
    from ettin_rerank.models import ETTIN_SHAPES, EttinShape, ettin_shape
    from ettin_rerank.options import RerankOptions
    from ettin_rerank.results import METADATA_KEYS, RerankResult, TextSpan
    from ettin_rerank.shared import release_shared, shared_reranker


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        msg = f"module 'ettin_rerank' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
