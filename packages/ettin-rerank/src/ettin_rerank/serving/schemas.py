"""Wire formats of the rerank APIs that existing clients speak, request side (pydantic models only).

Every optional field accepts ``null`` and unknown fields are ignored, as the clients in the wild need (Cohere's SDK
sends explicit nulls; newer SDKs add fields such as ``priority``). Sources, field by field: Cohere v1/v2
(cohere-python ``raw_base_client.py``, ``v2/raw_client.py``), Jina (jina-haystack, llama-index jinaai), TEI
(text-embeddings-inference ``router/src/http/types.rs``), infinity (``fastapi_schemas/pymodels.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str
    documents: list[Any]
    model: str | None = None
    top_n: int | None = None


class CohereV2Request(_Request):
    """``POST /v2/rerank``. Older v2 SDKs (5.9-5.11) sent object documents and ``return_documents``."""

    max_tokens_per_doc: int | None = Field(default=None, gt=0)
    rank_fields: list[str] | None = None
    return_documents: bool | None = None


class CohereV1Request(_Request):
    """``POST /v1/rerank``: Cohere v1 and Jina (same path, same request)."""

    rank_fields: list[str] | None = None
    return_documents: bool | None = None
    max_chunks_per_doc: int | None = None


class TeiRequest(BaseModel):
    """``POST /rerank`` with ``texts``: Hugging Face text-embeddings-inference."""

    model_config = ConfigDict(extra="ignore")

    query: str
    texts: list[Any]
    truncate: bool | None = None
    truncation_direction: Literal["left", "right", "Left", "Right"] | None = None
    raw_scores: bool | None = None
    return_text: bool | None = None


class InfinityRequest(_Request):
    """``POST /rerank`` with ``documents``: infinity (and vLLM's ``/rerank``)."""

    return_documents: bool | None = None
    raw_scores: bool | None = None


class NativeRequest(BaseModel):
    """``POST /ettin/v1/rerank``: this project's own route, used by the adapters' remote mode. Carries every
    engine option and returns everything the engine knows about each document."""

    model_config = ConfigDict(extra="forbid")

    query: str
    documents: list[str]
    top_k: int | None = None
    score_threshold: float | None = None
    options: dict[str, Any] = Field(default_factory=dict)
