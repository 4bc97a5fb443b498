"""A client of an ettin-rerank server (``ettin-rerank serve``) that returns what the in-process engine returns.

It speaks the server's own route (``POST /ettin/v1/rerank``), which carries every engine option and every result
field, so an adapter in remote mode gives the same ranking, scores and metadata as with a local model:

- the ``model`` named is the one that scores (a server of several models routes by it; one of one model takes
  any name, unless it was started with ``--strict-model-name``); one the server does not serve is an error that
  lists those it does, never another model's scores;
- every option is sent as the caller set it (``max_tokens_per_doc=None`` is sent as ``null``: read everything,
  not the server's default cap);
- a list longer than the server takes in one request (``max_client_batch_size`` in its ``GET /info``, asked
  until it answers 200) goes as several requests, and the results are merged back into one ranking with the
  caller's indices;
- one call never outlives its ``timeout``: 429 and 503 answers are retried after their ``Retry-After`` (twice, as
  the Cohere SDK does) only while that fits in what is left of it, and the server is told the time left
  (``X-Request-Timeout``);
- whatever goes wrong is one :class:`~ettin_rerank.errors.RemoteRerankError` naming the URL and what came back
  (no answer, an error status with the server's message, a body that is not an ettin-rerank ranking).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx

from ettin_rerank.errors import RemoteRerankError
from ettin_rerank.options import RerankOptions
from ettin_rerank.results import RerankResult, TextSpan, rank
from ettin_rerank.validation import (
    check_documents,
    check_encodable,
    check_pairs,
    check_query,
    check_threshold,
    check_top_k,
)

__all__ = ["RemoteRerankError", "RemoteReranker"]

RETRIED = (429, 503)
ROUTE = "/ettin/v1/rerank"
_UNKNOWN = -1


class RemoteReranker:
    """``rerank``/``arerank`` against a server, with the engine's signature and results.

    Args:
        base_url: The server, e.g. ``"http://127.0.0.1:8080"``.
        model: The served model to score with: its served name, or the model as given to ``serve --model``
            (``None``: the server's first).
        api_key: Sent as ``Authorization: Bearer <api_key>`` when the server requires one.
        timeout: Seconds one call may take in all, retries and split requests included.
        max_retries: Retries of a 429/503 answer, each after the server's ``Retry-After``.
    """

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 2) -> None:
        check_server(base_url, timeout, model)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._sync = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout)
        self._async_options = {"base_url": self.base_url, "headers": headers, "timeout": self.timeout}
        self._per_request = _UNKNOWN

    # ------------------------------------------------------------------ the engine's verbs

    def rerank(self, query: str, documents: Sequence[str], top_k: int | None = None, *,
               score_threshold: float | None = None, options: RerankOptions | None = None,
               **overrides: Any) -> list[RerankResult]:
        """As :meth:`ettin_rerank.Reranker.rerank`, computed by the server."""
        documents, top_k, score_threshold = _checked(query, documents, top_k, score_threshold)
        return self._ranked(query, documents, top_k, score_threshold, sent=_given(options, overrides),
                            deadline=time.monotonic() + self.timeout)

    async def arerank(self, query: str, documents: Sequence[str], top_k: int | None = None, *,
                      score_threshold: float | None = None, options: RerankOptions | None = None,
                      **overrides: Any) -> list[RerankResult]:
        """As :meth:`ettin_rerank.Reranker.arerank`, computed by the server (split requests go concurrently)."""
        documents, top_k, score_threshold = _checked(query, documents, top_k, score_threshold)
        if not documents:
            return []
        deadline = time.monotonic() + self.timeout
        async with httpx.AsyncClient(**self._async_options) as client:
            limit = self._per_request
            if limit == _UNKNOWN:
                limit = self._learn_limit(await self._get_async(client, "/info", deadline))
            parts = _parts(len(documents), limit)
            sent = _given(options, overrides)

            async def part(start: int, end: int) -> list[RerankResult]:
                body = self._body(query, documents[start:end], top_k if len(parts) == 1 else None, score_threshold,
                                  sent)
                response = await self._post_async(client, body, deadline)
                return _shifted(_parse(response, self._url(ROUTE), end - start), start)

            answers = await asyncio.gather(*(part(start, end) for start, end in parts))
        results = [result for answer in answers for result in answer]
        return results if len(parts) == 1 else rank(results, top_k)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, options: RerankOptions | None = None,
                    **overrides: Any) -> list[float]:
        """As :meth:`ettin_rerank.Reranker.score_pairs`: scores in input order (one request per distinct query,
        all of them within one ``timeout``)."""
        checked = check_pairs(pairs)
        check_encodable(checked.queries, checked.query_name)
        check_encodable([document for _, document in checked.items], checked.document_name)
        sent = _given(options, overrides)
        deadline = time.monotonic() + self.timeout
        positions: list[list[int]] = [[] for _ in checked.queries]
        for position, (query_number, _) in enumerate(checked.items):
            positions[query_number].append(position)
        scores = [0.0] * len(checked.items)
        for query, owned in zip(checked.queries, positions, strict=True):
            documents = [checked.items[position][1] for position in owned]
            for result in self._ranked(query, documents, None, None, sent=sent, deadline=deadline):
                scores[owned[result.index]] = result.score
        return scores

    def _ranked(self, query: str, documents: list[str], top_k: int | None, score_threshold: float | None, *,
                sent: dict[str, Any], deadline: float) -> list[RerankResult]:
        """:meth:`rerank` of checked arguments, all of its requests done by ``deadline``."""
        if not documents:
            return []
        limit = self._per_request
        if limit == _UNKNOWN:
            limit = self._learn_limit(self._get_sync("/info", deadline))
        parts = _parts(len(documents), limit)
        results = []
        for start, end in parts:
            body = self._body(query, documents[start:end], top_k if len(parts) == 1 else None, score_threshold, sent)
            results.extend(_shifted(_parse(self._post_sync(body, deadline), self._url(ROUTE), end - start), start))
        return results if len(parts) == 1 else rank(results, top_k)

    def close(self) -> None:
        self._sync.close()

    def _body(self, query: str, documents: list[str], top_k: int | None, score_threshold: float | None,
              options: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.model, "query": query, "documents": documents, "top_k": top_k,
                "score_threshold": score_threshold, "options": options}

    def _learn_limit(self, info: httpx.Response) -> int | None:
        """This call's documents per request, from the server's ``GET /info``; kept for later calls only when the
        server answered it (a 503 while its model loads, a proxy's error page during a rollout: ask again next
        call)."""
        limit = _documents_per_request(info)
        if info.status_code == 200:
            self._per_request = limit
        return limit

    # ------------------------------------------------------------------ HTTP, bounded by the call's deadline

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _get_sync(self, path: str, deadline: float) -> httpx.Response:
        remaining = self._remaining(deadline, path)
        try:
            return self._sync.get(path, timeout=remaining)
        except httpx.HTTPError as error:
            raise self._no_answer(error, path) from error

    async def _get_async(self, client: httpx.AsyncClient, path: str, deadline: float) -> httpx.Response:
        remaining = self._remaining(deadline, path)
        try:
            return await client.get(path, timeout=remaining)
        except httpx.HTTPError as error:
            raise self._no_answer(error, path) from error

    def _post_sync(self, body: dict[str, Any], deadline: float) -> httpx.Response:
        attempt = 0
        while True:
            remaining = self._remaining(deadline, ROUTE)
            try:
                response = self._sync.post(ROUTE, json=body, timeout=remaining, headers=_time_left(remaining))
            except httpx.HTTPError as error:
                raise self._no_answer(error, ROUTE) from error
            wait = self._retry_wait(response, attempt, deadline)
            if wait is None:
                return response
            time.sleep(wait)
            attempt += 1

    async def _post_async(self, client: httpx.AsyncClient, body: dict[str, Any], deadline: float) -> httpx.Response:
        attempt = 0
        while True:
            remaining = self._remaining(deadline, ROUTE)
            try:
                response = await client.post(ROUTE, json=body, timeout=remaining, headers=_time_left(remaining))
            except httpx.HTTPError as error:
                raise self._no_answer(error, ROUTE) from error
            wait = self._retry_wait(response, attempt, deadline)
            if wait is None:
                return response
            await asyncio.sleep(wait)
            attempt += 1

    def _remaining(self, deadline: float, path: str) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out(path)
        return remaining

    def _timed_out(self, path: str) -> RemoteRerankError:
        url = self._url(path)
        return RemoteRerankError(f"the ettin-rerank server at {url} did not answer within the timeout of "
                                 f"{self.timeout:g} s", url=url)

    def _retry_wait(self, response: httpx.Response, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before trying again, ``None`` to keep this answer (it is not a 429/503, or it is the last
        try); an error when the server asks for more time than the call has left."""
        if response.status_code not in RETRIED or attempt == self.max_retries:
            return None
        wait = _retry_after(response)
        left = deadline - time.monotonic()
        if wait >= left:
            msg = (f"the ettin-rerank server at {self._url(ROUTE)} answered {response.status_code} "
                   f"({_message(response)}) and asked to retry after {wait:g} s, more than the {max(left, 0):.1f} s "
                   f"left of this call's timeout of {self.timeout:g} s")
            raise RemoteRerankError(msg, url=self._url(ROUTE), status=response.status_code)
        return wait

    def _no_answer(self, error: httpx.HTTPError, path: str) -> RemoteRerankError:
        if isinstance(error, httpx.TimeoutException):
            return self._timed_out(path)
        url = self._url(path)
        if isinstance(error, httpx.ConnectError):
            msg = (f"could not connect to the ettin-rerank server at {url}: {error or type(error).__name__} "
                   "(is `ettin-rerank serve` running there?)")
        else:
            msg = f"the ettin-rerank server at {url} gave no answer: {type(error).__name__}: {error}"
        return RemoteRerankError(msg, url=url)


def check_server(base_url: Any, timeout: Any, model: Any = None) -> None:
    """Raise ``ValueError`` naming ``base_url`` unless it is an http(s) URL, ``timeout`` unless it is a number of
    seconds > 0 (not a bool, not a string), ``model`` unless it is ``None`` or a name. :class:`RemoteReranker` and
    the adapters' ``RemoteSpec`` check with it."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        msg = f"base_url must be an http(s) URL such as 'http://127.0.0.1:8080', but got {base_url!r}"
        raise ValueError(msg)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        msg = f"timeout must be a number of seconds > 0, but got {timeout!r}"
        raise ValueError(msg)
    if model is not None and (not isinstance(model, str) or not model.strip()):
        msg = f"model must name a model the server serves (or be None: its first), but got {model!r}"
        raise ValueError(msg)


def _checked(query: str, documents: Sequence[str], top_k: int | None,
             score_threshold: float | None) -> tuple[list[str], int | None, float | None]:
    """The checks the engine makes, made before anything is sent (same errors in remote mode, split or not)."""
    top_k, score_threshold = check_top_k(top_k), check_threshold(score_threshold)
    check_query(query)
    documents = check_documents(documents)
    check_encodable([query], lambda _: "query")
    check_encodable(documents, "documents")
    return documents, top_k, score_threshold


def _given(options: RerankOptions | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The options to send: every field of ``options`` as set (``None`` included: ``max_tokens_per_doc=None`` means
    "read everything") with the keyword overrides merged in as the engine merges them. Without ``options``, only
    the overrides that are not ``None``: the server's defaults apply to the rest."""
    if options is None:
        return {name: value for name, value in overrides.items() if value is not None}
    return options.merged(overrides).as_dict()


def _parts(count: int, per_request: int | None) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of at most ``per_request`` documents (one range when there is no limit)."""
    size = per_request if per_request and per_request > 0 else count
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def _shifted(results: list[RerankResult], start: int) -> list[RerankResult]:
    return [replace(result, index=result.index + start) for result in results] if start else results


def _time_left(remaining: float) -> dict[str, str]:
    """Tell the server how long this call can still wait (it answers 503 rather than work for nobody)."""
    return {"X-Request-Timeout": f"{remaining:.3f}"}


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _documents_per_request(response: httpx.Response) -> int | None:
    """``max_client_batch_size`` from the server's ``GET /info`` (TEI's name), or ``None`` when it has none: then
    everything goes in one request, and an over-limit answer is reported as such."""
    if response.status_code != 200:
        return None
    try:
        value = response.json().get("max_client_batch_size")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _excerpt(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _message(response: httpx.Response) -> str:
    """The server's own words for an error answer (Cohere's ``message``, FastAPI's ``detail``, TEI's ``error``)."""
    try:
        data = response.json()
    except ValueError:
        return _excerpt(response.text) if response.text.strip() else "an empty body"
    if isinstance(data, dict):
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])
    return _excerpt(response.text)


_HINTS = {
    401: " (give api_key=..., or set ETTIN_API_KEY)",
    404: " (is base_url an `ettin-rerank serve` server, and model= one it serves? GET /v1/models lists them)",
    405: " (is base_url an `ettin-rerank serve` server? this one has no POST /ettin/v1/rerank)",
}


def _parse(response: httpx.Response, url: str, count: int) -> list[RerankResult]:
    """The results of an answer to ``count`` documents, or one error naming ``url`` and what came back."""
    status = response.status_code
    if status != 200:
        msg = f"the ettin-rerank server at {url} answered {status}: {_message(response)}{_HINTS.get(status, '')}"
        raise RemoteRerankError(msg, url=url, status=status)
    not_ours = f"the server at {url} answered 200, but not with an ettin-rerank ranking"
    try:
        data = response.json()
    except ValueError:
        msg = f"{not_ours}: the body is not JSON ({_excerpt(response.text)}); is base_url an ettin-rerank server?"
        raise RemoteRerankError(msg, url=url, status=status) from None
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        msg = f"{not_ours}: no 'results' list in {_excerpt(response.text)}; is base_url an ettin-rerank server?"
        raise RemoteRerankError(msg, url=url, status=status)
    results, seen = [], set()
    for position, row in enumerate(rows):
        try:
            result = _result(row)
        except (TypeError, ValueError) as error:
            msg = f"{not_ours}: results[{position}] {error} ({_excerpt(json.dumps(row))})"
            raise RemoteRerankError(msg, url=url, status=status) from None
        if not 0 <= result.index < count or result.index in seen:
            msg = (f"{not_ours}: results[{position}] has index {result.index}, "
                   f"{'a repeat' if result.index in seen else f'not one of the {count} documents sent'}")
            raise RemoteRerankError(msg, url=url, status=status)
        seen.add(result.index)
        results.append(result)
    return results


def _result(row: Any) -> RerankResult:
    """One row of the native route's answer, every field checked (a ``ValueError`` says which is wrong)."""
    if not isinstance(row, dict):
        msg = f"is a {type(row).__name__}, not an object"
        raise TypeError(msg)
    values = {name: _field(row, name, kind) for name, kind in (
        ("index", int), ("score", (int, float)), ("logit", (int, float)), ("num_tokens", int), ("num_windows", int),
        ("truncated", bool), ("best_window", dict))}
    span = TextSpan(**{name: _field(values["best_window"], name, int)
                       for name in ("token_start", "token_end", "char_start", "char_end")})
    return RerankResult(**{**values, "score": float(values["score"]), "logit": float(values["logit"]),
                           "best_window": span})


def _field(row: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in row:
        msg = f"has no {name!r} (keys: {', '.join(map(str, row)) or 'none'})"
        raise ValueError(msg)
    value = row[name]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        msg = f"has {name!r} = {value!r}, not a {kind.__name__ if isinstance(kind, type) else 'number'}"
        raise ValueError(msg)
    return value
