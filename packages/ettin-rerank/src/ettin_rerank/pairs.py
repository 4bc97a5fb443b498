"""(query, document) pairs tokenized and cut into windows, ready to score; window scores back into results.

This is the engine's pair-level unit of work: :meth:`Reranker.prepare` builds one, anything may score its
``windows`` (the engine in one call, or the server's batcher together with other requests' windows), and
:meth:`PreparedPairs.results` turns the window scores into one :class:`RerankResult` per pair, in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ettin_rerank.long_documents import aggregate
from ettin_rerank.results import RerankResult, TextSpan
from ettin_rerank.tokenization import EncodedDocument, Window


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


def _span(doc: EncodedDocument, start: int, end: int) -> TextSpan:
    if end <= start:
        return TextSpan(start, end, 0, 0)
    return TextSpan(start, end, doc.offsets[start][0], doc.offsets[end - 1][1])
