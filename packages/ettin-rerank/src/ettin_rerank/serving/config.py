"""Everything a rerank server is built from: the model, its limits, its batching and its access."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ettin_rerank.args import EngineArgs
from ettin_rerank.options import ADAPTER_MAX_TOKENS_PER_DOC
from ettin_rerank.validation import check_count

API_KEY_ENV = "ETTIN_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    """How to build the server (:func:`ettin_rerank.serving.create_app`).

    Attributes:
        model: Ettin size, folder or hub id; ``served_model_name`` is what responses call it.
        device, dtype, attention, revision, token, cache_folder, local_files_only, trust_remote_code: As in
            :class:`~ettin_rerank.args.EngineArgs` (``None``: automatic); :attr:`engine_args` gathers them.
        max_batch_tokens: Token budget of one forward pass (``None``: the engine's default for the device).
        max_batch_pairs: At most this many windows in one forward pass (``None``: only the token budget).
        max_queued_tokens: Tokens waiting for the model, all requests together; past it a request gets 429 with
            ``Retry-After`` (``None``: 8x the batch budget).
        max_documents: Documents per request; more is 413 (422 on TEI's route, as TEI does).
        max_body_bytes: Request body size; more is 413.
        request_timeout_s: A request that has waited this long for the model gets 503 with ``Retry-After``
            (a client can ask for less with the ``X-Request-Timeout`` header).
        merge_requests: Merge windows of concurrent requests into shared forward passes (the point of a server;
            ``False`` runs each request's windows on their own, for comparison).
        max_tokens_per_doc: Default cap on the tokens read per document (Cohere's ``max_tokens_per_doc``).
        api_key: Require ``Authorization: Bearer <key>`` (``None``: open; read from ``ETTIN_API_KEY`` by the CLI).
        strict_model_name: Reject requests whose ``model`` is not the served name (404) instead of ignoring it.
        activation: ``relevance_score`` as the ``sigmoid`` of the logit (default) or ``calibrated`` (the model's
            ``calibration.json``); TEI's ``raw_scores`` still gives the logit.
    """

    model: str = "17m"
    served_model_name: str | None = None
    device: str | None = None
    dtype: str | None = None
    attention: str | None = None
    max_batch_tokens: int | None = None
    max_batch_pairs: int | None = None
    max_queued_tokens: int | None = None
    max_documents: int = 1000
    max_body_bytes: int = 2_000_000
    request_timeout_s: float = 60.0
    merge_requests: bool = True
    max_tokens_per_doc: int | None = ADAPTER_MAX_TOKENS_PER_DOC
    api_key: str | None = field(default=None, repr=False)
    strict_model_name: bool = False
    local_files_only: bool = False
    activation: str = "sigmoid"
    revision: str | None = None
    token: str | None = field(default=None, repr=False)
    cache_folder: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_pairs", "max_queued_tokens", "max_tokens_per_doc"):
            check_count(getattr(self, name), name)
        check_count(self.max_documents, "max_documents", allow_none=False)
        check_count(self.max_body_bytes, "max_body_bytes", allow_none=False)
        if not self.request_timeout_s > 0:
            msg = f"request_timeout_s must be > 0, but got {self.request_timeout_s}"
            raise ValueError(msg)
        if self.activation not in ("sigmoid", "calibrated"):
            msg = f"activation must be 'sigmoid' or 'calibrated', but got {self.activation!r}"
            raise ValueError(msg)
        if self.api_key is not None and not self.api_key.strip():
            msg = "api_key must not be empty (use None for an open server)"
            raise ValueError(msg)
        self.engine_args  # noqa: B018 -- checks the model arguments now, not when the server starts

    @property
    def engine_args(self) -> EngineArgs:
        """Which model this server loads, and how (``max_batch_tokens``/``max_batch_pairs`` are the engine's
        ``batch_tokens``/``batch_size``)."""
        return EngineArgs(
            model=self.model, device=self.device, dtype=self.dtype, revision=self.revision, token=self.token,
            cache_folder=self.cache_folder, local_files_only=self.local_files_only, attention=self.attention,
            batch_tokens=self.max_batch_tokens, batch_size=self.max_batch_pairs,
            trust_remote_code=self.trust_remote_code,
        )

    @property
    def name(self) -> str:
        """The model name responses report."""
        return self.served_model_name or os.path.basename(os.path.normpath(str(self.model))) or str(self.model)
