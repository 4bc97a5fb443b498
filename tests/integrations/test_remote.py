"""Remote mode (``base_url`` / ``url``) against real HTTP servers on 127.0.0.1: the same results as in process
(options sent as set, long lists split and merged back), one error naming the URL and what came back when the
other end is down or is another kind of server, calls bounded by their timeout, secrets kept out of sight."""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")

from ettin_rerank.adapters import RemoteSpec
from ettin_rerank.adapters.client import RemoteReranker
from ettin_rerank.errors import RemoteRerankError
from ettin_rerank.serving import ServerConfig
from ettin_rerank.serving.server import BackgroundServer
from haystack import Document
from haystack.utils import Secret
from haystack_integrations.components.rankers.ettin import EttinRanker
from langchain_ettin import EttinRerank as LangChainRerank
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.ettin_rerank import EttinRerank as LlamaIndexRerank

KEY = "test-key-123"
MAX_DOCUMENTS = 4  # the server takes 4 documents per request: 10 go as 4 + 4 + 2
SERVER_CAP = 200  # the server's default max_tokens_per_doc, far below a long document here
QUERY = "protein study results"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, reranker):
    config = ServerConfig(model=str(tiny_checkpoint), device="cpu", dtype="float32", max_documents=MAX_DOCUMENTS,
                          max_tokens_per_doc=SERVER_CAP, api_key=KEY)
    with BackgroundServer(config, engine=reranker) as url:
        yield url


@pytest.fixture(scope="module")
def texts():
    rng = random.Random(7)
    words = "protein cell gene disease study results patients clinical treatment effect model analysis data".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 40))) for _ in range(10)]


def _nodes(texts):
    return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.0) for i, t in enumerate(texts)]


def _ranked(nodes):
    return [(n.node.node_id, round(n.score, 5), n.node.metadata["ettin_num_tokens"],
             n.node.metadata["ettin_truncated"]) for n in nodes]


# ---------------------------------------------------------------- the same results as in process


def test_more_documents_than_the_server_takes_are_split_and_merged(server, texts, engine_options):
    """10 documents, 4 per request: no 413, and the same ranking, scores and indices as in process."""
    local = LlamaIndexRerank(top_n=10, **engine_options)
    remote = LlamaIndexRerank(top_n=10, base_url=server, api_key=KEY)
    expected = _ranked(local.postprocess_nodes(_nodes(texts), query_str=QUERY))
    assert _ranked(remote.postprocess_nodes(_nodes(texts), query_str=QUERY)) == expected
    top = LlamaIndexRerank(top_n=3, base_url=server, api_key=KEY).postprocess_nodes(_nodes(texts), query_str=QUERY)
    assert _ranked(top) == expected[:3]  # the best 3 of all 10, not of one part

    threshold = (expected[4][1] + expected[5][1]) / 2
    langchain = LangChainRerank(top_n=None, base_url=server, api_key=KEY, score_threshold=threshold)
    rows = langchain.rerank(texts, QUERY)
    assert [f"n{r['index']}" for r in rows] == [node_id for node_id, *_ in expected[:5]]
    documents = [Document(id=f"n{i}", content=t) for i, t in enumerate(texts)]
    ranker = EttinRanker(url=server, api_key=Secret.from_token(KEY), top_k=10)
    haystack = ranker.run(query=QUERY, documents=documents)["documents"]
    assert [(d.id, round(d.score, 5)) for d in haystack] == [(node_id, score) for node_id, score, *_ in expected]


async def test_async_calls_split_and_merge_the_same_way(server, texts, engine_options):
    local = LangChainRerank(top_n=10, **engine_options).rerank(texts, QUERY)
    remote = await LangChainRerank(top_n=10, base_url=server, api_key=KEY).arerank(texts, QUERY)
    assert [(r["index"], round(r["relevance_score"], 5)) for r in remote] == [
        (r["index"], round(r["relevance_score"], 5)) for r in local]


