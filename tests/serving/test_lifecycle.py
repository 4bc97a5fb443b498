"""Health probes tell the truth, and a real `ettin-rerank serve` process finishes what it accepted on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
from ettin_rerank.serving import ServerConfig
from ettin_rerank.serving.server import BackgroundServer


def test_health_ready_and_info(server_url, serving_engine):
    assert httpx.get(f"{server_url}/health").status_code == 200
    assert httpx.get(f"{server_url}/ping").status_code == 200
    assert httpx.get(f"{server_url}/ready").json() == {"status": "ready"}
    info = httpx.get(f"{server_url}/info").json()
    assert info["model_id"] == "ettin-test" and info["model_dtype"] == "float32"
    assert info["max_input_length"] == serving_engine.model_max_length and info["max_client_batch_size"] == 1000


def test_health_is_503_when_the_model_worker_is_dead(tiny_checkpoint, serving_engine):
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32")
    server = BackgroundServer(config, engine=serving_engine)
    with server as url:
        server.app.state.service.batcher.stop()
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json() == {"error": "unhealthy", "error_type": "unhealthy"}
        assert httpx.get(f"{url}/ready").status_code == 503
        refused = httpx.post(f"{url}/v2/rerank", json={"model": "m", "query": "q", "documents": ["d"]})
        assert refused.status_code == 503 and "retry-after" in refused.headers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sigterm_finishes_accepted_requests_then_exits(tiny_checkpoint):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "ettin_rerank.cli", "serve", "--model", str(tiny_checkpoint),
                                "--dtype", "float32", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("the server did not become ready")
        documents = [f"document {i} about genes and proteins " * 20 for i in range(150)]
        answers: list[int] = []
        connected = threading.Barrier(5)

        def ask() -> None:
            with httpx.Client(base_url=url, timeout=120) as client:
                client.get("/live")  # connected before the signal, even on a busy machine
                connected.wait()
                answers.append(client.post("/v2/rerank", json={"model": "m", "query": "genes",
                                                               "documents": documents}).status_code)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        connected.wait(timeout=60)
        time.sleep(0.5)  # the requests are in; then the orchestrator says stop
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=120)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert answers == [200, 200, 200, 200], answers
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down cleanly
    assert "Traceback" not in process.stderr.read()


def test_a_public_address_without_a_key_is_warned_about(tiny_checkpoint):
    """192.0.2.1 is a documentation address that no machine has: binding fails at once, after the warning."""
    result = subprocess.run([sys.executable, "-m", "ettin_rerank.cli", "serve", "--model", str(tiny_checkpoint),
                             "--host", "192.0.2.1", "--port", str(_free_port())], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert "without an API key: anyone who can reach this address can use the model" in result.stderr
