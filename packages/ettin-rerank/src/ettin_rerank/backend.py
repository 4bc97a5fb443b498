"""What the framework adapters stand on: one place that loads (or reaches) the reranker and ranks texts.

An adapter describes the model it wants with :class:`EngineSpec` (a model loaded in this process) or
:class:`RemoteSpec` (an ettin-rerank server), both checked at construction with nothing loaded; it opens a backend
on first use and calls ``rerank``/``arerank``. Both backends return the same results, so moving a RAG app from
in-process to a shared server is one argument. The adapters only translate between their framework's objects and
texts/results. Imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ettin_rerank.options import ATTENTION_BACKENDS, DTYPE_NAMES, RerankOptions
from ettin_rerank.validation import check_count

if TYPE_CHECKING:
    from ettin_rerank.engine import Reranker
    from ettin_rerank.results import RerankResult

ADAPTER_MAX_TOKENS_PER_DOC = 16_384
"""Adapters read at most this many tokens of a document by default (two 8K windows): a 200,000-character node
costs seconds, not minutes. Set ``max_tokens_per_doc=None`` to read everything."""


@dataclass(frozen=True)
class EngineSpec:
    """Which reranker to load and how to run it; checked when built, loaded only by :meth:`open`."""

    model: str = "17m"
    device: str | None = None
    dtype: str | None = None
    revision: str | None = None
    token: str | bool | None = field(default=None, repr=False)
    cache_folder: str | None = None
    local_files_only: bool = False
    attention: str | None = None
    batch_tokens: int | None = None
    batch_size: int | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, (str, os.PathLike)) or not str(self.model).strip():
            msg = f"model must be an Ettin size (17m ... 1b), a folder or a hub id, but got {self.model!r}"
            raise ValueError(msg)
        if self.dtype is not None and str(self.dtype).removeprefix("torch.") not in DTYPE_NAMES:
            msg = f"dtype must be one of {', '.join(DTYPE_NAMES)} or None, but got {self.dtype!r}"
            raise ValueError(msg)
        if self.attention is not None and self.attention not in ATTENTION_BACKENDS:
            msg = f"attention must be one of {', '.join(ATTENTION_BACKENDS)} or None, but got {self.attention!r}"
            raise ValueError(msg)
        check_count(self.batch_tokens, "batch_tokens")
        check_count(self.batch_size, "batch_size")

    def open(self) -> Backend:
        """Load (or reuse) the shared engine for this spec."""
        from ettin_rerank.shared import shared_reranker

        return SharedBackend(shared_reranker(
            str(self.model), device=self.device, dtype=self.dtype, revision=self.revision, token=self.token,
            cache_folder=self.cache_folder, local_files_only=self.local_files_only, attention=self.attention,
            batch_tokens=self.batch_tokens, batch_size=self.batch_size, trust_remote_code=self.trust_remote_code,
        ))


class Backend:
    """Ranks texts with a target that has the engine's signature: the shared in-process engine, or a
    :class:`~ettin_rerank.client.RemoteReranker`. ``close()`` gives the target back; copying a backend (as
    ``copy.deepcopy`` of an adapter does) takes another reference instead of copying a model."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def rerank(self, query: str, documents: Sequence[str], options: RerankOptions, *, top_k: int | None = None,
               score_threshold: float | None = None, fusion: Fusion | None = None) -> list[RerankResult]:
        if fusion is None:
            return self.target.rerank(query, documents, top_k, score_threshold=score_threshold, **options.as_dict())
        return fusion.rank(self.target.rerank(query, documents, **options.as_dict()), top_k, score_threshold)

    async def arerank(self, query: str, documents: Sequence[str], options: RerankOptions, *,
                      top_k: int | None = None, score_threshold: float | None = None,
                      fusion: Fusion | None = None) -> list[RerankResult]:
        if fusion is None:
            return await self.target.arerank(query, documents, top_k, score_threshold=score_threshold,
                                             **options.as_dict())
        return fusion.rank(await self.target.arerank(query, documents, **options.as_dict()), top_k, score_threshold)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], options: RerankOptions) -> list[float]:
        return self.target.score_pairs(pairs, **options.as_dict())

    def close(self) -> None:
        raise NotImplementedError


