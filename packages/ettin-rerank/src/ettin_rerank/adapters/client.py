"""A client of an ettin-rerank server (``ettin-rerank serve``) that returns what the in-process engine returns.

It speaks the server's own route (``POST /ettin/v1/rerank``), which carries every engine option and every result
field, so an adapter in remote mode gives the same ranking, scores and metadata as with a local model. 429 and 503
answers are retried after their ``Retry-After`` (twice, as the Cohere SDK does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx

from ettin_rerank.errors import RemoteRerankError
from ettin_rerank.options import RerankOptions
from ettin_rerank.results import RerankResult, TextSpan
from ettin_rerank.validation import check_documents, check_query

__all__ = ["RemoteRerankError", "RemoteReranker"]

RETRIED = (429, 503)


class RemoteReranker:
    """``rerank``/``arerank`` against a server, with the engine's signature and results.

    Args:
        base_url: The server, e.g. ``"http://127.0.0.1:8080"``.
        api_key: Sent as ``Authorization: Bearer <api_key>`` when the server requires one.
        timeout: Seconds to wait for an answer.
        max_retries: Retries of a 429/503 answer, each after the server's ``Retry-After``.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 2) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            msg = f"base_url must be an http(s) URL such as 'http://127.0.0.1:8080', but got {base_url!r}"
            raise ValueError(msg)
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._sync = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._async_options = {"base_url": self.base_url, "headers": headers, "timeout": timeout}

    @staticmethod
    def _body(query: str, documents: Sequence[str], top_k: int | None, score_threshold: float | None,
              options: dict[str, Any]) -> dict[str, Any]:
        check_query(query)
        return {"query": query, "documents": check_documents(documents), "top_k": top_k,
                "score_threshold": score_threshold, "options": {k: v for k, v in options.items() if v is not None}}

    def rerank(self, query: str, documents: Sequence[str], top_k: int | None = None, *,
               score_threshold: float | None = None, options: RerankOptions | None = None,
               **overrides: Any) -> list[RerankResult]:
        """As :meth:`ettin_rerank.Reranker.rerank`, computed by the server."""
        if not documents:
            return []
        body = self._body(query, documents, top_k, score_threshold, _given(options, overrides))
        for _ in range(self.max_retries):
            response = self._sync.post("/ettin/v1/rerank", json=body)
            if response.status_code not in RETRIED:
                return _results(response)
            time.sleep(_retry_after(response))
        return _results(self._sync.post("/ettin/v1/rerank", json=body))

    async def arerank(self, query: str, documents: Sequence[str], top_k: int | None = None, *,
                      score_threshold: float | None = None, options: RerankOptions | None = None,
                      **overrides: Any) -> list[RerankResult]:
        """As :meth:`ettin_rerank.Reranker.arerank`, computed by the server."""
        if not documents:
            return []
        body = self._body(query, documents, top_k, score_threshold, _given(options, overrides))
        async with httpx.AsyncClient(**self._async_options) as client:
            for _ in range(self.max_retries):
                response = await client.post("/ettin/v1/rerank", json=body)
                if response.status_code not in RETRIED:
                    return _results(response)
                await asyncio.sleep(_retry_after(response))
            return _results(await client.post("/ettin/v1/rerank", json=body))

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, options: RerankOptions | None = None,
                    **overrides: Any) -> list[float]:
        """Scores of ``(query, document)`` pairs in input order (one request per distinct query)."""
        by_query: dict[str, list[int]] = {}
        for position, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(position)
        scores = [0.0] * len(pairs)
        for query, positions in by_query.items():
            for result in self.rerank(query, [pairs[p][1] for p in positions], options=options, **overrides):
                scores[positions[result.index]] = result.score
        return scores

    def close(self) -> None:
        self._sync.close()


def _given(options: RerankOptions | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The options to send: the object's, then the keyword overrides."""
    return {**(options.as_dict() if options is not None else {}), **overrides}


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(30.0, max(0.0, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def _results(response: httpx.Response) -> list[RerankResult]:
    try:
        data = response.json()
    except ValueError:
        data = {"message": response.text[:200]}
    if response.status_code != 200:
        message = data.get("message") or data.get("detail") or data.get("error") if isinstance(data, dict) else data
        raise RemoteRerankError(response.status_code, str(message))
    return [
        RerankResult(index=row["index"], score=row["score"], logit=row["logit"], num_tokens=row["num_tokens"],
                     num_windows=row["num_windows"], truncated=row["truncated"],
                     best_window=TextSpan(**row["best_window"]))
        for row in data["results"]
    ]
