"""Pairs -> windows -> results: how (query, document) pairs become model inputs, and window scores a result.

Long documents:

- ``"max"`` (default): overlapping windows of equal size on token boundaries cover every token; the document
  gets the best window's score.
- ``"mean"``: the same windows; the document gets the mean of their (raw) scores.
- ``"truncate"``: only the head of the document is read (what Sentence Transformers does), and the result says so.

A query may take at most half of ``max_length``: a longer query raises ``ValueError`` instead of being cut (unless
the call asks for ``truncate_query=True``, as the framework adapters do: then it is cut, with a warning).

:func:`prepare_pairs` builds a :class:`PreparedPairs`, the engine's pair-level unit of work: anything may score its
``windows`` (the engine in one call, or the server's batcher together with other requests' windows), and
:meth:`PreparedPairs.results` turns the window scores into one :class:`RerankResult` per pair, in input order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ettin_rerank.engine.activation import Calibration, activate
from ettin_rerank.engine.tokenization import EncodedDocument, PairTokenizer, Window
from ettin_rerank.options import RerankOptions
from ettin_rerank.results import RerankResult, TextSpan
from ettin_rerank.validation import check_encodable

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class PreparedPairs:
    """Everything needed to score some pairs and report on them.

    Attributes:
        items: ``(query number, document)`` per pair; ``index`` in the results counts pairs per query.
        documents: Each pair's document tokens (before any cut) and character offsets.
        windows: The model inputs; ``window.pair`` says which pair each belongs to.
        strategy: The long-document strategy that laid out the windows.
        activate: Logit -> reported score.
    """

    items: list[tuple[int, str]]
    documents: list[EncodedDocument]
    windows: list[Window]
    strategy: str
    activate: Callable[[float], float]

    @property
    def num_tokens(self) -> int:
        """Tokens the model will read for these pairs (all windows, special tokens included)."""
        return sum(len(w.input_ids) for w in self.windows)

    def results(self, window_scores: Sequence[float]) -> list[RerankResult]:
        """One result per pair, in input order, from the raw scores of :attr:`windows` (same order)."""
        per_pair: list[list[int]] = [[] for _ in self.items]
        for position, window in enumerate(self.windows):
            per_pair[window.pair].append(position)
        results = []
        counters: dict[int, int] = {}
        for pair, (query, _) in enumerate(self.items):
            doc = self.documents[pair]
            positions = per_pair[pair]
            logit, best = aggregate([float(window_scores[p]) for p in positions], self.strategy)
            window = self.windows[positions[best]]
            first = min(self.windows[p].token_start for p in positions)
            read = max(self.windows[p].token_end for p in positions) - first  # windows cover [first, ...) without gaps
            index = counters.get(query, 0)
            counters[query] = index + 1
            results.append(
                RerankResult(
                    index=index,
                    score=self.activate(logit),
                    logit=logit,
                    num_tokens=len(doc.ids),
                    num_windows=len(positions),
                    truncated=read < len(doc.ids),
                    best_window=_span(doc, window.token_start, window.token_end),
                )
            )
        return results


def prepare_pairs(
    tokenizer: PairTokenizer,
    queries: Sequence[str],
    items: Sequence[tuple[int, str]],
    options: RerankOptions,
    calibration: Calibration | None,
    *,
    name: Callable[[int], str],
    query_name: Callable[[int], str],
) -> PreparedPairs:
    """Tokenize ``(query number, document)`` items and lay out their windows under resolved ``options`` (their
    ``max_length`` set). ``name`` and ``query_name`` label inputs in errors."""
    num_special = tokenizer.template.num_special
    limit = query_limit(options.max_length, num_special)
    query_ids = [encode_query(tokenizer, q, functools.partial(query_name, i), limit, options)
                 for i, q in enumerate(queries)]
    budgets = [document_budget(options.max_length, len(ids), num_special) for ids in query_ids]
    texts = [doc for _, doc in items]
    try:
        encoded = tokenizer.encode_documents(texts)
    except (TypeError, ValueError, RuntimeError, UnicodeError):
        check_encodable(texts, name)  # raises naming the culprit (a lone surrogate, say)
        raise
    windows: list[Window] = []
    overlap = options.overlap_for(options.max_length)
    keep_tail = options.truncation_direction == "left"
    for pair, ((q, _), doc) in enumerate(zip(items, encoded, strict=True)):
        readable = len(doc.ids) if options.max_tokens_per_doc is None else min(len(doc.ids),
                                                                                options.max_tokens_per_doc)
        first = len(doc.ids) - readable if keep_tail else 0
        for start, end in window_spans(readable, budgets[q], options.long_document_strategy, overlap, start=first,
                                       keep_tail=keep_tail):
            windows.append(tokenizer.build(pair, query_ids[q], doc.ids, start, end))
    activation = functools.partial(activate, activation=options.activation,
                                   calibration_factor=options.calibration_factor, calibration=calibration)
    return PreparedPairs(items=list(items), documents=encoded, windows=windows,
                         strategy=options.long_document_strategy, activate=activation)


def encode_query(tokenizer: PairTokenizer, query: str, name: Callable[[], str], limit: int,
                 options: RerankOptions) -> list[int]:
    """The query's token ids; a query longer than ``limit`` is cut (with a warning) only if the options say so."""
    try:
        ids = tokenizer.encode_query(query)
    except (TypeError, ValueError, RuntimeError, UnicodeError):
        check_encodable([query], lambda _: name())
        raise
    if not ids:
        msg = f"{name()} has no tokens for this model (only characters its tokenizer drops); give it some text"
        raise ValueError(msg)
    if len(ids) > limit and options.truncate_query:
        logger.warning("%s is %d tokens long; only its first %d tokens are read (half of max_length=%d)",
                       name(), len(ids), limit, options.max_length)
        ids = ids[:limit]
    return ids


def _span(doc: EncodedDocument, start: int, end: int) -> TextSpan:
    if end <= start:
        return TextSpan(start, end, 0, 0)
    return TextSpan(start, end, doc.offsets[start][0], doc.offsets[end - 1][1])
