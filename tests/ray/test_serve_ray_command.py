"""``ettin-rerank serve --ray`` as a user runs it (a real process that starts its own local Ray): every process it
starts listens on loopback only, Ray's token authentication is on, the limits of the plain server hold on Ray too,
and SIGTERM leaves no process behind."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

psutil = pytest.importorskip("psutil")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _family(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    found = []
    for process in processes:
        try:
            name = process.name()
            found += [(name, c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _chunked_post(port: int, path: str, body: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for start in range(0, len(body), 1 << 16):
                piece = body[start:start + (1 << 16)]
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        return int(sock.recv(65536).split()[1])


def test_a_local_serve_ray_listens_on_loopback_only_and_leaves_nothing_behind(tiny_checkpoint):
    port = _free_port()
    home = tempfile.mkdtemp(prefix="er-", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": home, "RAY_TMPDIR": home}
    env.pop("RAY_AUTH_MODE", None)  # what a user gets: the project's choice, not the test suite's
    process = subprocess.Popen([sys.executable, "-m", "ettin_rerank.cli", "serve", "--ray", "--model",
                                str(tiny_checkpoint), "--dtype", "float32", "--port", str(port),
                                "--cpus-per-replica", "0.5"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    family: list[psutil.Process] = []
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"serve --ray did not become ready: {process.stderr.read()[-3000:] if process.poll() else ''}")
        family = _family(psutil.Process(process.pid))
        listening = _listening(family)
        assert len(family) > 3 and listening, "expected Ray's processes and their ports"
        exposed = [entry for entry in listening if not _is_loopback(entry[1])]
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert os.path.exists(os.path.join(home, ".ray", "auth_token")), "Ray's token authentication is off"

        answer = httpx.post(f"{url}/v2/rerank", json={"model": "m", "query": "gene", "documents": ["a gene", "pasta"]},
                            timeout=60)
        assert answer.status_code == 200 and len(answer.json()["results"]) == 2
        big = json.dumps({"model": "m", "query": "q", "documents": ["protein " * 375_000]}).encode()
        assert _chunked_post(port, "/v2/rerank", big) == 413  # counted as it arrives, on Ray too
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            code = "killed"
        gone_by = time.monotonic() + 30
        while time.monotonic() < gone_by and any(_alive(p) for p in family[1:]):
            time.sleep(0.5)
        left = [p for p in family[1:] if _alive(p)]
        for leftover in left:
            leftover.kill()
        shutil.rmtree(home, ignore_errors=True)
    assert code in (0, -signal.SIGTERM), code
    assert not left, f"processes left behind: {left}"