def test_max_tokens_per_doc_none_reads_everything_there_too(server, make_text, engine_options):
    """``None`` means "read everything", in process and remote alike: not the server's default cap."""
    documents = [make_text(600), make_text(30)]
    options = {"max_length": 128, "activation": "none", "max_tokens_per_doc": None, "top_n": 2}
    local = LlamaIndexRerank(**engine_options, **options).postprocess_nodes(_nodes(documents), query_str=QUERY)
    remote = LlamaIndexRerank(base_url=server, api_key=KEY, **options).postprocess_nodes(_nodes(documents),
                                                                                       query_str=QUERY)
    assert [n.node.metadata for n in remote] == [n.node.metadata for n in local]
    assert [n.score for n in remote] == pytest.approx([n.score for n in local], abs=1e-5)
    long = next(n for n in remote if n.node.node_id == "n0").node.metadata
    assert not long["ettin_truncated"] and long["ettin_num_tokens"] > SERVER_CAP and long["ettin_num_windows"] > 4

    # What the server's native route does with each: an explicit null reads everything, an absent field takes
    # the server's default cap (--max-tokens-per-doc).
    def native(options):
        body = {"query": QUERY, "documents": documents[:1], "options": options}
        response = httpx.post(f"{server}/ettin/v1/rerank", json=body, headers={"Authorization": f"Bearer {KEY}"})
        response.raise_for_status()
        return response.json()["results"][0]

    assert native({"max_length": 128, "max_tokens_per_doc": None})["truncated"] is False
    capped = native({"max_length": 128})
    assert capped["truncated"] is True and capped["num_windows"] < long["ettin_num_windows"]


@pytest.fixture(scope="module")
def two_models(tiny_checkpoint, wide_checkpoint, reranker):
    """A server of two models: "alpha" (the tiny checkpoint, first) and "wide" (logits over -12..22)."""
    from ettin_rerank import Reranker

    engines = {"alpha": reranker, "wide": Reranker(wide_checkpoint, device="cpu", dtype="float32")}
    config = ServerConfig(model=(str(tiny_checkpoint), str(wide_checkpoint)), served_model_name=tuple(engines),
                          device="cpu", dtype="float32")
    with BackgroundServer(config, engine=engines) as url:
        yield url


def test_the_model_named_is_the_one_that_scores(two_models, wide_checkpoint, texts, engine_options):
    """Each adapter's ``model`` picks the served model, by served name or as given to ``serve --model``; without
    one the server's first scores; a model the server does not serve is an error naming those it does."""
    local = {name: LangChainRerank(top_n=None, **{**engine_options, "model": str(path)}).rerank(texts, QUERY)
             for name, path in (("alpha", engine_options["model"]), ("wide", wide_checkpoint))}
    expected = {name: [(r["index"], r["relevance_score"]) for r in rows] for name, rows in local.items()}
    assert [s for _, s in expected["alpha"]] != pytest.approx([s for _, s in expected["wide"]], abs=1e-3)

    def same(got, name):
        want = expected[name]
        return [i for i, _ in got] == [i for i, _ in want] and [s for _, s in got] == pytest.approx(
            [s for _, s in want], abs=1e-6)

    for model, name in (("wide", "wide"), (str(wide_checkpoint), "wide"), ("alpha", "alpha")):
        rows = LangChainRerank(top_n=None, base_url=two_models, model=model).rerank(texts, QUERY)
        assert same([(r["index"], r["relevance_score"]) for r in rows], name), model
    nodes = LlamaIndexRerank(top_n=len(texts), base_url=two_models, model=str(wide_checkpoint)).postprocess_nodes(
        _nodes(texts), query_str=QUERY)
    assert same([(int(n.node.node_id[1:]), n.score) for n in nodes], "wide")
    documents = [Document(id=f"n{i}", content=t) for i, t in enumerate(texts)]
    ranked = EttinRanker(url=two_models, model="wide", top_k=len(texts)).run(query=QUERY, documents=documents)
    assert same([(int(d.id[1:]), d.score) for d in ranked["documents"]], "wide")
    first = RemoteReranker(two_models).rerank(QUERY, texts, activation="sigmoid")
    assert same([(r.index, r.score) for r in first], "alpha")

    with pytest.raises(RemoteRerankError, match=r"answered 404: model '17m' is not served here; this server serves "
                       r"'alpha', 'wide' \(.*model= one it serves\? GET /v1/models lists them\)") as refused:
        EttinRanker(url=two_models).run(query=QUERY, documents=documents)  # the default model, "17m"
    assert refused.value.status == 404


