"""What happens to a document longer than the window: the strategies and how windows are laid out.

- ``"max"`` (default): overlapping windows of equal size on token boundaries cover every token; the document
  gets the best window's score.
- ``"mean"``: the same windows; the document gets the mean of their (raw) scores.
- ``"truncate"``: only the head of the document is read (what Sentence Transformers does), and the result says so.

A query may take at most half of ``max_length``: a longer query raises ``ValueError`` instead of being cut (unless
the call asks for ``truncate_query=True``, as the framework adapters do: then it is cut, with a warning).
"""

from __future__ import annotations

from typing import Literal

LongDocumentStrategy = Literal["max", "mean", "truncate"]
STRATEGIES: tuple[str, ...] = ("max", "mean", "truncate")
MAX_QUERY_SHARE = 0.5


def query_limit(max_length: int, num_special: int) -> int:
    """The most query tokens a window of ``max_length`` tokens takes (half of it, special tokens included)."""
    return int(max_length * MAX_QUERY_SHARE) - num_special


def document_budget(max_length: int, query_tokens: int, num_special: int) -> int:
    """Document tokens that fit in one window next to the query; raises ``ValueError`` for an oversized query."""
    limit = query_limit(max_length, num_special)
    if query_tokens > limit:
        msg = (
            f"query is {query_tokens} tokens long, but a query may use at most half of max_length "
            f"({limit} tokens with max_length={max_length}); shorten the query or raise max_length"
        )
        raise ValueError(msg)
    return max_length - query_tokens - num_special


def window_spans(num_tokens: int, budget: int, strategy: str, overlap: int, *, start: int = 0,
                 keep_tail: bool = False) -> list[tuple[int, int]]:
    """Token spans ``[start, end)`` of the windows to score for the tokens ``[start, start + num_tokens)`` of a
    document.

    Past the window, the fewest windows of at most ``budget`` tokens that overlap by at least ``overlap``
    tokens, all of the same size and evenly spread, cover every token. Equal windows are cheaper than
    full windows plus a small remainder: global attention costs grow with the square of the window.
    ``"truncate"`` reads the head (or the tail, with ``keep_tail``).
    """
    if start:
        return [(s + start, e + start) for s, e in window_spans(num_tokens, budget, strategy, overlap,
                                                                 keep_tail=keep_tail)]
    if num_tokens <= budget:
        return [(0, num_tokens)]
    if strategy == "truncate":
        return [(num_tokens - budget, num_tokens)] if keep_tail else [(0, budget)]
    if overlap >= budget:
        msg = f"window_overlap ({overlap}) must be smaller than the document window ({budget} tokens)"
        raise ValueError(msg)
    count = -(-(num_tokens - overlap) // (budget - overlap))
    size = min(budget, -(-(num_tokens + (count - 1) * overlap) // count))
    last_start = num_tokens - size
    return [(start, start + size) for start in (round(i * last_start / (count - 1)) for i in range(count))]


def aggregate(scores: list[float], strategy: str) -> tuple[float, int]:
    """The document's score from its window scores, and the index of the best window."""
    best = max(range(len(scores)), key=scores.__getitem__)
    if strategy == "mean":
        return sum(scores) / len(scores), best
    return scores[best], best
