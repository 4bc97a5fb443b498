"""The rerank service behind every route: one engine, one batcher, texts in, ranked results out. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ettin_rerank.results import RerankResult, rank
from ettin_rerank.serving.batcher import Batcher
from ettin_rerank.serving.config import ServerConfig
from ettin_rerank.serving.metrics import ServerMetrics
from ettin_rerank.validation import check_query

if TYPE_CHECKING:
    from ettin_rerank.engine.reranker import Reranker

logger = logging.getLogger(__name__)

QUEUE_BATCHES = 64
"""Without ``max_queued_tokens``, the queue holds this many full batches (131,072 tokens on CPU: about 300 passages
of 400 tokens; 4M on CUDA); a request that waits longer than its deadline still gets 503."""


@dataclass(frozen=True)
class Ranked:
    """Results best first, and the tokens the model read for them (for ``usage``)."""

    results: list[RerankResult]
    tokens: int


class RerankService:
    """Loads (or takes) the engine, runs the batcher, and ranks texts for the routes.

    Args:
        config: The server configuration.
        engine: An engine already loaded (tests, Ray replicas); ``None`` loads one from ``config`` in :meth:`start`.
    """

    def __init__(self, config: ServerConfig, engine: Reranker | None = None) -> None:
        self.config = config
        self.engine = engine
        self._owns_engine = engine is None
        self.metrics = ServerMetrics()
        self.batcher: Batcher | None = None
        self.ready = False

    def start(self) -> None:
        """Load the model, start the worker, and warm up with one tiny pass (blocking: call it off the loop)."""
        from ettin_rerank.engine.reranker import Reranker

        config = self.config
        if self.engine is None:
            self.engine = Reranker.from_args(config.engine_args)
        budget = config.max_batch_tokens or self.engine.batch_tokens
        self.batcher = Batcher(
            self.engine.score_windows, max_batch_tokens=budget,
            max_batch_pairs=config.max_batch_pairs or self.engine.batch_size,
            max_queued_tokens=config.max_queued_tokens or QUEUE_BATCHES * budget,
            merge_requests=config.merge_requests, stats=self.metrics,
        )
        self.batcher.start()
        self.engine.score("warm-up", ["warm-up"])
        self.ready = True
        logger.info("Serving %s as %r (%s)", config.model, config.name, self.engine)

    def stop(self) -> None:
        """Finish the queued work, then stop the worker and free the model if this service loaded it."""
        self.ready = False
        if self.batcher is not None:
            self.batcher.stop(drain=True, timeout=self.config.request_timeout_s)
        if self._owns_engine and self.engine is not None:
            self.engine.close()

    @property
    def alive(self) -> bool:
        return self.batcher is not None and self.batcher.alive

    async def rerank(self, query: str, texts: Sequence[str], *, options: dict[str, Any], top_k: int | None,
                     score_threshold: float | None, timeout_s: float) -> Ranked:
        """Rank ``texts`` for ``query``; windows share forward passes with concurrent calls.

        Raises ``ValueError``/``TypeError`` for bad input (naming it) and the batcher's errors when the queue is
        full, the deadline passes or the worker is gone.
        """
        engine = self.engine
        check_query(query)
        call_options = engine.call_options(**options)
        prepared = await asyncio.to_thread(engine.prepare, [query], [(0, text) for text in texts], call_options)
        scores = await self.batcher.score(prepared.windows, timeout_s=timeout_s)
        results = prepared.results(scores) if prepared.items else []
        return Ranked(rank(results, top_k, score_threshold), prepared.num_tokens)

    async def check(self, timeout_s: float = 10.0) -> None:
        """A real, tiny forward pass through the batcher (raises if the model cannot answer)."""
        prepared = self.engine.prepare(["health"], [(0, "ok")])
        await self.batcher.score(prepared.windows, timeout_s=timeout_s)
