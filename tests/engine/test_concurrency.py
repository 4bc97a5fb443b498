"""Concurrent calls from threads give the same scores as serial calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest


def test_threads_match_serial(reranker, make_text):
    jobs = [(f"query number {i} about genes", [make_text(n) for n in (5, 60 + i * 7, 140, 33)]) for i in range(12)]
    serial = [reranker.score(q, docs) for q, docs in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        threaded = list(pool.map(lambda job: reranker.score(*job), jobs))
    np.testing.assert_allclose(np.array(threaded), np.array(serial), atol=1e-6)


async def test_a_cancelled_call_stops_at_the_next_batch(tiny_checkpoint, make_text):
    """The caller's task is cancelled: the worker thread runs at most one more batch, then frees the model."""
    import asyncio

    from ettin_rerank import Reranker

    engine = Reranker(tiny_checkpoint, device="cpu", dtype="float32", batch_tokens=512)
    real = engine._scorer
    batches = []

    def counting(windows):  # the real scorer, counted
        batches.append(len(windows))
        return real(windows)

    engine._scorer = counting
    documents = [make_text(120) for _ in range(400)]  # about 200 batches of 512 tokens
    task = asyncio.create_task(engine.arerank("gene study", documents))
    while not batches:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)
    stopped_at = len(batches)
    await asyncio.sleep(1.0)
    assert len(batches) == stopped_at, "the cancelled call kept computing"
    assert stopped_at < 100, f"{stopped_at} batches ran for a call cancelled after the first"
    assert len(await engine.arerank("q", ["d"])) == 1  # the engine is free for the next caller
