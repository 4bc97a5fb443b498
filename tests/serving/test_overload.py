"""Overload is an answer, not a hang: past the token queue a burst gets 429 with Retry-After, a request that waits
past its deadline gets 503 with Retry-After, and every accepted request completes correctly (none lost)."""

from __future__ import annotations

import asyncio
import random

import httpx
import numpy as np
from ettin_rerank.serving import ServerConfig
from ettin_rerank.serving.server import BackgroundServer

WORDS = "protein cell gene disease study results patients clinical treatment effect data risk brain".split()


async def test_a_burst_past_the_queue_gets_429_and_every_accepted_request_is_right(tiny_checkpoint, serving_engine):
    rng = random.Random(11)
    jobs = [(f"query {i}", [" ".join(rng.choices(WORDS, k=40)) for _ in range(20)]) for i in range(40)]
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32", max_batch_tokens=1024,
                          max_queued_tokens=4000)
    with BackgroundServer(config, engine=serving_engine) as url:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            responses = await asyncio.wait_for(asyncio.gather(*(
                client.post("/rerank", json={"query": q, "texts": docs, "raw_scores": True}) for q, docs in jobs)),
                timeout=120)
        metrics = httpx.get(f"{url}/metrics").text
    codes = [r.status_code for r in responses]
    accepted = [(job, r) for job, r in zip(jobs, responses, strict=True) if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(accepted) + len(refused) == len(jobs), codes  # every request answered: 200 or 429, nothing else
    assert refused and accepted, codes
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error_type"] == "overloaded"
    for (query, docs), response in accepted:
        got = {row["index"]: row["score"] for row in response.json()}
        np.testing.assert_allclose([got[i] for i in range(len(docs))], serving_engine.score(query, docs), atol=1e-4)
    assert f'ettin_rejected_total{{reason="queue_full"}} {len(refused)}.0' in metrics


def test_a_request_past_its_deadline_gets_503(tiny_checkpoint, serving_engine):
    rng = random.Random(12)
    documents = [" ".join(rng.choices(WORDS, k=200)) for _ in range(300)]
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32", max_queued_tokens=10**6)
    with BackgroundServer(config, engine=serving_engine) as url:
        response = httpx.post(f"{url}/v1/rerank", json={"query": "gene", "documents": documents},
                              headers={"X-Request-Timeout": "0.2"}, timeout=60)
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1 and "waited 0.2 s" in response.json()["message"]
        assert httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["d"]}).status_code == 200
