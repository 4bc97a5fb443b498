"""A real ``ettin-rerank serve`` process: configuration errors stop the start (exit 2, one line), every flag can
come from the environment (the shared process is configured by ``ETTIN_*`` variables alone), it says where it
listens, what it loaded and when it is ready, writes an access log on request, and with a sub-second request
timeout still answers what it accepted on SIGTERM (200, or 503 past a deadline; never 500)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from ettin_rerank.cli import build_parser
from ettin_rerank.cli.serve import server_config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ettin_rerank.cli", "serve", *args]


def test_a_configuration_error_stops_the_start(tiny_checkpoint):
    """``--calibrated`` on a model without ``calibration.json``: found at start-up, not in every request."""
    try:
        result = subprocess.run(_command("--model", str(tiny_checkpoint), "--calibrated", "--port", str(_free_port())),
                                capture_output=True, text=True, timeout=120, check=False,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail("the server started (and ran) with a configuration it cannot answer with")
    errors = [line for line in result.stderr.splitlines() if line.startswith("ettin-rerank: error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and "needs a calibrated model" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


class Served:
    """The process, its URL and every line it has written on stderr so far."""

    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process = process
        self.url = url
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if re.search(pattern, line)]
            if found:
                return found[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; got: {self.lines[-20:]}")


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    """``ettin-rerank serve`` with no flag at all: a container's way, every setting from the environment."""
    port = _free_port()
    settings = {"ETTIN_MODEL": str(tiny_checkpoint), "ETTIN_DTYPE": "float32", "ETTIN_PORT": str(port),
                "ETTIN_REQUEST_TIMEOUT": "0.8", "ETTIN_ACCESS_LOG": "1", "ETTIN_SERVED_MODEL_NAME": "from-env",
                "ETTIN_MAX_DOCUMENTS": "77", "ETTIN_RUNTIME": "torch", "ETTIN_THREADS": "1",
                "ETTIN_RERANK_CACHE": str(tmp_path_factory.mktemp("serve-cache"))}
    # not the test suite's process-wide ETTIN_RERANK_RUNTIME: the runtime comes from serve's own ETTIN_RUNTIME
    environment = {k: v for k, v in os.environ.items() if k != "ETTIN_RERANK_RUNTIME"}
    process = subprocess.Popen(_command(), env={**environment, "HF_HUB_OFFLINE": "1", **settings},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    served = Served(process, f"http://127.0.0.1:{port}")
    try:
        served.wait_for(r"^ready$")
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_the_environment_configures_it(served, tiny_checkpoint):
    info = httpx.get(f"{served.url}/info").json()
    assert info["model_id"] == "from-env" and info["model_path"] == str(tiny_checkpoint)
    assert info["model_dtype"] == "float32" and info["max_client_batch_size"] == 77
    assert info["runtime"] == "torch" and info["models"][0]["runtime"] == "torch"


def test_runtime_precision_and_threads_reach_every_model_served(monkeypatch):
    """``--runtime``/``--precision``/``--threads`` (or ``ETTIN_RUNTIME``...) load each of several models so."""
    args = build_parser().parse_args(["serve", "--model", "17m", "--model", "150m", "--runtime", "openvino",
                                      "--precision", "int8", "--threads", "3"])
    config = server_config(args)
    assert len(config.models) == 2
    for model in config.models:
        assert (model.engine_args.runtime, model.engine_args.precision, model.engine_args.threads) == (
            "openvino", "int8", 3)
    for variable, value in (("ETTIN_RUNTIME", "torch"), ("ETTIN_THREADS", "2"), ("ETTIN_MODEL", "17m,32m")):
        monkeypatch.setenv(variable, value)
    config = server_config(build_parser().parse_args(["serve"]))
    assert [(m.model, m.engine_args.runtime, m.engine_args.threads) for m in config.models] == [
        ("17m", "torch", 2), ("32m", "torch", 2)]
    monkeypatch.setenv("ETTIN_THREADS", "0")
    with pytest.raises(ValueError, match="threads must be a positive integer or None, but got 0"):
        server_config(build_parser().parse_args(["serve"]))


def _sample(action) -> tuple[str, object]:
    """An environment value for ``action`` and what the parsed argument must then be."""
    if action.nargs == 0:
        return "yes", action.const
    if action.choices:
        return str(action.choices[-1]), action.choices[-1]
    kind = action.type or str
    raw = {int: "7", float: "0.5"}.get(kind, "from-env")
    value = kind(raw) if kind in (int, float) else raw
    return raw, [value] if action.__class__.__name__ == "_AppendAction" else value


def test_every_flag_reads_an_environment_variable(monkeypatch):
    """As TEI's MODEL_ID and PORT: a Kubernetes manifest configures the server without a shell."""
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = [a for a in serve._actions if any(o.startswith("--") for o in a.option_strings) and a.dest != "help"]
    assert len(flags) > 25
    for action in flags:
        variable = "ETTIN_" + next(o for o in action.option_strings if o.startswith("--"))[2:].replace("-", "_").upper()
        raw, expected = _sample(action)
        monkeypatch.setenv(variable, raw)
        args = build_parser().parse_args(["serve"])
        for dest, values in args.environment_lists.items():  # what the command does with repeatable flags
            if getattr(args, dest) is None:
                setattr(args, dest, values)
        assert getattr(args, action.dest) == expected, variable
        assert f"[env {variable}]" in action.help
        monkeypatch.delenv(variable)
    monkeypatch.setenv("ETTIN_PORT", "8081")
    assert build_parser().parse_args(["serve", "--port", "9090"]).port == 9090  # the command line wins
    monkeypatch.setenv("ETTIN_MODEL", "17m,150m")
    assert build_parser().parse_args(["serve", "--model", "32m"]).model == ["32m"]
    monkeypatch.setenv("ETTIN_PORT", "eighty")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])