class SharedBackend(Backend):
    """A reference to a shared in-process engine; the last ``close()`` frees the model."""

    def __init__(self, engine: Reranker) -> None:
        super().__init__(engine)
        self._closed = False

    @property
    def engine(self) -> Reranker:
        return self.target

    def close(self) -> None:
        if not self._closed:
            from ettin_rerank.shared import release_shared

            self._closed = True
            release_shared(self.target)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedBackend:
        from ettin_rerank.shared import retain_shared

        retain_shared(self.target)
        return SharedBackend(self.target)


async def open_async(spec: EngineSpec | RemoteSpec) -> Backend:
    """:meth:`EngineSpec.open` on a worker thread, so a cold load never blocks the event loop."""
    return await asyncio.to_thread(spec.open)


@dataclass(frozen=True)
class RemoteSpec:
    """An ettin-rerank server to send the work to (``ettin-rerank serve``)."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            msg = f"base_url must be an http(s) URL such as 'http://127.0.0.1:8080', but got {self.base_url!r}"
            raise ValueError(msg)
        if not self.timeout > 0:
            msg = f"timeout must be > 0, but got {self.timeout!r}"
            raise ValueError(msg)

    def open(self) -> RemoteBackend:
        from ettin_rerank.client import RemoteReranker

        return RemoteBackend(RemoteReranker(self.base_url, api_key=self.api_key, timeout=self.timeout), self)


class RemoteBackend(Backend):
    """A client of an ettin-rerank server."""

    def __init__(self, client: Any, spec: RemoteSpec) -> None:
        super().__init__(client)
        self.spec = spec

    def close(self) -> None:
        self.target.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> RemoteBackend:
        return self.spec.open()


@dataclass(frozen=True)
class Fusion:
    """Rank by ``weight * retriever + (1 - weight) * reranker`` (min-max normalised per list) instead of the reranker
    alone; ``retrieval[i]`` is input ``i``'s retriever score. The fused value becomes the reported score."""

    weight: float
    retrieval: Sequence[float]

    @classmethod
    def of(cls, weight: float | None, retrieval: Sequence[float | None]) -> Fusion | None:
        """``None`` without a weight; an error naming the document when a retriever score is missing."""
        if weight is None:
            return None
        missing = [i for i, score in enumerate(retrieval) if score is None]
        if missing:
            msg = (f"fusion_weight needs each document's retrieval score; documents[{missing[0]}] has none "
                   "(set fusion_weight=None, or give the retriever's scores)")
            raise ValueError(msg)
        return cls(weight, [float(score) for score in retrieval])

    def rank(self, results: list[RerankResult], top_k: int | None,
             score_threshold: float | None) -> list[RerankResult]:
        from ettin_rerank.fusion import rank_fused

        return rank_fused(results, self.retrieval, self.weight, top_k=top_k, score_threshold=score_threshold)


def check_fusion_weight(weight: Any) -> float | None:
    """``None`` or a number in [0, 1] (the tuned ``alpha`` of ``ettin-rerank eval --fusion``)."""
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        msg = f"fusion_weight must be a number between 0 and 1 (or None), but got {weight!r}"
        raise ValueError(msg)
    return float(weight)


class BackendUser:
    """What the LlamaIndex and LangChain adapters share: the backend opened on first use (on a worker thread for
    async calls), given back by ``close()``, and the per-call options of their common fields. The class provides
    ``_engine_spec()``, the fields ``max_length``, ``long_document_strategy``, ``window_overlap``,
    ``max_tokens_per_doc``, ``activation``, and a private ``_backend`` slot."""

    _backend: Backend | None

    def _engine_spec(self) -> EngineSpec | RemoteSpec:
        raise NotImplementedError

    def _call_options(self) -> RerankOptions:
        return adapter_options(
            max_length=self.max_length, long_document_strategy=self.long_document_strategy,
            window_overlap=self.window_overlap, max_tokens_per_doc=self.max_tokens_per_doc,
            activation=self.activation,
        )

    def _open(self) -> Backend:
        if self._backend is None:
            self._backend = self._engine_spec().open()
        return self._backend

    async def _aopen(self) -> Backend:
        if self._backend is None:
            self._backend = await open_async(self._engine_spec())
        return self._backend

    def close(self) -> None:
        """Give the shared model back (the last user frees it); the next call loads it again."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None


def adapter_options(**values: Any) -> RerankOptions:
    """The per-call options of an adapter, checked now: like the engine's, except that a query too long for the
    window is cut with a warning (a hard error is right in the engine's strict mode, wrong in a RAG pipeline)."""
    return RerankOptions(truncate_query=True, **values)
