"""ettin-rerank: fast reranking with the Ettin cross-encoders (and any Sentence Transformers CrossEncoder)."""

from __future__ import annotations

from ettin_rerank.checkpoints import build_untrained_checkpoint, is_untrained
from ettin_rerank.engine import Reranker
from ettin_rerank.errors import ModelLoadError, ModelNotFoundError
from ettin_rerank.long_documents import STRATEGIES as LONG_DOCUMENT_STRATEGIES
from ettin_rerank.models import ETTIN_SHAPES, EttinShape, ettin_shape
from ettin_rerank.results import RerankResult, TextSpan
from ettin_rerank.shared import shared_reranker

__version__ = "0.1.0"

__all__ = [
    "ETTIN_SHAPES",
    "LONG_DOCUMENT_STRATEGIES",
    "EttinShape",
    "ModelLoadError",
    "ModelNotFoundError",
    "RerankResult",
    "Reranker",
    "TextSpan",
    "__version__",
    "build_untrained_checkpoint",
    "ettin_shape",
    "is_untrained",
    "shared_reranker",
]