@pytest.mark.parametrize("model", ["", "  ", 17, b"wide"])
def test_a_model_that_is_not_a_name_is_refused_at_construction(model):
    with pytest.raises(ValueError, match="model must name a model the server serves"):
        RemoteReranker("http://127.0.0.1:1", model=model)
    with pytest.raises(ValueError, match="model must name a model the server serves"):
        RemoteSpec("http://127.0.0.1:1", model=model)


# ---------------------------------------------------------------- the API key, read and hidden


def test_every_adapter_reads_the_api_key_from_the_environment(server, texts, monkeypatch):
    with pytest.raises(RemoteRerankError, match=rf"server at {server}/ettin/v1/rerank answered 401: .*ETTIN_API_KEY"):
        LangChainRerank(base_url=server).rerank(texts, QUERY)
    monkeypatch.setenv("ETTIN_API_KEY", KEY)
    assert len(LlamaIndexRerank(top_n=2, base_url=server).postprocess_nodes(_nodes(texts), query_str=QUERY)) == 2
    assert len(LangChainRerank(top_n=2, base_url=server).rerank(texts, QUERY)) == 2
    documents = [Document(content=t) for t in texts[:3]]
    assert len(EttinRanker(url=server, top_k=2).run(query=QUERY, documents=documents)["documents"]) == 2


@pytest.mark.parametrize("adapter", ["llamaindex", "langchain", "haystack"])
def test_secrets_never_show(adapter):
    if adapter == "llamaindex":
        component = LlamaIndexRerank(base_url="http://127.0.0.1:1", api_key="sk-server-secret", token="hf_secret")
        shown = [repr(component), str(component), json.dumps(component.to_dict()), component.to_json()]
    elif adapter == "langchain":
        component = LangChainRerank(base_url="http://127.0.0.1:1", api_key="sk-server-secret", token="hf_secret")
        shown = [repr(component), str(component), component.model_dump_json()]
    else:
        component = EttinRanker(url="http://127.0.0.1:1", api_key=Secret.from_token("sk-server-secret"),
                                token=Secret.from_env_var("HF_TOKEN", strict=False))
        shown = [repr(component), str(component)]
    for text in shown:
        assert "sk-server-secret" not in text and "hf_secret" not in text


# ---------------------------------------------------------------- what failed, said once, with the URL


class StandIn(BaseHTTPRequestHandler):
    """Another kind of server: answers each path with what the test put in ``server.answers``."""

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path))
        status, headers, body, delay = self.server.answers.get(self.path, (404, {}, b"not found", 0))
        time.sleep(delay)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (the timeout tests)
            pass

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.answers, server.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_a_server_that_is_down_is_named(texts):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(RemoteRerankError, match=rf"could not connect to the ettin-rerank server at {url}/info: .*"
                       r"\(is `ettin-rerank serve` running there\?\)") as caught:
        LangChainRerank(base_url=url).rerank(texts, QUERY)
    assert caught.value.url.startswith(url) and caught.value.status is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (json.dumps({"results": [{"index": 0, "relevance_score": 0.9}]}),
         r"answered 200, but not with an ettin-rerank ranking: results\[0\] has no 'score' \(keys: index, "
         r"relevance_score\)"),
        ("<html><body>Welcome to nginx!</body></html>",
         r"answered 200, but not with an ettin-rerank ranking: the body is not JSON \('<html><body>Welcome"),
        ("[1, 2]", r"answered 200, but not with an ettin-rerank ranking: no 'results' list in '\[1, 2\]'; is "
         r"base_url an ettin-rerank server\?"),
        (json.dumps({"results": [{"index": 7, "score": 0.5, "logit": 0.0, "num_tokens": 3, "num_windows": 1,
                                  "truncated": False, "best_window": {"token_start": 0, "token_end": 3,
                                                                      "char_start": 0, "char_end": 9}}]}),
         r"answered 200, but not with an ettin-rerank ranking: results\[0\] has index 7, not one of the 3 "
         r"documents sent"),
    ],
    ids=["cohere-shaped", "html", "a list", "index out of range"],
)
async def test_another_kind_of_server_answering_200_is_named(stand_in, body, message):
    url = _url(stand_in)
    stand_in.answers["/ettin/v1/rerank"] = (200, {"Content-Type": "application/json"}, body.encode(), 0)
    pattern = rf"the server at {url}/ettin/v1/rerank {message}"
    with pytest.raises(RemoteRerankError, match=pattern):
        LangChainRerank(base_url=url).rerank(["a", "b", "c"], QUERY)
    with pytest.raises(RemoteRerankError, match=pattern):
        await LlamaIndexRerank(base_url=url).apostprocess_nodes(_nodes(["a", "b", "c"]), query_str=QUERY)


