"""The rerank service behind every route: one engine, one batcher, texts in, ranked results out. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ettin_rerank.results import RerankResult, rank
from ettin_rerank.serving.batcher import Batcher, QueueFullError, TooLargeError
from ettin_rerank.serving.config import ServerConfig
from ettin_rerank.serving.metrics import ServerMetrics
from ettin_rerank.validation import check_query, check_threshold, check_top_k

if TYPE_CHECKING:
    from ettin_rerank.engine.reranker import Reranker

logger = logging.getLogger(__name__)

QUEUE_BATCHES = 64
"""Without ``max_queued_tokens``, the queue holds this many full batches (131,072 tokens on CPU: about 300 passages
of 400 tokens; 4M on CUDA); a request that waits longer than its deadline still gets 503."""
TOKENIZER_THREADS = 2
"""Requests tokenized at once (each costs tens of bytes of memory per character while it runs)."""
HEALTH_TIMEOUT_S = 10.0
"""The health check's own deadline: its pass runs before the next pass of the queue, so it waits one pass at most."""


@dataclass(frozen=True)
class Ranked:
    """Results best first, and the tokens the model read for them (for ``usage``)."""

    results: list[RerankResult]
    tokens: int


class RerankService:
    """Loads (or takes) the engine, runs the batcher, and ranks texts for the routes.

    Args:
        config: The server configuration of one model.
        engine: An engine already loaded (tests, Ray replicas); ``None`` loads one from ``config`` in :meth:`start`.
        metrics: The server's metrics (shared by the models of one server; ``None``: its own).
    """

    def __init__(self, config: ServerConfig, engine: Reranker | None = None, *,
                 metrics: ServerMetrics | None = None) -> None:
        self.config = config
        self.engine = engine
        self._owns_engine = engine is None
        self.metrics = metrics or ServerMetrics()
        self.stats = self.metrics.for_model(config.name)
        self.batcher: Batcher | None = None
        self.ready = False
        self._tokenizer = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="ettin-rerank-tokenize")
        self._tokenizing = 0
        self._tokenizing_lock = threading.Lock()

    def load(self) -> None:
        """Load the model (unless given) and check the server's options against it, so that a configuration error
        (``--calibrated`` on a model without ``calibration.json``, say) stops the start, not every request."""
        from ettin_rerank.engine.reranker import Reranker

        if self.engine is None:
            self.engine = Reranker.from_args(self.config.engine_args)
        self.engine.call_options(activation=self.config.activation, max_tokens_per_doc=self.config.max_tokens_per_doc)

    def start(self) -> None:
        """Load and check the model, start the worker, and warm up with one tiny pass (blocking: call it off the
        loop)."""
        self.load()
        config = self.config
        budget = config.max_batch_tokens or self.engine.batch_tokens
        self.batcher = Batcher(
            self.engine.score_windows, max_batch_tokens=budget,
            max_batch_pairs=config.max_batch_pairs or self.engine.batch_size,
            max_queued_tokens=config.max_queued_tokens or QUEUE_BATCHES * budget,
            merge_requests=config.merge_requests, stats=self.stats,
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
        self._tokenizer.shutdown(wait=False, cancel_futures=True)
        if self._owns_engine and self.engine is not None:
            self.engine.close()

    @property
    def memory_bytes(self) -> int | None:
        """Bytes of the model's weights and buffers (``None`` before it is loaded)."""
        module = getattr(self.engine, "_cross_encoder", None)  # the engine has no public accessor for its module
        if module is None:
            return None
        tensors = [*module.parameters(), *module.buffers()]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    @property
    def alive(self) -> bool:
        return self.batcher is not None and self.batcher.alive

    async def rerank(self, query: str, texts: Sequence[str], *, options: dict[str, Any], top_k: int | None,
                     score_threshold: float | None, timeout_s: float) -> Ranked:
        """Rank ``texts`` for ``query``; windows share forward passes with concurrent calls.

        ``top_k``, ``score_threshold`` and ``options`` are checked by the engine's own checks (the ones
        :meth:`~ettin_rerank.Reranker.rerank` applies), before anything is tokenized. The text is tokenized on a
        small pool of threads, within :attr:`ServerConfig.max_tokenizing_chars` for all requests together.

        Raises ``ValueError``/``TypeError`` for bad input (naming it) and the batcher's errors when the queue (or
        the tokenizer) is full, the deadline passes or the worker is gone.
        """
        engine = self.engine
        check_query(query)
        top_k = check_top_k(top_k)
        score_threshold = check_threshold(score_threshold)
        call_options = engine.call_options(**options)
        loop = asyncio.get_running_loop()
        with self._admitted(len(query) + sum(map(len, texts))):
            prepared = await loop.run_in_executor(self._tokenizer, engine.prepare, [query],
                                                  [(0, text) for text in texts], call_options)
        scores = await self.batcher.score(prepared.windows, timeout_s=timeout_s)
        results = prepared.results(scores) if prepared.items else []
        return Ranked(rank(results, top_k, score_threshold), prepared.num_tokens)

    @contextmanager
    def _admitted(self, chars: int) -> Iterator[None]:
        """Hold ``chars`` of the tokenizer's budget; 413 if one request is over it, 429 if it is full now."""
        limit = self.config.tokenizing_chars
        if chars > limit:
            msg = (f"the request holds {chars} characters of text, more than the server tokenizes at once ({limit}); "
                   "split it into smaller requests")
            raise TooLargeError(msg)
        with self._tokenizing_lock:
            if self._tokenizing + chars > limit:
                msg = f"the tokenizer is busy ({self._tokenizing} characters waiting)"
                raise QueueFullError(msg, retry_after_s=1)
            self._tokenizing += chars
        try:
            yield
        finally:
            with self._tokenizing_lock:
                self._tokenizing -= chars

    async def check(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        """A real, tiny forward pass, ahead of the queue and outside its bound (raises if the model cannot
        answer)."""
        prepared = self.engine.prepare(["health"], [(0, "ok")])
        await self.batcher.score(prepared.windows, timeout_s=timeout_s, probe=True)
