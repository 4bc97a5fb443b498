"""Prometheus metrics of one server (prefix ``ettin_``), in a registry of its own so several apps can live in one
process (tests, Ray replicas). Requests and rejections are the server's; the batch, queue and token series are
each model's, labelled ``model`` when the server serves several."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ettin_rerank.serving.batcher import BatchStats

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class ServerMetrics:
    """Requests by route and status, queue wait, inference time, batch size in pairs, tokens and requests merged,
    queued tokens and pairs, rejections by reason.

    Args:
        models: The served names when there are several (their series get a ``model`` label); ``None`` for one.
    """

    def __init__(self, models: Sequence[str] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        per_model = ["model"] if models else []
        self._labelled = bool(models)
        self.requests = Counter("ettin_requests", "Requests by route and status code", ["route", "code"], registry=r)
        self.request_seconds = Histogram("ettin_request_duration_seconds", "Time to answer a request", ["route"],
                                         buckets=_SECONDS, registry=r)
        self.rejected = Counter("ettin_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.queue_wait_seconds = Histogram("ettin_queue_wait_seconds", "Time from arrival to the first forward pass",
                                            per_model, buckets=_SECONDS, registry=r)
        self.inference_seconds = Histogram("ettin_inference_seconds", "Time of one forward pass", per_model,
                                           buckets=_SECONDS, registry=r)
        self.batch_pairs = Histogram("ettin_batch_pairs", "Windows (pairs) in one forward pass", per_model,
                                     buckets=_COUNTS, registry=r)
        self.batch_tokens = Histogram("ettin_batch_tokens", "Tokens in one forward pass", per_model, buckets=_TOKENS,
                                      registry=r)
        self.batch_requests = Histogram("ettin_batch_requests", "Distinct requests merged into one forward pass",
                                        per_model, buckets=_COUNTS, registry=r)
        self.queued_tokens = Gauge("ettin_queued_tokens", "Tokens waiting for the model", per_model, registry=r)
        self.queued_pairs = Gauge("ettin_queued_pairs", "Windows waiting for the model", per_model, registry=r)
        self.tokens = Counter("ettin_tokens", "Tokens read by the model", per_model, registry=r)

    def for_model(self, name: str) -> ModelStats:
        """What the batcher of the model ``name`` records into."""
        return ModelStats(**{f.name: getattr(self, f.name).labels(name) if self._labelled else getattr(self, f.name)
                             for f in fields(ModelStats)})

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class ModelStats(BatchStats):
    """One model's series (the batcher's hooks)."""

    queue_wait_seconds: Any
    inference_seconds: Any
    batch_pairs: Any
    batch_tokens: Any
    batch_requests: Any
    queued_tokens: Any
    queued_pairs: Any
    tokens: Any

    def batch(self, pairs: int, tokens: int, requests: int, seconds: float) -> None:
        self.batch_pairs.observe(pairs)
        self.batch_tokens.observe(tokens)
        self.batch_requests.observe(requests)
        self.inference_seconds.observe(seconds)
        self.tokens.inc(tokens)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def queued(self, tokens: int, pairs: int) -> None:
        self.queued_tokens.set(tokens)
        self.queued_pairs.set(pairs)
