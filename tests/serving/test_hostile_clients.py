"""Hostile and careless clients, over real sockets: a body over the limit whatever its framing, slow clients, bodies
that cannot be parsed or echoed, other origins and hosts, odd paths, a full queue; each gets its answer in the
route's shape, the keep-alive connection survives what it should survive, and the server stays bounded."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import threading
import time

import httpx
import pytest
from ettin_rerank.serving import ServerConfig
from ettin_rerank.serving.server import BackgroundServer

ROUTES = {"/v2/rerank": {"model": "m", "query": "q"}, "/v1/rerank": {"query": "q"}, "/rerank": {"query": "q"},
          "/ettin/v1/rerank": {"query": "q"}}


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from ``sock`` (status, headers, body), or AssertionError if none arrives in time."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    assert b"\r\n\r\n" in data, f"no response within {timeout} s: {data[:200]!r}"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _send_chunked(url: str, path: str, body: bytes, chunk: int = 64 * 1024) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` with ``Transfer-Encoding: chunked`` (no Content-Length), stopping early once the server has
    answered, as curl does."""
    sock = socket.create_connection(_address(url))
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        sock.setblocking(False)
        for start in range(0, len(body), chunk):
            piece = body[start:start + chunk]
            try:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server has answered
            except (BlockingIOError, InterruptedError):
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            sock.sendall(b"0\r\n\r\n")
        sock.setblocking(True)
        return _read_response(sock, timeout=30)
    finally:
        sock.close()


@pytest.mark.parametrize("path", list(ROUTES))
def test_a_chunked_body_over_the_limit_gets_413(server_url, path):
    """Counted as it arrives: without Content-Length, a 3 MB body is refused once it passes 2 MB."""
    fields = dict(ROUTES[path])
    fields["texts" if path == "/rerank" else "documents"] = ["protein " * 375_000]  # 3 MB
    status, _, body = _send_chunked(server_url, path, json.dumps(fields).encode())
    assert status == 413, body[:300]
    answer = json.loads(body)
    message = answer["error"] if path == "/rerank" else answer["message"]
    assert "over the limit of 2000000 bytes" in message
    metrics = httpx.get(f"{server_url}/metrics").text
    assert re.search(r'ettin_rejected_total\{reason="too_large"\} [1-9]', metrics)


class _CountingEngine:
    """The real engine, counting how many tokenizations run at once."""

    def __init__(self, engine):
        self._engine = engine
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def prepare(self, *args, **kwargs):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.2)  # long enough for concurrent requests to overlap here
            return self._engine.prepare(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1

    def __getattr__(self, name):
        return getattr(self._engine, name)


async def test_what_requests_cost_before_the_token_queue_is_bounded(tiny_checkpoint, serving_engine):
    """Text waits for the tokenizer within a character budget (429 past it, 413 for one request over it), and only
    a couple of requests are tokenized at once (each costs tens of bytes per character while it runs)."""
    engine = _CountingEngine(serving_engine)
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32", max_tokenizing_chars=20_000)
    document = "gene expression in the brain " * 200  # 5,800 characters
    with BackgroundServer(config, engine=engine) as url:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            answers = await asyncio.gather(*(client.post("/v2/rerank", json={
                "model": "m", "query": f"gene {i}", "documents": [document]}) for i in range(8)))
            over = await client.post("/v2/rerank", json={"model": "m", "query": "gene", "documents": [document] * 4})
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 429}, codes
    assert all("tokenizer is busy" in r.json()["message"] and int(r.headers["retry-after"]) >= 1
               for r in answers if r.status_code == 429)
    assert engine.most <= 2, f"{engine.most} requests were tokenized at once"
    assert over.status_code == 413 and "more than the server tokenizes at once" in over.json()["message"]


@pytest.fixture(scope="module")
def impatient_server(tiny_checkpoint, serving_engine):
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32", header_timeout_s=1.0,
                          body_timeout_s=2.0)
    with BackgroundServer(config, engine=serving_engine) as url:
        yield url


def test_a_client_that_trickles_its_headers_gets_408_and_is_cut_off(impatient_server):
    sock = socket.create_connection(_address(impatient_server))
    try:
        sock.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        status, headers, body = _read_response(sock, timeout=10)
        assert status == 408 and headers["connection"] == "close", (status, headers)
        assert json.loads(body)["message"] == "request headers not received in time"
        assert time.monotonic() - start < 5
        sock.settimeout(5)
        assert sock.recv(1) == b"", "the connection stayed open"
    finally:
        sock.close()


def test_a_client_that_trickles_its_body_gets_408(impatient_server):
    sock = socket.create_connection(_address(impatient_server))
    try:
        sock.sendall(b"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"query\"")
        start = time.monotonic()
        status, _, body = _read_response(sock, timeout=10)
        assert status == 408, (status, body)
        assert json.loads(body) == {"error": "the request body was not received in time", "error_type": "http"}
        assert time.monotonic() - start < 6
    finally:
        sock.close()


def test_slow_clients_do_not_lock_out_the_others(impatient_server):
    """Fifty connections that send nothing or trickle headers: a normal client is answered at once, and each slow
    one is closed after the header deadline."""
    slow = [socket.create_connection(_address(impatient_server)) for _ in range(50)]
    try:
        for i, sock in enumerate(slow):
            if i % 2:
                sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        response = httpx.post(f"{impatient_server}/v1/rerank", json={"query": "q", "documents": ["d"]}, timeout=10)
        assert response.status_code == 200
        time.sleep(2.0)
        for sock in slow:
            sock.settimeout(3)
            try:
                rest = sock.recv(4096)
                assert rest == b"" or rest.startswith(b"HTTP/1.1 408")
            except ConnectionResetError:
                pass
    finally:
        for sock in slow:
            sock.close()


