"""Wire formats of the rerank APIs that existing clients speak, both sides (as vLLM's ``protocol.py``).

Every optional request field accepts ``null`` and unknown fields are ignored, as the clients in the wild need
(Cohere's SDK sends explicit nulls; newer SDKs add fields such as ``priority``). Each request turns itself into a
:class:`RerankCall` for the service (``to_call``, as vLLM's ``to_pooling_params``). Responses carry the fields in
the order clients have always got them; an optional field is absent, not ``null``, unless asked for (the routes
drop ``None``). Sources, field by field: Cohere v1/v2 (cohere-python ``raw_base_client.py``, ``v2/raw_client.py``),
Jina (jina-haystack, llama-index jinaai), TEI (text-embeddings-inference ``router/src/http/types.rs``), infinity
(``fastapi_schemas/pymodels.py``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ettin_rerank.results import TextSpan
from ettin_rerank.serving.errors import ApiError

if TYPE_CHECKING:
    from ettin_rerank.results import RerankResult
    from ettin_rerank.serving.config import ServerConfig
    from ettin_rerank.serving.service import Ranked


@dataclass(frozen=True)
class RerankCall:
    """What a request asks of the service: texts to rank for a query, and how."""

    query: str
    texts: list[str]
    options: dict[str, Any]
    top_k: int | None = None
    score_threshold: float | None = None


# ---------------------------------------------------------------------- requests


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str
    documents: list[Any]
    model: str | None = None
    top_n: int | None = None

    @property
    def top_k(self) -> int | None:
        """``top_n`` for the engine: ``null``, absent, 0 and negative mean every document (vLLM's convention)."""
        return self.top_n if self.top_n is not None and self.top_n > 0 else None


class CohereV2Request(_Request):
    """``POST /v2/rerank``. Older v2 SDKs (5.9-5.11) sent object documents and ``return_documents``."""

    max_tokens_per_doc: int | None = Field(default=None, gt=0)
    rank_fields: list[str] | None = None
    return_documents: bool | None = None

    def to_call(self, config: ServerConfig) -> RerankCall:
        """The call, with the server's defaults and this request's ``max_tokens_per_doc``."""
        return RerankCall(self.query, document_texts(self.documents, self.rank_fields),
                          _options(config, max_tokens_per_doc=self.max_tokens_per_doc), top_k=self.top_k)


class CohereV1Request(_Request):
    """``POST /v1/rerank``: Cohere v1 and Jina (same path, same request)."""

    rank_fields: list[str] | None = None
    return_documents: bool | None = None
    max_chunks_per_doc: int | None = None

    def to_call(self, config: ServerConfig) -> RerankCall:
        """The call, with the server's defaults."""
        return RerankCall(self.query, document_texts(self.documents, self.rank_fields), _options(config),
                          top_k=self.top_k)


class TeiRequest(BaseModel):
    """``POST /rerank`` with ``texts``: Hugging Face text-embeddings-inference."""

    model_config = ConfigDict(extra="ignore")

    query: str
    texts: list[Any]
    truncate: bool | None = None
    truncation_direction: Literal["left", "right", "Left", "Right"] | None = None
    raw_scores: bool | None = None
    return_text: bool | None = None

    def to_call(self, config: ServerConfig) -> RerankCall:
        """The call: ``raw_scores`` gives logits, ``truncate`` the truncate strategy; every text is ranked."""
        texts = document_texts(self.texts, None, field="texts", status=422)  # TEI's status for invalid input
        extra = {"long_document_strategy": "truncate"} if self.truncate else {}
        if self.truncation_direction:
            extra["truncation_direction"] = self.truncation_direction.lower()
        return RerankCall(self.query, texts, _options(config, activation="none" if self.raw_scores else None, **extra))


class InfinityRequest(_Request):
    """``POST /rerank`` with ``documents``: infinity (and vLLM's ``/rerank``)."""

    return_documents: bool | None = None
    raw_scores: bool | None = None

    def to_call(self, config: ServerConfig) -> RerankCall:
        """The call: ``raw_scores`` gives logits."""
        return RerankCall(self.query, document_texts(self.documents, None),
                          _options(config, activation="none" if self.raw_scores else None), top_k=self.top_k)


class NativeRequest(BaseModel):
    """``POST /ettin/v1/rerank``: this project's own route, used by the adapters' remote mode. Carries every
    engine option and returns everything the engine knows about each document."""

    model_config = ConfigDict(extra="forbid")

    query: str
    documents: list[str]
    top_k: int | None = None
    score_threshold: float | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    def to_call(self, config: ServerConfig) -> RerankCall:
        """The call: the server's ``max_tokens_per_doc``, then every option given."""
        return RerankCall(self.query, self.documents, {"max_tokens_per_doc": config.max_tokens_per_doc, **self.options},
                          top_k=self.top_k, score_threshold=self.score_threshold)


def document_texts(documents: list[Any], rank_fields: list[str] | None, field: str = "documents",
                   status: int = 400) -> list[str]:
    """The text of each document: a string, or an object's ``text`` (or ``rank_fields`` as ``key: value`` lines).

    Raises:
        ApiError: ``status``, naming the first document that has no text.
    """
    texts = []
    for position, document in enumerate(documents):
        if isinstance(document, str):
            texts.append(document)
        elif isinstance(document, dict) and rank_fields:
            missing = [f for f in rank_fields if f not in document]
            if missing:
                msg = f"{field}[{position}] has no field {missing[0]!r} named in rank_fields"
                raise ApiError(status, msg)
            texts.append("\n".join(f"{f}: {document[f]}" for f in rank_fields))
        elif isinstance(document, dict) and isinstance(document.get("text"), str):
            texts.append(document["text"])
        else:
            got = type(document).__name__ if not isinstance(document, dict) else "an object without a string 'text'"
            msg = f"{field}[{position}] must be a string or an object with a string 'text', got {got}"
            raise ApiError(status, msg)
    return texts


def _options(config: ServerConfig, **given: Any) -> dict[str, Any]:
    """The server's ``activation`` and ``max_tokens_per_doc``, then every option the request gives."""
    options = {"activation": config.activation, "max_tokens_per_doc": config.max_tokens_per_doc}
    options.update({name: value for name, value in given.items() if value is not None})
    return options


# ---------------------------------------------------------------------- Cohere v2, Cohere v1 and Jina


class CohereResult(BaseModel):
    """One ranked document; ``document`` only when asked for (an object as sent, a string as ``{"text"}``)."""

    index: int
    relevance_score: float
    document: dict[str, Any] | None = None

    @classmethod
    def of(cls, result: RerankResult, documents: list[Any], with_document: bool) -> CohereResult:
        """The row of ``result``, with its document from the request's ``documents`` if ``with_document``."""
        if not with_document:
            return cls(index=result.index, relevance_score=result.score)
        original = documents[result.index]
        return cls(index=result.index, relevance_score=result.score,
                   document=original if isinstance(original, dict) else {"text": original})


class BilledUnits(BaseModel):
    search_units: int = 1


class CohereV2ApiVersion(BaseModel):
    version: str = "2"
    is_experimental: bool = False


class CohereV2Tokens(BaseModel):
    input_tokens: int


class CohereV2Meta(BaseModel):
    api_version: CohereV2ApiVersion = Field(default_factory=CohereV2ApiVersion)
    billed_units: BilledUnits = Field(default_factory=BilledUnits)
    tokens: CohereV2Tokens


class CohereV2Response(BaseModel):
    """``POST /v2/rerank``'s answer."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    results: list[CohereResult]
    meta: CohereV2Meta

    @classmethod
    def of(cls, ranked: Ranked, documents: list[Any], *, with_documents: bool) -> CohereV2Response:
        """The answer for ``ranked``, the results of ``documents``."""
        return cls(results=[CohereResult.of(r, documents, with_documents) for r in ranked.results],
                   meta=CohereV2Meta(tokens=CohereV2Tokens(input_tokens=ranked.tokens)))


class CohereV1Usage(BaseModel):
    total_tokens: int
    prompt_tokens: int


class CohereV1ApiVersion(BaseModel):
    version: str = "1"


class CohereV1Meta(BaseModel):
    api_version: CohereV1ApiVersion = Field(default_factory=CohereV1ApiVersion)
    billed_units: BilledUnits = Field(default_factory=BilledUnits)


class CohereV1Response(BaseModel):
    """``POST /v1/rerank``'s answer: Cohere v1's fields, plus Jina's ``model`` and ``usage``."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    model: str
    results: list[CohereResult]
    usage: CohereV1Usage
    meta: CohereV1Meta = Field(default_factory=CohereV1Meta)

    @classmethod
    def of(cls, ranked: Ranked, documents: list[Any], *, model: str, with_documents: bool) -> CohereV1Response:
        """The answer for ``ranked``, the results of ``documents``, from ``model``."""
        return cls(model=model, results=[CohereResult.of(r, documents, with_documents) for r in ranked.results],
                   usage=CohereV1Usage(total_tokens=ranked.tokens, prompt_tokens=ranked.tokens))


# ---------------------------------------------------------------------- TEI and infinity


class TeiRank(BaseModel):
    """One row of TEI's answer, a bare list sorted by score; ``text`` only with ``return_text``."""

    index: int
    score: float
    text: str | None = None

    @classmethod
    def ranks(cls, ranked: Ranked, texts: list[str], *, with_text: bool) -> list[TeiRank]:
        """TEI's answer for ``ranked``, the results of ``texts``."""
        return [cls(index=r.index, score=r.score, text=texts[r.index] if with_text else None) for r in ranked.results]


class InfinityResult(BaseModel):
    relevance_score: float
    index: int
    document: str | None = None


class InfinityUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class InfinityResponse(BaseModel):
    """infinity's answer to ``POST /rerank`` with ``documents``; ``document`` only with ``return_documents``."""

    object: Literal["rerank"] = "rerank"
    results: list[InfinityResult]
    model: str
    id: str = Field(default_factory=lambda: f"ettin-{uuid.uuid4()}")
    usage: InfinityUsage
    created: int = Field(default_factory=lambda: int(time.time()))

    @classmethod
    def of(cls, ranked: Ranked, texts: list[str], *, model: str, with_documents: bool) -> InfinityResponse:
        """The answer for ``ranked``, the results of ``texts``, from ``model``."""
        results = [InfinityResult(relevance_score=r.score, index=r.index,
                                  document=texts[r.index] if with_documents else None) for r in ranked.results]
        return cls(results=results, model=model,
                   usage=InfinityUsage(prompt_tokens=ranked.tokens, total_tokens=ranked.tokens))


# ---------------------------------------------------------------------- native


class NativeResult(BaseModel):
    """Everything the engine knows about one document (:class:`~ettin_rerank.results.RerankResult` less the text)."""

    index: int
    score: float
    logit: float
    num_tokens: int
    num_windows: int
    truncated: bool
    best_window: TextSpan


class NativeUsage(BaseModel):
    total_tokens: int


class NativeResponse(BaseModel):
    """``POST /ettin/v1/rerank``'s answer, read back by :class:`~ettin_rerank.adapters.client.RemoteReranker`."""

    model: str
    usage: NativeUsage
    results: list[NativeResult]

    @classmethod
    def of(cls, ranked: Ranked, *, model: str) -> NativeResponse:
        """The answer for ``ranked``, from ``model``."""
        results = [NativeResult(index=r.index, score=r.score, logit=r.logit, num_tokens=r.num_tokens,
                                num_windows=r.num_windows, truncated=r.truncated, best_window=r.best_window)
                   for r in ranked.results]
        return cls(model=model, usage=NativeUsage(total_tokens=ranked.tokens), results=results)


# ---------------------------------------------------------------------- probes


class ReadyResponse(BaseModel):
    """``GET /ready`` while the model answers."""

    status: Literal["ready"] = "ready"


class InfoResponse(BaseModel):
    """``GET /info``: TEI's field names (``null`` where this server has no such limit), plus the engine's."""

    model_id: str
    model_path: str
    model_type: str = "reranker"
    model_dtype: str
    model_device: str
    attention: str
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None = None
    max_batch_pairs: int | None
    max_queued_tokens: int
    max_client_batch_size: int
    max_concurrent_requests: int | None = None
    max_tokens_per_doc: int | None
    auto_truncate: bool = False
    long_document_strategy: str
    version: str
