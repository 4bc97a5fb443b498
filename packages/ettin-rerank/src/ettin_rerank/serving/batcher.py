"""Windows from many requests -> shared token-budget forward passes -> each request's scores. No HTTP here.

One worker thread owns the engine. Requests (``Job``s) queue their windows; the worker takes a *round* of a few
passes' worth of windows from the waiting requests in order of their *virtual finish time* (arrival + tokens /
measured throughput): equal requests are served oldest first (so latency tails stay those of a FIFO queue), and a
20-document request that arrives while a 1,000-document one runs is served in the next round, before that one's
remainder, which in turn cannot be starved (later arrivals get later virtual finish times). The round's windows are
then sorted by length across requests and cut into token-budget passes, so windows of similar length share a pass
(attention pays for the longest window of its pass: merging requests window by window in arrival order mixed
lengths and cost 4-7% of throughput on a CPU, measured). Work whose caller has gone (cancelled, or past its
deadline) is dropped before it reaches the model, between passes. The queue is bounded in tokens: past the bound
:meth:`Batcher.score` raises :class:`QueueFullError` at once. A *probe* (the health check's tiny pass) bypasses the
bound and runs before the next pass, so a full queue never makes the server look dead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ettin_rerank.engine.budget import token_budget_batches
from ettin_rerank.engine.tokenization import Window

logger = logging.getLogger(__name__)


INITIAL_TOKENS_PER_S = 10_000.0
"""Throughput assumed until the first pass is measured (only the order of requests depends on it)."""
ROUND_PASSES = 4
"""Passes' worth of tokens taken per round: enough to group windows by length, few enough that a request arriving
meanwhile waits at most this many passes."""


class QueueFullError(Exception):
    """No room for the request now; ``retry_after_s`` estimates when there will be."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooLargeError(ValueError):
    """One request holds more tokens than the whole queue may: it could never be admitted."""


class DeadlineExceededError(Exception):
    """The request waited longer than its deadline; its remaining work was dropped."""


class BatcherStoppedError(Exception):
    """The worker is stopping or has stopped: no new work is accepted."""


@dataclass(eq=False)
class _Job:
    windows: Sequence[Window]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float
    enqueued: float
    order: list[int] = field(init=False)
    scores: list[float] = field(init=False)
    tokens: int = field(init=False)
    cursor: int = 0
    finish_by: float = 0.0
    remaining: int = field(init=False)
    started: bool = False
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.order = sorted(range(len(self.windows)), key=lambda i: -len(self.windows[i].input_ids))
        self.scores = [math.nan] * len(self.windows)
        self.tokens = sum(len(w.input_ids) for w in self.windows)
        self.remaining = len(self.windows)

    @property
    def pending(self) -> bool:
        return self.cursor < len(self.order)

    def next_length(self) -> int:
        return len(self.windows[self.order[self.cursor]].input_ids)

    def pending_tokens(self) -> int:
        return sum(len(self.windows[i].input_ids) for i in self.order[self.cursor:])


