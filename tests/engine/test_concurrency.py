"""Concurrent calls from threads give the same scores as serial calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np


def test_threads_match_serial(reranker, make_text):
    jobs = [(f"query number {i} about genes", [make_text(n) for n in (5, 60 + i * 7, 140, 33)]) for i in range(12)]
    serial = [reranker.score(q, docs) for q, docs in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        threaded = list(pool.map(lambda job: reranker.score(*job), jobs))
    np.testing.assert_allclose(np.array(threaded), np.array(serial), atol=1e-6)
