"""What the framework adapters stand on: one place that loads (or reaches) the reranker and ranks texts.

An adapter describes the model it wants with :class:`~ettin_rerank.args.EngineArgs` (a model loaded in this
process) or :class:`RemoteSpec` (an ettin-rerank server), both checked at construction with nothing loaded; it opens
a backend with :func:`open_backend` on first use and calls ``rerank``/``arerank``. Both backends return the same
results, so moving a RAG app from in-process to a shared server is one argument. The adapters only translate
between their framework's objects and texts/results. Imports nothing heavy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ettin_rerank.args import EngineArgs
from ettin_rerank.options import RerankOptions
from ettin_rerank.results import rank_fused

if TYPE_CHECKING:
    from ettin_rerank.engine.reranker import Reranker
    from ettin_rerank.results import RerankResult


API_KEY_ENV = "ETTIN_API_KEY"
"""The environment variable every adapter reads the server's API key from when none is given (the server's
``--api-key`` reads it too)."""


@dataclass(frozen=True)
class RemoteSpec:
    """An ettin-rerank server to send the work to (``ettin-rerank serve``) and the served ``model`` that scores;
    ``timeout`` bounds each call in all. Checked as :class:`~ettin_rerank.adapters.client.RemoteReranker` checks
    them (building one imports httpx)."""

    base_url: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    model: str | None = None

    def __post_init__(self) -> None:
        from ettin_rerank.adapters.client import check_server  # the client's own checks (it imports httpx)

        check_server(self.base_url, self.timeout, self.model)


def open_backend(spec: EngineArgs | RemoteSpec) -> Backend:
    """The shared in-process engine for ``spec`` (loaded the first time), or a client of the server it names."""
    if isinstance(spec, RemoteSpec):
        from ettin_rerank.adapters.client import RemoteReranker

        return RemoteBackend(RemoteReranker(spec.base_url, model=spec.model, api_key=spec.api_key,
                                            timeout=spec.timeout), spec)
    from ettin_rerank.adapters.shared import shared_engine

    return SharedBackend(shared_engine(spec))


async def open_async(spec: EngineArgs | RemoteSpec) -> Backend:
    """:func:`open_backend` on a worker thread, so a cold load never blocks the event loop."""
    return await asyncio.to_thread(open_backend, spec)


class Backend:
    """Ranks texts with a target that has the engine's signature: the shared in-process engine, or a
    :class:`~ettin_rerank.adapters.client.RemoteReranker`. ``close()`` gives the target back; copying a backend (as
    ``copy.deepcopy`` of an adapter does) takes another reference instead of copying a model."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def rerank(self, query: str, documents: Sequence[str], options: RerankOptions, *, top_k: int | None = None,
               score_threshold: float | None = None, fusion: Fusion | None = None) -> list[RerankResult]:
        if fusion is None:
            return self.target.rerank(query, documents, top_k, score_threshold=score_threshold, options=options)
        return fusion.rank(self.target.rerank(query, documents, options=options), top_k, score_threshold)

    async def arerank(self, query: str, documents: Sequence[str], options: RerankOptions, *,
                      top_k: int | None = None, score_threshold: float | None = None,
                      fusion: Fusion | None = None) -> list[RerankResult]:
        if fusion is None:
            return await self.target.arerank(query, documents, top_k, score_threshold=score_threshold,
                                             options=options)
        return fusion.rank(await self.target.arerank(query, documents, options=options), top_k, score_threshold)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], options: RerankOptions) -> list[float]:
        return self.target.score_pairs(pairs, options=options)

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
            from ettin_rerank.adapters.shared import release_shared

            self._closed = True
            release_shared(self.target)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedBackend:
        from ettin_rerank.adapters.shared import retain_shared

        retain_shared(self.target)
        return SharedBackend(self.target)


class RemoteBackend(Backend):
    """A client of an ettin-rerank server."""

    def __init__(self, client: Any, spec: RemoteSpec) -> None:
        super().__init__(client)
        self.spec = spec

    def close(self) -> None:
        self.target.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> Backend:
        return open_backend(self.spec)


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

    def _engine_spec(self) -> EngineArgs | RemoteSpec:
        raise NotImplementedError

    def _call_options(self) -> RerankOptions:
        return adapter_options(
            max_length=self.max_length, long_document_strategy=self.long_document_strategy,
            window_overlap=self.window_overlap, max_tokens_per_doc=self.max_tokens_per_doc,
            activation=self.activation,
        )

    def _open(self) -> Backend:
        if self._backend is None:
            self._backend = open_backend(self._engine_spec())
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