class BatchStats:
    """Hooks the worker calls (the server counts them as Prometheus metrics); all no-ops here."""

    def batch(self, pairs: int, tokens: int, requests: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queued(self, tokens: int, pairs: int) -> None: ...


class Batcher:
    """Scores windows of concurrent requests in shared forward passes.

    Args:
        score_windows: The engine's ``score_windows`` (raw scores of a list of windows, in order).
        max_batch_tokens: Cost budget of one pass: ``windows x longest window``.
        max_batch_pairs: At most this many windows in one pass (``None``: only the budget).
        max_queued_tokens: Tokens allowed to wait; more raises :class:`QueueFullError`.
        merge_requests: Share passes between requests (``False``: each pass holds one request's windows).
        round_passes: Passes' worth of tokens taken at a time and sorted by length before cutting them into passes.
        stats: Receives per-batch measurements.
    """

    def __init__(
        self,
        score_windows: Callable[[list[Window]], Sequence[float]],
        *,
        max_batch_tokens: int,
        max_batch_pairs: int | None = None,
        max_queued_tokens: int,
        merge_requests: bool = True,
        round_passes: int = ROUND_PASSES,
        stats: BatchStats | None = None,
    ) -> None:
        self._score_windows = score_windows
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_pairs = max_batch_pairs
        self.max_queued_tokens = max_queued_tokens
        self.merge_requests = merge_requests
        self.round_passes = round_passes
        self._stats = stats or BatchStats()
        self._jobs: deque[_Job] = deque()
        self._probes: deque[_Job] = deque()
        self._queued_tokens = 0
        self._condition = threading.Condition()
        self._stopping = False
        self._tokens_per_s = 0.0
        self._thread = threading.Thread(target=self._run, name="ettin-rerank-batcher", daemon=True)

    # ------------------------------------------------------------------ lifetime

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new work; finish what is queued (``drain``) or drop it, then end the worker."""
        with self._condition:
            self._stopping = True
            if not drain:
                for job in [*self._jobs, *self._probes]:
                    job.cancelled = True  # passes already taken skip its windows
                    self._fail(job, BatcherStoppedError("the server is shutting down"))
                self._jobs.clear()
                self._probes.clear()
                self._queued_tokens = 0
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    def retry_after_s(self) -> int:
        """Seconds until the queued work is likely done (at least 1)."""
        if self._tokens_per_s <= 0:
            return 1
        return max(1, math.ceil(self._queued_tokens / self._tokens_per_s))

    # ------------------------------------------------------------------ submitting

    async def score(self, windows: Sequence[Window], *, timeout_s: float, probe: bool = False) -> list[float]:
        """Raw scores of ``windows`` (in order), computed together with other callers' windows.

        A ``probe`` (a few tokens: the health check) is not counted against the queue and runs in a pass of its own
        before the next pass of the queue.

        Raises:
            TooLargeError: at once, when these windows alone are more than the queue may hold.
            QueueFullError: at once, when the queue cannot take these windows now.
            DeadlineExceededError: the work did not finish within ``timeout_s``.
            BatcherStoppedError: the worker is stopping or dead.
        """
        if not windows:
            return []
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        job = _Job(windows=windows, future=loop.create_future(), loop=loop, deadline=now + timeout_s, enqueued=now)
        job.finish_by = now + job.tokens / (self._tokens_per_s or INITIAL_TOKENS_PER_S)
        with self._condition:
            if self._stopping or not self._thread.is_alive():
                msg = "the model worker is not running"
                raise BatcherStoppedError(msg)
            if probe:
                self._probes.append(job)
            elif job.tokens > self.max_queued_tokens:
                msg = (f"the request holds {job.tokens} tokens, more than the server queues at once "
                       f"({self.max_queued_tokens}); split it into smaller requests")
                raise TooLargeError(msg)
            elif self._queued_tokens + job.tokens > self.max_queued_tokens:
                msg = f"the model queue is full ({self._queued_tokens} tokens waiting)"
                raise QueueFullError(msg, self.retry_after_s())
            else:
                self._jobs.append(job)
                self._queued_tokens += job.tokens
                self._stats.queued(self._queued_tokens, sum(len(j.order) - j.cursor for j in self._jobs))
            self._condition.notify()
        return await self._wait(job, timeout_s, now)

    @staticmethod
    async def _wait(job: _Job, timeout_s: float, now: float) -> list[float]:
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=max(0.0, job.deadline - now))
        except asyncio.TimeoutError:
            job.cancelled = True
            msg = f"the request waited {timeout_s:g} s for the model"
            raise DeadlineExceededError(msg) from None
        except asyncio.CancelledError:
            job.cancelled = True  # the caller went away: the worker drops what is left
            raise

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._jobs and not self._probes and not self._stopping:
                    self._condition.wait()
                self._drop_abandoned()
                if not self._jobs and not self._probes:
                    if self._stopping:
                        return
                    continue
                passes = self._take_round() if self._jobs else []
            self._run_probes()
            for batch in passes:
                self._execute(batch)
                self._run_probes()

    def _run_probes(self) -> None:
        """Each waiting probe in a pass of its own (they are a few tokens: this delays the queue very little)."""
        while True:
            with self._condition:
                if not self._probes:
                    return
                job = self._probes.popleft()
            if not job.cancelled and job.deadline > time.monotonic():
                self._execute([(job, index) for index in range(len(job.windows))])

    def _drop_abandoned(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs):
            if job.cancelled or job.deadline <= now:
                self._jobs.remove(job)
                self._queued_tokens -= job.pending_tokens()
                if not job.cancelled:
                    self._fail(job, DeadlineExceededError("the deadline passed while the request waited"))

    def _take_round(self) -> list[list[tuple[_Job, int]]]:
        """Windows for the next passes: requests by virtual finish time, each one's longest windows first, up to
        ``round_passes`` passes' worth of tokens; then sorted by length across requests and cut into passes."""
        jobs = sorted((job for job in self._jobs if job.pending), key=lambda job: job.finish_by)
        if not self.merge_requests:
            jobs = jobs[:1]
        budget = self.round_passes * self.max_batch_tokens
        taken: list[tuple[_Job, int]] = []
        tokens = 0
        for job in jobs:
            while job.pending and (not taken or tokens + job.next_length() <= budget):
                index = job.order[job.cursor]
                taken.append((job, index))
                tokens += len(job.windows[index].input_ids)
                job.cursor += 1
                if not job.started:
                    job.started = True
                    self._stats.queue_wait(time.monotonic() - job.enqueued)
            if job.pending:
                break
        self._queued_tokens -= tokens
        self._jobs = deque(job for job in self._jobs if job.pending or job.remaining)
        self._stats.queued(self._queued_tokens, sum(len(j.order) - j.cursor for j in self._jobs))
        lengths = [len(job.windows[index].input_ids) for job, index in taken]
        return [[taken[k] for k in batch]
                for batch in token_budget_batches(lengths, self.max_batch_tokens, self.max_batch_pairs)]

    def _execute(self, batch: list[tuple[_Job, int]]) -> None:
        batch = [(job, index) for job, index in batch if not job.cancelled]  # its caller left during the round
        if not batch:
            return
        windows = [job.windows[index] for job, index in batch]
        tokens = sum(len(w.input_ids) for w in windows)
        start = time.perf_counter()
        try:
            scores = self._score_windows(windows)
        except Exception as error:  # a failed pass fails its requests, not the server
            logger.exception("a forward pass of %d windows failed", len(windows))
            for job in {job for job, _ in batch}:
                job.cancelled = True
                self._fail(job, error)
            return
        seconds = time.perf_counter() - start
        self._tokens_per_s = tokens / seconds if self._tokens_per_s == 0 else (
            0.8 * self._tokens_per_s + 0.2 * tokens / max(seconds, 1e-6))
        self._stats.batch(len(windows), tokens, len({id(job) for job, _ in batch}), seconds)
        for (job, index), score in zip(batch, scores, strict=True):
            job.scores[index] = float(score)
            job.remaining -= 1
            if job.remaining == 0 and not job.cancelled:
                job.loop.call_soon_threadsafe(_resolve, job.future, job.scores)
        with self._condition:
            self._jobs = deque(job for job in self._jobs if job.pending or job.remaining)

    @staticmethod
    def _fail(job: _Job, error: BaseException) -> None:
        job.loop.call_soon_threadsafe(_reject, job.future, error)


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
