"""Everything a rerank server is built from: the model, its limits, its batching and its access."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ettin_rerank.adapters.backend import API_KEY_ENV
from ettin_rerank.args import EngineArgs
from ettin_rerank.options import ADAPTER_MAX_TOKENS_PER_DOC
from ettin_rerank.validation import check_count

__all__ = ["API_KEY_ENV", "ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    """How to build the server (:func:`ettin_rerank.serving.create_app`).

    Attributes:
        model: Ettin size, folder or hub id; several (a tuple) serve several models, each with its own batcher and
            token budget (the other settings apply to each), a request picking one by its ``model`` field (absent:
            the first).
        served_model_name: What responses call the model (a tuple: one name per model; ``None``: the short name,
            the folder's or hub id's last part).
        device, dtype, attention, runtime, precision, threads, revision, token, cache_folder, local_files_only,
            trust_remote_code: As in :class:`~ettin_rerank.args.EngineArgs` (``None``: automatic);
            :attr:`engine_args` gathers them.
        max_batch_tokens: Token budget of one forward pass (``None``: the engine's default for the device).
        max_batch_pairs: At most this many windows in one forward pass (``None``: only the token budget).
        max_queued_tokens: Tokens waiting for the model, all requests together; past it a request gets 429 with
            ``Retry-After`` (``None``: 64 batches).
        max_tokenizing_chars: Characters of text accepted and not yet tokenized, all requests together; past it a
            request gets 429 before it is tokenized (``None``: 4x ``max_body_bytes``). Tokenizing costs memory
            (tens of bytes per character), so this bounds what requests cost before the token queue sees them.
        max_documents: Documents per request; more is 413 (422 on TEI's route, as TEI does).
        max_body_bytes: Request body size, counted as it arrives (``Content-Length`` or chunked); more is 413.
        request_timeout_s: A request that has waited this long for the model gets 503 with ``Retry-After``
            (a client can ask for less with the ``X-Request-Timeout`` header).
        header_timeout_s: A client must send its request line and headers within this; else 408 and the
            connection is closed (slow clients cannot hold connections).
        body_timeout_s: A client must send the whole body within this (from the first byte of the request); else
            408.
        max_connections: Open connections at most; past it new requests get 503 (uvicorn's
            ``limit_concurrency``).
        allowed_hosts: ``Host`` header values accepted (``"*"``: any; ``"*.example.com"``: a domain and its
            subdomains); another host gets 400 (DNS rebinding). ``None``: any host, unless the server is bound to a
            loopback address, where only loopback names are accepted (``serve``, ``BackgroundServer``).
        access_log: Log one line per request (method, route, status, pairs, tokens, milliseconds) on the
            ``ettin_rerank.serving.access`` logger.
        merge_requests: Merge windows of concurrent requests into shared forward passes (the point of a server;
            ``False`` runs each request's windows on their own, for comparison).
        max_tokens_per_doc: Default cap on the tokens read per document (Cohere's ``max_tokens_per_doc``).
        api_key: Require ``Authorization: Bearer <key>`` (``None``: open; read from ``ETTIN_API_KEY`` by the CLI).
        strict_model_name: Reject requests whose ``model`` is not the served name (or the model as given) with a
            404 instead of ignoring it.
        activation: ``relevance_score`` as the ``sigmoid`` of the logit (default) or ``calibrated`` (the model's
            ``calibration.json``); TEI's ``raw_scores`` still gives the logit.
    """

    model: str | tuple[str, ...] = "17m"
    served_model_name: str | tuple[str, ...] | None = None
    device: str | None = None
    dtype: str | None = None
    attention: str | None = None
    runtime: str | None = None
    precision: str | None = None
    threads: int | None = None
    max_batch_tokens: int | None = None
    max_batch_pairs: int | None = None
    max_queued_tokens: int | None = None
    max_tokenizing_chars: int | None = None
    max_documents: int = 1000
    max_body_bytes: int = 2_000_000
    request_timeout_s: float = 60.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 512
    allowed_hosts: tuple[str, ...] | None = None
    access_log: bool = False
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
        self._check_models()
        for name in ("max_batch_tokens", "max_batch_pairs", "max_queued_tokens", "max_tokenizing_chars",
                     "max_tokens_per_doc"):
            check_count(getattr(self, name), name)
        for name in ("max_documents", "max_body_bytes", "max_connections"):
            check_count(getattr(self, name), name, allow_none=False)
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                msg = f"{name} must be a number of seconds > 0, but got {value!r}"
                raise ValueError(msg)
        if self.allowed_hosts is not None:
            hosts = (self.allowed_hosts,) if isinstance(self.allowed_hosts, str) else tuple(self.allowed_hosts)
            if not hosts or not all(isinstance(host, str) and host.strip() for host in hosts):
                msg = f"allowed_hosts must be host names (or '*'), but got {self.allowed_hosts!r}"
                raise ValueError(msg)
            object.__setattr__(self, "allowed_hosts", tuple(host.strip().lower() for host in hosts))
        if self.activation not in ("sigmoid", "calibrated"):
            msg = f"activation must be 'sigmoid' or 'calibrated', but got {self.activation!r}"
            raise ValueError(msg)
        if self.api_key is not None and not self.api_key.strip():
            msg = "api_key must not be empty (use None for an open server)"
            raise ValueError(msg)
        self.engine_args  # noqa: B018 -- checks the model arguments now, not when the server starts

    def _check_models(self) -> None:
        """One model stays a string; several are a tuple, with as many served names (if any), all different."""
        models = tuple(map(os.fspath, (self.model,) if isinstance(self.model, (str, os.PathLike)) else self.model))
        names = self.served_model_name
        names = None if names is None else (names,) if isinstance(names, str) else tuple(names)
        if not models:
            msg = "model must name at least one model"
            raise ValueError(msg)
        if names is not None and len(names) != len(models):
            msg = (f"served_model_name must give one name per model: {len(models)} model(s), but got "
                   f"{len(names)} name(s) ({', '.join(map(repr, names))})")
            raise ValueError(msg)
        object.__setattr__(self, "model", models[0] if len(models) == 1 else models)
        object.__setattr__(self, "served_model_name", None if names is None else names[0] if len(names) == 1
                           else names)
        served = [config.name for config in self.models]
        repeated = sorted({name for name in served if served.count(name) > 1})
        if repeated:
            msg = (f"each model needs its own served name, but {', '.join(map(repr, repeated))} names more than one "
                   "(set --served-model-name once per --model)")
            raise ValueError(msg)

    @property
    def models(self) -> tuple[ServerConfig, ...]:
        """One configuration per model served (itself, for one model), in order: the first is the default."""
        if isinstance(self.model, str):
            return (self,)
        names = self.served_model_name or (None,) * len(self.model)
        return tuple(dataclasses.replace(self, model=model, served_model_name=name)
                     for model, name in zip(self.model, names, strict=True))

    @property
    def engine_args(self) -> EngineArgs:
        """Which model this server loads (the first, with several), and how (``max_batch_tokens``/
        ``max_batch_pairs`` are the engine's ``batch_tokens``/``batch_size``)."""
        if not isinstance(self.model, str):
            return self.models[0].engine_args
        return EngineArgs(
            model=self.model, device=self.device, dtype=self.dtype, revision=self.revision, token=self.token,
            cache_folder=self.cache_folder, local_files_only=self.local_files_only, attention=self.attention,
            batch_tokens=self.max_batch_tokens, batch_size=self.max_batch_pairs,
            trust_remote_code=self.trust_remote_code, runtime=self.runtime, precision=self.precision,
            threads=self.threads,
        )

    @property
    def tokenizing_chars(self) -> int:
        """:attr:`max_tokenizing_chars`, or its default."""
        return self.max_tokenizing_chars or 4 * self.max_body_bytes

    @property
    def name(self) -> str:
        """The model name responses report (the first model's, with several)."""
        if not isinstance(self.model, str):
            return self.models[0].name
        return self.served_model_name or os.path.basename(os.path.normpath(str(self.model))) or str(self.model)