def test_retries_never_outlive_the_callers_timeout(stand_in):
    url = _url(stand_in)
    busy = json.dumps({"message": "the queue is full"}).encode()
    stand_in.answers["/ettin/v1/rerank"] = (429, {"Retry-After": "3600"}, busy, 0)
    start = time.monotonic()
    with pytest.raises(RemoteRerankError, match=rf"server at {url}/ettin/v1/rerank answered 429 \(the queue is "
                       r"full\) and asked to retry after 3600 s, more than the .* left of this call's timeout of 5 s"):
        LangChainRerank(base_url=url, timeout=5).rerank(["a"], QUERY)
    assert time.monotonic() - start < 2

    stand_in.answers["/ettin/v1/rerank"] = (503, {"Retry-After": "0"}, busy, 0)
    stand_in.seen.clear()
    with pytest.raises(RemoteRerankError, match=r"answered 503: the queue is full") as caught:
        LangChainRerank(base_url=url, timeout=5).rerank(["a"], QUERY)
    assert caught.value.status == 503
    assert stand_in.seen == [("GET", "/info"), *[("POST", "/ettin/v1/rerank")] * 3]  # two retries, then the answer

    stand_in.answers["/ettin/v1/rerank"] = (200, {}, b"{}", 3.0)  # answers, but too late
    start = time.monotonic()
    with pytest.raises(RemoteRerankError, match=rf"server at {url}/ettin/v1/rerank did not answer within the "
                       r"timeout of 1 s"):
        EttinRanker(url=url, timeout=1.0).run(query=QUERY, documents=[Document(content="a")])
    assert time.monotonic() - start < 2.5


# ---------------------------------------------------------------- what the client asks and checks before sending


def _ranking(*indices) -> bytes:
    """A native route answer ranking the documents at ``indices`` (as a stand-in server gives it to every part)."""
    window = {"token_start": 0, "token_end": 3, "char_start": 0, "char_end": 1}
    rows = [{"index": i, "score": 0.5, "logit": 0.0, "num_tokens": 3, "num_windows": 1, "truncated": False,
             "best_window": window} for i in indices]
    return json.dumps({"results": rows}).encode()


async def test_an_info_answered_with_an_error_is_asked_again(stand_in):
    """A 503 on /info (a model still loading, a proxy mid-rollout) is not taken for "no limit" for good: the next
    call asks again, and splits by the limit the server gives then (else: 413 for longer lists)."""
    url = _url(stand_in)
    stand_in.answers["/info"] = (503, {"Retry-After": "1"}, b'{"message": "the model is loading"}', 0)
    stand_in.answers["/ettin/v1/rerank"] = (200, {"Content-Type": "application/json"}, _ranking(0), 0)
    client = RemoteReranker(url)
    assert [r.index for r in client.rerank(QUERY, ["a"])] == [0]
    stand_in.answers["/info"] = (200, {"Content-Type": "application/json"}, b'{"max_client_batch_size": 1}', 0)
    assert sorted(r.index for r in client.rerank(QUERY, ["a", "b"])) == [0, 1]  # one document per request
    assert sorted(r.index for r in await client.arerank(QUERY, ["a", "b"])) == [0, 1]
    info, post = ("GET", "/info"), ("POST", "/ettin/v1/rerank")
    assert stand_in.seen == [info, post, info, post, post, post, post]  # /info kept once it answered 200
    client.close()

    stand_in.answers["/info"] = (503, {}, b"", 0)
    stand_in.seen.clear()
    client = RemoteReranker(url)
    await client.arerank(QUERY, ["a"])
    stand_in.answers["/info"] = (200, {"Content-Type": "application/json"}, b'{"max_client_batch_size": 1}', 0)
    assert sorted(r.index for r in await client.arerank(QUERY, ["a", "b"])) == [0, 1]
    assert stand_in.seen == [info, post, info, post, post]
    client.close()


