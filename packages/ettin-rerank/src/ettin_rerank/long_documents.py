"""What happens to a document longer than the window: the strategies and how windows are laid out.

- ``"max"`` (default): overlapping windows of equal size on token boundaries cover every token; the document
  gets the best window's score.
- ``"mean"``: the same windows; the document gets the mean of their (raw) scores.
- ``"truncate"``: only the head of the document is read (what Sentence Transformers does), and the result says so.

A query may take at most half of ``max_length``: a longer query raises ``ValueError`` instead of being cut.
"""

from __future__ import annotations

from typing import Literal

LongDocumentStrategy = Literal["max", "mean", "truncate"]
STRATEGIES: tuple[str, ...] = ("max", "mean", "truncate")
MAX_QUERY_SHARE = 0.5


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        msg = f"long_document_strategy must be one of {', '.join(STRATEGIES)}, but got {strategy!r}"
        raise ValueError(msg)
    return strategy


def document_budget(max_length: int, query_tokens: int, num_special: int) -> int:
    """Document tokens that fit in one window next to the query; raises ``ValueError`` for an oversized query."""
    limit = int(max_length * MAX_QUERY_SHARE)
    if query_tokens + num_special > limit:
        msg = (
            f"query is {query_tokens} tokens long, but a query may use at most half of max_length "
            f"({limit - num_special} tokens with max_length={max_length}); shorten the query or raise max_length"
        )
        raise ValueError(msg)
    return max_length - query_tokens - num_special


def window_spans(num_tokens: int, budget: int, strategy: str, overlap: int) -> list[tuple[int, int]]:
    """Token spans ``[start, end)`` of the windows to score for a document of ``num_tokens`` tokens.

    Past the window, the fewest windows of at most ``budget`` tokens that overlap by at least ``overlap``
    tokens, all of the same size and evenly spread, cover the whole document. Equal windows are cheaper than
    full windows plus a small remainder: global attention costs grow with the square of the window.
    """
    if num_tokens <= budget:
        return [(0, num_tokens)]
    if strategy == "truncate":
        return [(0, budget)]
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
