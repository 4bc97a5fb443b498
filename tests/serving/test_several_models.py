"""Several models in one server: each request is routed by its ``model`` field (absent: the first), each model has
its own batcher and token budget, ``GET /v1/models`` lists them, ``/info`` and ``/metrics`` describe each, and an
unknown model is a 404 in the route's shape; checked with the real Cohere SDK picking each model."""

from __future__ import annotations

import httpx
import pytest
from ettin_rerank import Reranker
from ettin_rerank.serving import ServerConfig
from ettin_rerank.serving.server import BackgroundServer

cohere = pytest.importorskip("cohere")
QUERY = "which gene regulates the immune response"
DOCUMENTS = ["the gene regulates the immune response", "pasta in salted water", "a receptor in the brain",
             "clinical trial of a new therapy dose"]


@pytest.fixture(scope="module")
def engines(tiny_checkpoint, checkpoint_factory):
    second = checkpoint_factory("17m", layers=2, seed=1)
    return {"alpha": Reranker(tiny_checkpoint, device="cpu", dtype="float32"),
            "beta": Reranker(second, device="cpu", dtype="float32")}


@pytest.fixture(scope="module")
def two_models(engines):
    config = ServerConfig(model=tuple(str(e.model_path) for e in engines.values()),
                          served_model_name=tuple(engines), device="cpu", dtype="float32", max_queued_tokens=50_000)
    server = BackgroundServer(config, engine=engines)
    with server as url:
        yield url, server


def _expected(engine):
    return [(r.index, r.score) for r in engine.rerank(QUERY, DOCUMENTS, activation="sigmoid")]


def test_the_cohere_sdk_picks_each_model(two_models, engines):
    url, _ = two_models
    for name, engine in engines.items():
        v2 = cohere.ClientV2(api_key="-", base_url=url).rerank(model=name, query=QUERY, documents=DOCUMENTS)
        got = [(r.index, r.relevance_score) for r in v2.results]
        assert [i for i, _ in got] == [i for i, _ in _expected(engine)]
        assert [s for _, s in got] == pytest.approx([s for _, s in _expected(engine)], abs=1e-6)
        v1 = cohere.Client(api_key="-", base_url=url).rerank(model=name, query=QUERY, documents=DOCUMENTS)
        assert [r.relevance_score for r in v1.results] == pytest.approx([s for _, s in _expected(engine)], abs=1e-6)
    alpha, beta = ([s for _, s in _expected(engines[name])] for name in ("alpha", "beta"))
    assert alpha != pytest.approx(beta, abs=1e-3), "the two models must differ for this test to mean something"
    with pytest.raises(cohere.errors.NotFoundError) as refused:
        cohere.ClientV2(api_key="-", base_url=url).rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS)
    assert "'rerank-v3.5' is not served here; this server serves 'alpha', 'beta'" in str(refused.value.body)


def test_without_a_model_the_first_answers(two_models, engines):
    url, _ = two_models
    alpha = [s for _, s in _expected(engines["alpha"])]
    v1 = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
    assert v1["model"] == "alpha" and [r["relevance_score"] for r in v1["results"]] == pytest.approx(alpha, abs=1e-6)
    tei = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": DOCUMENTS}).json()  # TEI has no model field
    assert [r["score"] for r in tei] == pytest.approx(alpha, abs=1e-6)
    infinity = httpx.post(f"{url}/rerank", json={"query": QUERY, "documents": DOCUMENTS, "model": "beta"}).json()
    assert infinity["model"] == "beta"
    unknown = httpx.post(f"{url}/rerank", json={"query": QUERY, "documents": DOCUMENTS, "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "not_found"
    native = httpx.post(f"{url}/ettin/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "model": "beta"})
    assert native.json()["model"] == "beta"


def test_a_model_is_also_found_as_given_to_serve_model(two_models, engines, tiny_checkpoint):
    """The path or hub id given to ``--model`` (what an adapter's ``model=`` says) finds that model, unless it was
    given for more than one (then it names neither: a 404, not one of them at random)."""
    url, _ = two_models
    beta = [s for _, s in _expected(engines["beta"])]
    body = {"query": QUERY, "documents": DOCUMENTS, "model": str(engines["beta"].model_path)}
    v2 = httpx.post(f"{url}/v2/rerank", json=body).json()
    assert [r["relevance_score"] for r in v2["results"]] == pytest.approx(beta, abs=1e-6)
    assert httpx.post(f"{url}/ettin/v1/rerank", json=body).json()["model"] == "beta"

    twice = ServerConfig(model=(str(tiny_checkpoint), str(tiny_checkpoint)), served_model_name=("a", "b"),
                         device="cpu", dtype="float32")
    with BackgroundServer(twice, engine={"a": engines["alpha"], "b": engines["alpha"]}) as other:
        answer = httpx.post(f"{other}/ettin/v1/rerank",
                            json={"query": QUERY, "documents": DOCUMENTS, "model": str(tiny_checkpoint)})
        assert answer.status_code == 404 and "this server serves 'a', 'b'" in answer.json()["message"]
        assert httpx.post(f"{other}/ettin/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS,
                                                            "model": "b"}).json()["model"] == "b"


def test_models_info_and_metrics_describe_each_model(two_models, engines):
    url, server = two_models
    listed = httpx.get(f"{url}/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["alpha", "beta"]
    assert httpx.get(f"{url}/models").json()["data"][1]["root"] == str(engines["beta"].model_path)
    info = httpx.get(f"{url}/info").json()
    assert info["model_id"] == "alpha" and [m["id"] for m in info["models"]] == ["alpha", "beta"]
    for model in info["models"]:
        module = engines[model["id"]]._cross_encoder
        weights = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
        assert model["memory_bytes"] == weights and model["max_queued_tokens"] == 50_000
    assert info["models"][0]["memory_bytes"] > info["models"][1]["memory_bytes"]  # 4 layers against 2
    services = server.app.state.services
    assert services["alpha"].batcher is not services["beta"].batcher  # each its own queue and budget
    for name in engines:
        httpx.post(f"{url}/v2/rerank", json={"model": name, "query": QUERY, "documents": DOCUMENTS})
    metrics = httpx.get(f"{url}/metrics").text
    for name in engines:
        assert f'ettin_tokens_total{{model="{name}"}}' in metrics
        assert f'ettin_batch_pairs_count{{model="{name}"}}' in metrics


def test_served_names_must_be_one_per_model_and_distinct(tiny_checkpoint):
    with pytest.raises(ValueError, match="one name per model: 2 model"):
        ServerConfig(model=("17m", "150m"), served_model_name=("a",))
    with pytest.raises(ValueError, match="'ettin-17m-4-00' names more than one"):
        ServerConfig(model=(str(tiny_checkpoint), str(tiny_checkpoint)))
