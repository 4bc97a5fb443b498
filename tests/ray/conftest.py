"""A real local Ray for the scale-out tests, started as the project starts one (``ettin_rerank.cluster``: every
process on 127.0.0.1): 2 CPUs, a small object store, no dashboard, no usage stats, no auth token, temp files under a
short private folder, Serve's HTTP on 127.0.0.1 at a free port."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_SERVE_DEFAULT_HTTP_HOST", "127.0.0.1")
ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.fixture(scope="session")
def ray_local():
    temp = tempfile.mkdtemp(prefix="ettin-ray-", dir="/tmp")  # short: Unix socket paths must stay under 107 bytes
    from ettin_rerank.cluster import init_ray

    init_ray(None, num_cpus=2, num_gpus=0, object_store_memory=150 * 2**20, _temp_dir=temp)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_url(ray_local):
    from ray import serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
