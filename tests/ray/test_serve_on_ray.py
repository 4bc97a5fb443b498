"""The server as a Ray Serve application on a real local Ray: two replicas, same answers as the in-process engine,
recovery from a killed replica, and 429 when Serve's bounded queue is full."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import httpx
import numpy as np
import pytest
from ettin_rerank.serving import ServerConfig

serve = pytest.importorskip("ray.serve")
WORDS = "protein cell gene disease study results patients clinical treatment effect data risk brain".split()


def _jobs(count, seed):
    rng = random.Random(seed)
    return [(f"query {i} {rng.choice(WORDS)}", [" ".join(rng.choices(WORDS, k=rng.randint(5, 40))) for _ in range(10)])
            for i in range(count)]


def _replicas():
    import ray

    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and "SERVE_REPLICA" in a["name"] and "EttinReranker" in a["name"]]


@pytest.fixture(scope="module")
def ray_app(serve_url, tiny_checkpoint):
    from ettin_rerank.serving.ray import build_app

    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32")
    serve.run(build_app(config, replicas=2, cpus_per_replica=0.5), name="ettin", route_prefix="/")
    yield serve_url
    serve.delete("ettin")


async def test_two_replicas_answer_as_the_in_process_engine(ray_app, reranker):
    assert len(_replicas()) == 2
    jobs = _jobs(16, seed=1)
    async with httpx.AsyncClient(base_url=ray_app, timeout=120) as client:
        responses = await asyncio.gather(*(client.post("/rerank", json={"query": q, "texts": d, "raw_scores": True})
                                           for q, d in jobs))
    for (query, docs), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        got = {row["index"]: row["score"] for row in response.json()}
        np.testing.assert_allclose([got[i] for i in range(len(docs))], reranker.score(query, docs), atol=1e-4)
    assert httpx.get(f"{ray_app}/health").status_code == 200


def test_a_killed_replica_is_replaced_and_answers_stay_right(ray_app, reranker):
    import ray

    jobs = _jobs(60, seed=2)
    results: list[tuple[int, object]] = []

    def load() -> None:
        with httpx.Client(base_url=ray_app, timeout=60) as client:
            for query, docs in jobs:
                try:
                    response = client.post("/rerank", json={"query": query, "texts": docs, "raw_scores": True})
                    results.append((response.status_code, response.json() if response.status_code == 200 else None))
                except httpx.TransportError:
                    results.append((0, None))

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(1.0)
    victim = _replicas()[0]
    ray.kill(ray.get_actor(victim["name"], namespace="serve"), no_restart=True)
    thread.join(timeout=180)
    deadline = time.monotonic() + 90
    while len(_replicas()) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    failed = [code for code, _ in results if code != 200]
    print(f"requests during the replica kill: {len(results)}, failed: {len(failed)} ({sorted(set(failed))})")
    assert len(results) == len(jobs)
    assert len(failed) <= len(jobs) // 3
    for (query, docs), (code, body) in zip(jobs, results, strict=True):
        if code == 200:
            got = {row["index"]: row["score"] for row in body}
            np.testing.assert_allclose([got[i] for i in range(len(docs))], reranker.score(query, docs), atol=1e-4)
    assert len(_replicas()) == 2, "the deployment did not recover its second replica"


async def test_serve_queue_is_bounded_and_answers_429(serve_url, tiny_checkpoint):
    from ettin_rerank.serving.ray import build_app

    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32")
    serve.run(build_app(config, replicas=1, cpus_per_replica=0.5, max_ongoing_requests=1, max_queued_requests=1),
              name="tight", route_prefix="/tight")
    try:
        jobs = _jobs(20, seed=3)
        async with httpx.AsyncClient(base_url=f"{serve_url}/tight", timeout=120) as client:
            responses = await asyncio.gather(*(
                client.post("/v2/rerank", json={"model": "m", "query": q, "documents": d}) for q, d in jobs))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
        assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
    finally:
        serve.delete("tight")


def test_app_builder_reads_serve_run_arguments(tiny_checkpoint):
    from ettin_rerank.serving.ray import app_builder

    app = app_builder({"model": str(tiny_checkpoint), "dtype": "float32", "replicas": "3", "max_documents": "50",
                       "api_key": "none"})
    deployment = app._bound_deployment
    assert deployment.num_replicas == 3 and deployment.max_queued_requests == 256
    config = app._bound_deployment.init_args[0]
    assert config.max_documents == 50 and config.api_key is None
    with pytest.raises(ValueError, match="unknown argument 'replica'"):
        app_builder({"replica": "2"})
