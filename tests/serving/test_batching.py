"""Pairs from concurrent requests share forward passes, grouped by length, every response still equals the
in-process engine's scores, a small request is not starved by a big one, and the work of a client that left is
dropped."""

from __future__ import annotations

import asyncio
import random
import re
import time

import httpx
import numpy as np
import pytest
from ettin_rerank.engine.tokenization import Window
from ettin_rerank.serving import ServerConfig
from ettin_rerank.serving.batcher import Batcher
from ettin_rerank.serving.server import BackgroundServer

WORDS = "protein cell gene disease study results patients clinical treatment effect data risk brain".split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


async def test_concurrent_requests_share_passes_and_get_their_own_scores(server_url, serving_engine):
    rng = random.Random(3)
    jobs = [(f"query {i} about {_text(rng, 3)}", [_text(rng, rng.randint(5, 60)) for _ in range(20)])
            for i in range(16)]
    before = httpx.get(f"{server_url}/metrics").text
    async with httpx.AsyncClient(base_url=server_url, timeout=120) as client:
        responses = await asyncio.gather(*(client.post("/rerank", json={"query": q, "texts": docs, "raw_scores": True})
                                           for q, docs in jobs))
    after = httpx.get(f"{server_url}/metrics").text
    for (query, docs), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200
        got = {row["index"]: row["score"] for row in response.json()}
        np.testing.assert_allclose([got[i] for i in range(len(docs))], serving_engine.score(query, docs), atol=1e-4)
    batches = _metric(after, "ettin_batch_requests_count") - _metric(before, "ettin_batch_requests_count")
    merged = batches - (_metric(after, 'ettin_batch_requests_bucket{le="1.0"}')
                        - _metric(before, 'ettin_batch_requests_bucket{le="1.0"}'))
    assert batches < 16 * 20 / 2, "pairs from different requests were not merged into shared passes"
    assert merged > 0, "no forward pass held windows of more than one request"


async def test_a_small_request_is_not_starved_by_a_big_one(tiny_checkpoint, serving_engine):
    rng = random.Random(5)
    big = [_text(rng, 80) for _ in range(600)]
    small = [_text(rng, 10) for _ in range(10)]
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32", max_queued_tokens=10**6)

    async def timed(client, documents, delay):
        await asyncio.sleep(delay)
        start = time.perf_counter()
        response = await client.post("/v2/rerank", json={"model": "m", "query": "gene study", "documents": documents})
        assert response.status_code == 200
        return time.perf_counter() - start

    with BackgroundServer(config, engine=serving_engine) as url:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            big_seconds, small_seconds = await asyncio.gather(timed(client, big, 0), timed(client, small, 0.3))
    assert small_seconds < big_seconds / 3, (small_seconds, big_seconds)
    assert big_seconds > 1.0, "the big request must be long for this test to mean something"


def test_work_of_a_client_that_left_is_dropped(tiny_checkpoint, serving_engine):
    rng = random.Random(7)
    documents = [_text(rng, 150) for _ in range(900)]
    total = serving_engine.prepare(["gene"], [(0, d) for d in documents]).num_tokens
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32", max_queued_tokens=10**7)
    with BackgroundServer(config, engine=serving_engine) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v2/rerank", json={"model": "m", "query": "gene", "documents": documents}, timeout=0.5)
        time.sleep(2.0)  # long enough for the whole request, had it kept running
        metrics = httpx.get(f"{url}/metrics").text
        read = _metric(metrics, "ettin_tokens_total")  # this server's own registry: only this request and warm-up
        assert read < 0.5 * total, f"read {read:.0f} of {total} tokens after the client left"
        assert 'ettin_requests_total{code="499",route="/v2/rerank"} 1.0' in metrics
        assert httpx.post(f"{url}/v2/rerank", json={"model": "m", "query": "q", "documents": ["d"]}).status_code == 200


async def test_windows_of_similar_length_from_different_requests_share_a_pass():
    """Two requests, each with a long and a short window: the long windows go together and the short ones together
    (taking each request's windows in turn would pad every pass to the long length)."""
    passes: list[list[int]] = []

    def record(windows):
        passes.append([len(w.input_ids) for w in windows])
        return [float(len(w.input_ids)) for w in windows]

    def window(length: int) -> Window:
        return Window(pair=0, token_start=0, token_end=length, input_ids=[1] * length, token_type_ids=[0] * length)

    batcher = Batcher(record, max_batch_tokens=200, max_queued_tokens=10_000)
    with batcher._condition:  # hold the worker until both requests are queued, as under load
        batcher.start()
        first = asyncio.ensure_future(batcher.score([window(100), window(10)], timeout_s=30))
        second = asyncio.ensure_future(batcher.score([window(10), window(100)], timeout_s=30))
        await asyncio.sleep(0.05)
    assert await first == [100.0, 10.0]
    assert await second == [10.0, 100.0]
    batcher.stop()
    assert sorted(passes) == [[10, 10], [100, 100]], passes
