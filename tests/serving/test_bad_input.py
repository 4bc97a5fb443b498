"""Bad input through every route gets the right status code and a clear message naming the field, in that route's
own error shape; never a stack trace, never a 500."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from ettin_rerank.serving import ServerConfig
from ettin_rerank.serving.server import BackgroundServer

COHERE_ROUTES = ["/v2/rerank", "/v1/rerank"]


def _post(url: str, body: object, **kwargs) -> httpx.Response:
    """POST ``body`` as Python's ``json.dumps`` writes it (lone surrogates become \\ud800 escapes, as some real
    clients send them)."""
    return httpx.post(url, content=json.dumps(body), headers={"content-type": "application/json",
                                                              **kwargs.pop("headers", {})}, **kwargs)


def _message(response: httpx.Response) -> str:
    body = response.json()
    if response.request.url.path == "/rerank":
        assert set(body) == {"error", "error_type"}, body
        return body["error"]
    assert body["message"] == body["detail"], body
    return body["message"]


@pytest.mark.parametrize("route", COHERE_ROUTES)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": "q", "documents": []}, "documents must not be empty"),
        ({"documents": ["d"]}, "query: Field required"),
        ({"query": None, "documents": ["d"]}, "query: Input should be a valid string"),
        ({"query": "q", "documents": "one string"}, "documents: Input should be a valid list"),
        ({"query": "q", "documents": ["ok", 7]}, "documents[1] must be a string or an object with a string 'text'"),
        ({"query": "q", "documents": [{"title": "no text"}]}, "documents[0] must be a string or an object"),
        ({"query": "", "documents": ["d"]}, "query must not be empty"),
        ({"query": "q", "documents": ["fine", "bad \ud800 text"]}, "documents[1] is not valid Unicode"),
        ({"query": "q", "documents": ["d"], "top_n": "three"}, "top_n: Input should be a valid integer"),
    ],
)
def test_cohere_and_jina_routes(server_url, route, body, message):
    response = _post(f"{server_url}{route}", body)
    assert response.status_code == 400, response.text
    assert message in _message(response)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query": "q", "texts": []}, 400, "documents must not be empty"),
        ({"texts": ["d"]}, 422, "query: Field required"),
        ({"query": "q", "texts": [1, 2]}, 422, "texts[0] must be a string"),
        ({"query": "q", "texts": ["d"], "truncation_direction": "up"}, 422, "truncation_direction"),
        ({"query": "q", "texts": ["\udcff"]}, 422, "documents[0] is not valid Unicode"),
    ],
)
def test_tei_route(server_url, body, status, message):
    response = _post(f"{server_url}/rerank", body)
    assert response.status_code == status, response.text
    assert message in _message(response)


def test_nulls_and_unknown_fields_are_accepted(server_url, case):
    body = {"model": None, "query": case.query, "documents": list(case.documents), "top_n": None,
            "max_tokens_per_doc": None, "return_documents": None, "priority": 0, "relevant_spans": {"mode": "x"}}
    for route in COHERE_ROUTES:
        response = _post(f"{server_url}{route}", body)
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == len(case.documents)  # null / absent top_n: every document
    zero = _post(f"{server_url}/v2/rerank", {**body, "top_n": 0}).json()
    assert len(zero["results"]) == len(case.documents)


def test_malformed_json(server_url):
    headers = {"content-type": "application/json"}
    cohere = httpx.post(f"{server_url}/v2/rerank", content=b'{"query": "q", "documents": [', headers=headers)
    assert cohere.status_code == 400 and "malformed JSON body" in _message(cohere)
    tei = httpx.post(f"{server_url}/rerank", content=b"{nope", headers=headers)
    assert tei.status_code == 422 and "malformed JSON body" in _message(tei)


def test_too_many_documents(server_url):
    documents = ["d"] * 10_000
    cohere = _post(f"{server_url}/v2/rerank", {"model": "m", "query": "q", "documents": documents})
    assert cohere.status_code == 413 and "10000 documents is over the limit of 1000" in _message(cohere)
    tei = _post(f"{server_url}/rerank", {"query": "q", "texts": documents})
    assert tei.status_code == 422 and "over the limit" in _message(tei)  # TEI answers 422 for this


def test_a_huge_document_is_read_up_to_the_cap(server_url, serving_engine):
    document = "protein study results " * 45_000  # about 1 MB
    response = _post(f"{server_url}/ettin/v1/rerank", {"query": "protein", "documents": [document]},
                          timeout=120)
    assert response.status_code == 200, response.text
    [row] = response.json()["results"]
    assert row["truncated"] is True and row["num_tokens"] > 100_000
    over = _post(f"{server_url}/v2/rerank", {"query": "q", "documents": ["x" * 2_100_000]})
    assert over.status_code == 413 and "over the limit of 2000000 bytes" in _message(over)


def test_api_key(tiny_checkpoint, serving_engine, case):
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32", api_key="s3cret")
    body = {"model": "m", "query": case.query, "documents": list(case.documents)}
    with BackgroundServer(config, engine=serving_engine) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            refused = _post(f"{url}/v2/rerank", body, headers=headers)
            assert refused.status_code == 401 and "API key" in _message(refused)
            assert refused.headers["www-authenticate"] == "Bearer"
        tei = _post(f"{url}/rerank", {"query": "q", "texts": ["d"]})
        assert tei.status_code == 401 and tei.json()["error_type"] == "unauthorized"
        ok = _post(f"{url}/v2/rerank", body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        for open_path in ("/health", "/ready", "/live", "/metrics"):
            assert httpx.get(f"{url}{open_path}").status_code == 200, open_path
        assert 'ettin_rejected_total{reason="auth"} 4.0' in httpx.get(f"{url}/metrics").text


def test_strict_model_name(tiny_checkpoint, serving_engine):
    config = ServerConfig(model=str(tiny_checkpoint), served_model_name="ettin-17m", device="cpu", dtype="float32",
                          strict_model_name=True)
    with BackgroundServer(config, engine=serving_engine) as url:
        wrong = _post(f"{url}/v2/rerank", {"model": "rerank-v3.5", "query": "q", "documents": ["d"]})
        assert wrong.status_code == 404 and "'rerank-v3.5' is not served here" in _message(wrong)
        right = _post(f"{url}/v2/rerank", {"model": "ettin-17m", "query": "q", "documents": ["d"]})
        assert right.status_code == 200


def test_no_route_answers_500_to_any_of_this(server_url):
    metrics = httpx.get(f"{server_url}/metrics").text
    assert 'code="500"' not in metrics


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"top_k": -1}, "top_k must be > 0, but got -1"),  # it used to drop the last result
        ({"top_k": 0}, "top_k must be > 0, but got 0"),  # it used to return nothing
        ({"top_k": "3"}, "top_k must be a positive integer or None, but got '3'"),
        ({"top_k": True}, "top_k must be a positive integer or None, but got True"),
        ({"score_threshold": float("nan")}, "score_threshold must be a number, not NaN"),  # it used to return []
        ({"score_threshold": "NaN"}, "score_threshold must be a number or None, but got 'NaN'"),
        ({"score_threshold": True}, "score_threshold must be a number or None, but got True"),
        ({"options": {"activation": "softmax"}}, "activation must be one of none, sigmoid, calibrated"),
        ({"options": {"windows": 3}}, "unknown option(s): windows"),
    ],
)
def test_the_native_route_applies_the_engines_checks(server_url, serving_engine, fields, message):
    """The same checks as :meth:`Reranker.rerank` (the same functions), in the route's error shape."""
    body = {"query": "q", "documents": ["a", "b", "c"], **fields}
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        serving_engine.rerank("q", ["a", "b", "c"], top_k=fields.get("top_k"),
                              score_threshold=fields.get("score_threshold"), **fields.get("options", {}))
    response = _post(f"{server_url}/ettin/v1/rerank", body)
    assert response.status_code == 400, response.text
    assert message in _message(response)
