"""``/openapi.json`` describes this server (typed requests and responses per API family, every status a route
answers, 405 with ``Allow``), checked by schemathesis against a real server with every check it has; the API docs
are served from a packaged copy (they work offline) and render in a real headless browser where one is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("schemathesis", reason="schemathesis is not installed")

SCHEMATHESIS_CONFIG = """
# Statuses the server documents that schemathesis' defaults do not expect:
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]  # 503 with Retry-After: a request past its X-Request-Timeout
[checks.negative_data_rejection]
expected-statuses = ["400", "404", "405", "406", "413", "415", "422"]  # 413: over maxItems, as documented

# The one rule of POST /ettin/v1/rerank that JSON Schema cannot state (its description says it): an explicit
# window_overlap must be below half of max_length, and a query at most half of max_length; they answer 400.
[[operations]]
include-path = "/ettin/v1/rerank"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "429", "5xx"]
"""


def test_the_document_describes_these_routes(server_url):
    document = httpx.get(f"{server_url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    v2 = document["paths"]["/v2/rerank"]["post"]["responses"]
    assert set(v2) == {"200", "400", "404", "408", "413", "415", "429", "503"}
    assert v2["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CohereError"}
    assert "Retry-After" in v2["429"]["headers"] and "Retry-After" in v2["503"]["headers"]
    tei = document["paths"]["/rerank"]["post"]
    assert tei["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TeiError"}
    assert {"$ref": "#/components/schemas/TeiRequest"} in tei["requestBody"]["content"]["application/json"][
        "schema"]["anyOf"]
    assert schemas["TeiRequest"]["properties"]["texts"]["maxItems"] == 1000
    assert "calibrated" not in str(schemas["NativeRequest"]["properties"]["options"])  # this model has no calibration
    not_allowed = httpx.get(f"{server_url}/v2/rerank")
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"


def test_schemathesis_finds_nothing_wrong(server_url, tmp_path):
    """Every check schemathesis has, examples bounded, deterministic: schema-valid requests are answered,
    schema-invalid ones refused, every answer's status, headers, content type and body are the documented ones."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(config), "run",
               f"{server_url}/openapi.json", "--checks", "all", "--max-examples", "15", "--workers", "2",
               "--generation-codec", "ascii", "--seed", "21", "--report-dir", str(tmp_path / "report")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    assert "No issues found" in summary, summary


def test_the_docs_use_no_cdn(server_url):
    """Swagger UI and ReDoc load their scripts from this server (a packaged copy), never from the internet."""
    root = httpx.get(f"{server_url}/").json()
    assert root["docs"] == "/docs" and root["info"] == "/info"
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{server_url}{page}").text
        assert "https://" not in html and "http://" not in html, html
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css"),
                        ("redoc.standalone.js", "javascript")):
        response = httpx.get(f"{server_url}/static-offline-docs/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert len(response.content) > 100_000


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (apt-get install chromium)")
@pytest.mark.parametrize(("page", "marker"), [("/docs", 'data-path="/v2/rerank"'), ("/redoc", "/ettin/v1/rerank")])
def test_the_docs_render_in_a_real_browser(server_url, tmp_path, page, marker):
    """Headless Chromium with every host but 127.0.0.1 unresolvable: the page renders the rerank routes."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
               "--virtual-time-budget=20000", "--dump-dom", f"{server_url}{page}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "HOME": str(tmp_path)})
    dom = result.stdout
    assert marker in dom, (result.returncode, dom[-2000:], result.stderr[-2000:])
    for route in ("/v1/rerank", "/rerank", "/ettin/v1/rerank"):
        assert route in dom
    Path(tmp_path / "dom.html").write_text(dom)