def _keep_alive_post(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, dict]:
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/rerank", b'{"query": "q", "texts": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422, "nested too deeply"),
    ("/v2/rerank", b'{"query": "q", "documents": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
    ("/rerank", b'{"query": "q", "texts": ["d"], "raw_scores": ' + b"9" * 5000 + b"}", 422, "4300"),
    ("/v1/rerank", b'{"query": "q", "documents": ["d"], "top_n": ' + b"9" * 5000 + b"}", 400, "4300"),
    ("/v1/rerank", b'{"query": "q", "documents": [{"text": "ok", "title": "\\ud800"}]}', 400,
     "documents[0].title is not valid Unicode"),
    ("/v2/rerank", b'{"model": "m", "return_documents": true, "query": "q", "documents": [{"text": "ok", "x": '
     + b"[" * 40 + b"]" * 40 + b"}]}", 400, "documents[0].x"),
])
def test_a_body_that_cannot_be_parsed_or_echoed_is_refused_and_the_connection_survives(server_url, path, body,
                                                                                       status, message):
    connection = http.client.HTTPConnection(*_address(server_url), timeout=30)
    try:
        code, answer = _keep_alive_post(connection, path, body)
        assert code == status, answer
        assert message in (answer.get("error") or answer["message"])
        sock = connection.sock
        assert sock is not None, "the server closed the connection"
        code, _ = _keep_alive_post(connection, "/v1/rerank", b'{"query": "q", "documents": ["d"]}')
        assert code == 200 and connection.sock is sock
    finally:
        connection.close()


def test_only_json_bodies_and_allowed_hosts_are_answered(server_url):
    """A web page can make a browser POST ``text/plain`` to a loopback server, or reach it by a rebound name."""
    form = httpx.post(f"{server_url}/rerank", content=b'{"query": "q", "texts": ["d"]}',
                      headers={"content-type": "text/plain"})
    assert form.status_code == 415 and form.json()["error_type"] == "validation"
    blob = httpx.post(f"{server_url}/v1/rerank", content=b'{"query": "q", "documents": ["d"]}')
    assert blob.status_code == 415 and "must be application/json" in blob.json()["message"]
    port = _address(server_url)[1]
    rebound = httpx.post(f"{server_url}/v1/rerank", json={"query": "q", "documents": ["d"]},
                         headers={"host": f"attacker.example:{port}"})
    assert rebound.status_code == 400 and "'attacker.example" in rebound.json()["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.post(f"{server_url}/v1/rerank", json={"query": "q", "documents": ["d"]},
                          headers={"host": host}).status_code == 200


def test_allowed_hosts_can_be_opened_up(tiny_checkpoint, serving_engine):
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32",
                          allowed_hosts=("rerank.internal", "*.example.com"))
    with BackgroundServer(config, engine=serving_engine) as url:
        for host, status in (("rerank.internal", 200), ("a.example.com:8080", 200), ("localhost", 400),
                             ("example.org", 400)):
            response = httpx.get(f"{url}/ready", headers={"host": host})
            assert response.status_code == status, host


def test_metrics_keep_one_series_per_route_whatever_the_paths(server_url):
    with httpx.Client(base_url=server_url) as client:
        for i in range(200):
            client.get(f"/no/such/path/{i}?x={i}")
            if i % 100 == 0:
                client.post(f"/v2/rerank/{i}", json={})
        metrics = client.get("/metrics").text
    assert "/no/such/path" not in metrics and "/v2/rerank/1" not in metrics
    assert re.search(r'ettin_requests_total\{code="404",route="other"\} ([0-9.]+)', metrics)
    count = float(re.search(r'ettin_requests_total\{code="404",route="other"\} ([0-9.]+)', metrics).group(1))
    assert count >= 202
    assert len(metrics) < 100_000


class _SlowPasses:
    """The real engine, with each forward pass 0.3 s slower (so that a queue stays full while it is watched)."""

    def __init__(self, engine):
        self._engine = engine

    def score_windows(self, windows, cancel=None):
        time.sleep(0.3)
        return self._engine.score_windows(windows, cancel)

    def __getattr__(self, name):
        return getattr(self._engine, name)


async def test_health_stays_200_when_the_queue_is_merely_full(tiny_checkpoint, serving_engine):
    """A liveness probe must not fail under overload: the health pass skips the queue's bound and its line. Twelve
    clients keep a queue of eight requests full (each retries at once on 429) while /health is asked."""
    document = "gene expression in the brain " * 20
    tokens = sum(len(w.input_ids) for w in serving_engine.prepare(["gene"], [(0, document)]).windows)
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32", max_batch_tokens=tokens,
                          max_queued_tokens=8 * tokens)
    stop = asyncio.Event()
    refused = 0

    async def filler(client):
        nonlocal refused
        while not stop.is_set():
            response = await client.post("/v2/rerank", json={"model": "m", "query": "gene", "documents": [document]})
            refused += response.status_code == 429

    with BackgroundServer(config, engine=_SlowPasses(serving_engine)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            fillers = [asyncio.ensure_future(filler(client)) for _ in range(12)]
            await asyncio.sleep(1.0)
            probes = []
            for _ in range(5):
                start = time.monotonic()
                probes.append(((await client.get("/health")).status_code, time.monotonic() - start))
                await asyncio.sleep(0.2)
            ready = (await client.get("/ready")).status_code
            stop.set()
            await asyncio.gather(*fillers)
    assert refused > 0, "the queue must be full for this test to mean something"
    assert [code for code, _ in probes] == [200] * 5 and ready == 200, probes
    assert max(seconds for _, seconds in probes) < 3, f"/health waited behind the queue: {probes}"