def test_it_says_what_it_loaded_where_it_listens_and_when_it_is_ready(served, tiny_checkpoint):
    model = served.wait_for(r"^model ")
    assert str(tiny_checkpoint) in model and "cpu" in model and "float32" in model and "attention sdpa" in model
    assert "runtime torch" in model
    listening = served.wait_for(r"^listening on ")
    assert listening.startswith(f"listening on {served.url} ") and f"{served.url}/docs" in listening
    assert served.lines.index(model) < served.lines.index(listening) < served.lines.index("ready")


def test_the_access_log_has_one_line_per_request(served):
    response = httpx.post(f"{served.url}/v2/rerank", json={"model": "m", "query": "gene",
                                                           "documents": ["a gene", "a cell", "pasta"]}, timeout=30)
    assert response.status_code == 200
    line = served.wait_for(r"^POST /v2/rerank ", timeout=10)
    assert re.fullmatch(r"POST /v2/rerank 200 pairs=3 tokens=\d+ [\d.]+ms", line), line
    httpx.get(f"{served.url}/no/such/page")
    assert served.wait_for(r"^GET other 404 ", timeout=10)


def test_sigterm_with_a_sub_second_request_timeout_answers_what_it_accepted(served):
    """The drain time was the timeout rounded down: 0 s, so every in-flight request got a 500."""
    documents = [f"document {i} about genes and proteins " * 12 for i in range(40)]
    answers: list[object] = []
    connected = threading.Barrier(5)

    def ask() -> None:
        with httpx.Client(base_url=served.url, timeout=60) as client:
            client.get("/live")  # the connection is open before the signal
            connected.wait()
            try:
                answers.append(client.post("/v2/rerank", json={"model": "m", "query": "genes",
                                                               "documents": documents}).status_code)
            except httpx.TransportError as error:
                answers.append(type(error).__name__)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    connected.wait(timeout=60)
    time.sleep(0.3)
    served.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    code = served.process.wait(timeout=60)
    assert len(answers) == 4 and set(answers) <= {200, 503}, answers  # 503: past its 0.8 s deadline (a busy machine)
    assert code in (0, -signal.SIGTERM)
    assert not any("Traceback" in line for line in served.lines), served.lines[-30:]
