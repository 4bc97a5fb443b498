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
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

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

QUERY_SCHEMA = {"type": "string", "minLength": 1, "pattern": "[^\\s\\x00-\\x1f\\x7f-\\x9f]",
                "description": "Must hold a visible character: not only whitespace, control, format (zero-width) or "
                               "unassigned code points."}
DOCUMENT_SCHEMA = {"anyOf": [
    {"type": "string"},
    {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
     "description": "An object with a string `text`; other fields are kept (and returned with the document)."},
]}


def json_integer(value: Any) -> Any:
    """A JSON number with no fraction as an ``int`` (JSON Schema's ``integer`` includes ``3.0``); anything else
    unchanged, for the checks to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGER_OPTIONS = ("max_length", "window_overlap", "max_tokens_per_doc")
WireInt = Annotated[int, BeforeValidator(json_integer)]
Query = Annotated[str, WithJsonSchema(QUERY_SCHEMA)]
Documents = Annotated[list[Any], WithJsonSchema({"type": "array", "items": DOCUMENT_SCHEMA, "minItems": 1})]
Texts = Annotated[list[Any], WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1})]
"""Documents are checked by :func:`document_texts` (messages that name the position); the schema says the same."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    query: Query
    documents: Documents
    model: str | None = None
    top_n: WireInt | None = Field(default=None, description="How many results; null, absent, 0 or less: all.")

    @property
    def top_k(self) -> int | None:
        """``top_n`` for the engine: ``null``, absent, 0 and negative mean every document (vLLM's convention)."""
        return self.top_n if self.top_n is not None and self.top_n > 0 else None


class CohereV2Request(_Request):
    """``POST /v2/rerank``. Older v2 SDKs (5.9-5.11) sent object documents and ``return_documents``."""

    max_tokens_per_doc: Annotated[int, Field(gt=0), BeforeValidator(json_integer)] | None = None
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
    max_chunks_per_doc: WireInt | None = None

    def to_call(self, config: ServerConfig) -> RerankCall:
        """The call, with the server's defaults."""
        return RerankCall(self.query, document_texts(self.documents, self.rank_fields), _options(config),
                          top_k=self.top_k)


class TeiRequest(BaseModel):
    """``POST /rerank`` with ``texts``: Hugging Face text-embeddings-inference."""

    model_config = ConfigDict(extra="ignore", strict=True)

    query: Query
    texts: Texts
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

    model_config = ConfigDict(extra="forbid", strict=True)

    query: Query
    model: str | None = Field(default=None, description="A served model (absent: the first)")
    documents: Annotated[list[str], WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1})]
    top_k: Annotated[Any, WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
                                          "description": "Keep the best top_k (null: every document)."})] = None
    score_threshold: Annotated[Any, WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "null"}],
                                                    "description": "Keep scores >= this (null: every one)."})] = None
    options: Annotated[dict[str, Any], WithJsonSchema({"type": "object", "description": "RerankOptions by name"})] = (
        Field(default_factory=dict))

    def to_call(self, config: ServerConfig) -> RerankCall:
        """The call: the server's ``max_tokens_per_doc``, then every option given."""
        options = {name: json_integer(value) if name in INTEGER_OPTIONS else value
                   for name, value in self.options.items()}
        return RerankCall(self.query, self.documents, {"max_tokens_per_doc": config.max_tokens_per_doc, **options},
                          top_k=json_integer(self.top_k), score_threshold=self.score_threshold)


def document_texts(documents: list[Any], rank_fields: list[str] | None, field: str = "documents",
                   status: int = 400) -> list[str]:
    """The text of each document: a string, or an object's ``text``; with ``rank_fields``, the object's fields
    named there (those it has) as ``key: value`` lines, or its ``text`` if it has none of them.

    Raises:
        ApiError: ``status``, naming the first document that has no text.
    """
    texts = []
    for position, document in enumerate(documents):
        if isinstance(document, str):
            texts.append(document)
        elif isinstance(document, dict) and isinstance(document.get("text"), str):
            named = [f for f in rank_fields or () if f in document]
            texts.append("\n".join(f"{f}: {document[f]}" for f in named) if named else document["text"])
        else:
            got = type(document).__name__ if not isinstance(document, dict) else "an object without a string 'text'"
            msg = f"{field}[{position}] must be a string or an object with a string 'text', got {got}"
            raise ApiError(status, msg)
    return texts


MAX_ECHO_DEPTH = 32
"""Nesting allowed inside a document object that is returned as it was sent."""


def check_echoable(documents: list[Any], field: str = "documents") -> None:
    """Raise a 400 naming the first document object that cannot be written back as JSON: a string that is not
    valid Unicode (a lone surrogate) anywhere in it, or nesting deeper than :data:`MAX_ECHO_DEPTH`."""
    for position, document in enumerate(documents):
        if not isinstance(document, dict):
            continue
        pending: list[tuple[Any, str, int]] = [(document, f"{field}[{position}]", 0)]
        while pending:
            value, where, depth = pending.pop()
            if depth > MAX_ECHO_DEPTH:
                msg = f"{where} is nested more than {MAX_ECHO_DEPTH} levels deep"
                raise ApiError(400, msg)
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as error:
                    msg = f"{where} is not valid Unicode: {error.reason} at character {error.start}"
                    raise ApiError(400, msg) from None
            elif isinstance(value, dict):
                pending.extend((key, f"{where} (a key)", depth + 1) for key in value)
                pending.extend((item, f"{where}.{key}", depth + 1) for key, item in value.items())
            elif isinstance(value, list):
                pending.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


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


# ---------------------------------------------------------------------- errors


class CohereError(BaseModel):
    """The error body of the Cohere and Jina routes (and the native one): Cohere reads ``message``, Jina clients
    ``detail``."""

    message: str
    detail: str


class TeiError(BaseModel):
    """The error body of TEI's route (``router/src/http/types.rs`` ``ErrorResponse``)."""

    error: str
    error_type: str


# ---------------------------------------------------------------------- probes


class RootResponse(BaseModel):
    """``GET /``: where to look."""

    name: Literal["ettin-rerank"] = "ettin-rerank"
    version: str
    docs: str = "/docs"
    redoc: str = "/redoc"
    openapi: str = "/openapi.json"
    info: str = "/info"
    models: str = "/v1/models"
    health: str = "/health"


class ReadyResponse(BaseModel):
    """``GET /ready`` while the model answers."""

    status: Literal["ready"] = "ready"


class ModelInfo(BaseModel):
    """One served model in ``GET /info``: what is loaded, how, its limits, and the memory of its weights."""

    id: str
    model_path: str
    model_dtype: str
    model_device: str
    runtime: str = Field(description="What runs the forward pass: torch or openvino")
    attention: str
    max_input_length: int
    max_batch_tokens: int
    max_batch_pairs: int | None
    max_queued_tokens: int
    max_tokens_per_doc: int | None
    long_document_strategy: str
    calibrated: bool
    memory_bytes: int | None = Field(description="Bytes of the model's weights and buffers")


class InfoResponse(BaseModel):
    """``GET /info``: TEI's field names for the first (default) model (``null`` where this server has no such
    limit), plus the engine's; ``models`` describes every model served."""

    model_id: str
    model_path: str
    model_type: str = "reranker"
    model_dtype: str
    model_device: str
    runtime: str
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
    models: list[ModelInfo]


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models`` (OpenAI's model object, as infinity and vLLM serve it)."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "ettin-rerank"
    root: str
    max_model_len: int | None = None


class ModelList(BaseModel):
    """``GET /v1/models``: the models served, the default first."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
