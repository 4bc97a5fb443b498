"""Prometheus metrics of one server (prefix ``ettin_``), in a registry of its own so several apps can live in one
process (tests, Ray replicas)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ettin_rerank.serving.batcher import BatchStats

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class ServerMetrics(BatchStats):
    """Requests by route and status, queue wait, inference time, batch size in pairs, tokens and requests merged,
    queued tokens and pairs, rejections by reason."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ettin_requests", "Requests by route and status code", ["route", "code"], registry=r)
        self.request_seconds = Histogram("ettin_request_duration_seconds", "Time to answer a request", ["route"],
                                         buckets=_SECONDS, registry=r)
        self.queue_wait_seconds = Histogram("ettin_queue_wait_seconds", "Time from arrival to the first forward pass",
                                            buckets=_SECONDS, registry=r)
        self.inference_seconds = Histogram("ettin_inference_seconds", "Time of one forward pass", buckets=_SECONDS,
                                           registry=r)
        self.batch_pairs = Histogram("ettin_batch_pairs", "Windows (pairs) in one forward pass", buckets=_COUNTS,
                                     registry=r)
        self.batch_tokens = Histogram("ettin_batch_tokens", "Tokens in one forward pass", buckets=_TOKENS, registry=r)
        self.batch_requests = Histogram("ettin_batch_requests", "Distinct requests merged into one forward pass",
                                        buckets=_COUNTS, registry=r)
        self.queued_tokens = Gauge("ettin_queued_tokens", "Tokens waiting for the model", registry=r)
        self.queued_pairs = Gauge("ettin_queued_pairs", "Windows waiting for the model", registry=r)
        self.rejected = Counter("ettin_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.tokens = Counter("ettin_tokens", "Tokens read by the model", registry=r)

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

    def render(self) -> bytes:
        return generate_latest(self.registry)