@pytest.mark.parametrize(
    ("top_k", "score_threshold", "error", "message"),
    [(0, None, ValueError, r"top_k must be > 0, but got 0"), (-1, None, ValueError, r"top_k must be > 0, but got -1"),
     ("2", None, TypeError, r"top_k must be a positive integer or None, but got '2'"),
     (None, float("nan"), ValueError, r"score_threshold must be a number, not NaN")],
    ids=["top_k=0", "top_k=-1", "top_k='2'", "threshold=NaN"],
)
async def test_top_k_and_score_threshold_are_checked_as_the_engine_does(stand_in, top_k, score_threshold, error,
                                                                      message):
    """Also where the list goes as several requests, whose parts the server never sees top_k for; nothing is sent."""
    url = _url(stand_in)
    stand_in.answers["/info"] = (200, {"Content-Type": "application/json"}, b'{"max_client_batch_size": 2}', 0)
    stand_in.answers["/ettin/v1/rerank"] = (200, {"Content-Type": "application/json"}, _ranking(0), 0)
    client = RemoteReranker(url)
    with pytest.raises(error, match=message):
        client.rerank(QUERY, ["a", "b", "c"], top_k, score_threshold=score_threshold)
    with pytest.raises(error, match=message):
        await client.arerank(QUERY, ["a", "b", "c"], top_k, score_threshold=score_threshold)
    with pytest.raises(error, match=message):
        client.rerank(QUERY, [], top_k, score_threshold=score_threshold)  # as the engine: even with no documents
    assert stand_in.seen == []
    client.close()


@pytest.mark.parametrize(
    ("pairs", "error", "message"),
    [("q a", TypeError, r"pairs must be a list of \(query, document\) tuples, but got str"),
     ([("q", "a"), ("q",)], TypeError, r"pairs\[1\] must be a \(query, document\) pair"),
     ([("q", "a"), (" ", "b")], ValueError, r"pairs\[1\]\[0\] must not be empty"),
     ([("q", "a"), ("q", 7)], TypeError, r"pairs\[1\]\[1\] must be a string, but got int"),
     ([("q", "a"), ("r", "\ud800")], ValueError, r"pairs\[1\]\[1\] is not valid Unicode")],
    ids=["a string", "a single", "an empty query", "a number", "a lone surrogate"],
)
def test_score_pairs_checks_its_pairs_as_the_engine_does(stand_in, pairs, error, message):
    client = RemoteReranker(_url(stand_in))
    with pytest.raises(error, match=message):
        client.score_pairs(pairs)
    assert stand_in.seen == []
    client.close()


def test_score_pairs_of_several_queries_stays_within_one_timeout(stand_in):
    """Two queries are two requests, but one call: the second gets what the first left of the timeout."""
    url = _url(stand_in)
    stand_in.answers["/info"] = (200, {"Content-Type": "application/json"}, b"{}", 0)
    stand_in.answers["/ettin/v1/rerank"] = (200, {"Content-Type": "application/json"}, _ranking(0), 0.7)
    client = RemoteReranker(url, timeout=1.0)
    assert client.score_pairs([("q", "a")]) == [0.5]
    start = time.monotonic()
    with pytest.raises(RemoteRerankError, match=rf"server at {url}/ettin/v1/rerank did not answer within the "
                       r"timeout of 1 s"):
        client.score_pairs([("q", "a"), ("r", "b")])
    assert time.monotonic() - start < 1.5
    client.close()


@pytest.mark.parametrize("timeout", [True, "5", 0, -1.0, float("nan")], ids=repr)
def test_a_timeout_that_is_not_seconds_is_refused_at_construction(timeout):
    message = rf"timeout must be a number of seconds > 0, but got {re.escape(repr(timeout))}"
    with pytest.raises(ValueError, match=message):
        RemoteSpec("http://127.0.0.1:1", timeout=timeout)
    with pytest.raises(ValueError, match=message):
        EttinRanker(url="http://127.0.0.1:1", timeout=timeout)
    with pytest.raises(ValueError, match=message):
        RemoteReranker("http://127.0.0.1:1", timeout=timeout)
