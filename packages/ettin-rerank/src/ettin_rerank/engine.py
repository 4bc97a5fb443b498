"""The reranking engine: load a cross-encoder once, then score (query, document) pairs fast."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from ettin_rerank.attention import BACKENDS, resolve_attention
from ettin_rerank.batching import token_budget_batches
from ettin_rerank.device import resolve_device, resolve_dtype
from ettin_rerank.loading import HubOptions, load_cross_encoder, resolve_model_path
from ettin_rerank.long_documents import aggregate, check_strategy, document_budget, window_spans
from ettin_rerank.results import RerankResult, TextSpan
from ettin_rerank.scorers import PackedModernBertScorer, PaddedScorer, Scorer
from ettin_rerank.tokenization import EncodedDocument, PairTokenizer, Window
from ettin_rerank.validation import check_documents, check_positive, check_query, check_top_k

logger = logging.getLogger(__name__)

Activation = Literal["none", "sigmoid"]
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}


@dataclass(frozen=True)
class _CallOptions:
    max_length: int
    strategy: str
    overlap: int
    activation: str


class Reranker:
    """A cross-encoder reranker: an Ettin size, a Sentence Transformers CrossEncoder folder or a hub id.

    Loads once (``__init__``) and is safe to share between threads.

    Args:
        model: ``"17m"``, ``"32m"``, ``"68m"``, ``"150m"``, ``"400m"``, ``"1b"``, a local folder or a hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... Defaults to CUDA when available.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``. Defaults to bfloat16 on CUDA and on CPUs with native
            bfloat16, float32 otherwise. Use ``"float32"`` for scores that match Sentence Transformers to 1e-4.
        max_length: Tokens per (query + document) window, special tokens included. Defaults to the model's
            limit (7,999 for the Ettin rerankers).
        long_document_strategy: ``"max"`` (default), ``"mean"`` or ``"truncate"``: what to do with a document longer
            than the window (see :mod:`ettin_rerank.long_documents`).
        window_overlap: Tokens shared by consecutive windows of a long document. Defaults to 128.
        activation: ``"none"`` returns raw logits (as the models ship), ``"sigmoid"`` squashes them into (0, 1).
        batch_tokens: Token budget of one forward pass. Defaults to 2,048 on CPU and 65,536 on CUDA.
        attention: ``"sdpa"``, ``"flash_attn"`` or ``"varlen"``; ``None`` picks the fastest available.
        revision: Hub revision (branch, tag or commit) for hub ids.
        token: Hub token for private models.
        cache_folder: Hugging Face cache folder.
        local_files_only: Never contact the hub (also implied by ``HF_HUB_OFFLINE=1``).
        trust_remote_code: Allow custom modelling code from the checkpoint. Off by default.
        show_progress_bar: Show a progress bar over batches. Defaults to on when logging is at INFO or DEBUG.

    Example:
        ::

            from ettin_rerank import Reranker

            reranker = Reranker("17m")
            for hit in reranker.rerank("what is a cross-encoder?", documents, top_k=3):
                print(hit.index, hit.score)
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = "17m",
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        long_document_strategy: str = "max",
        window_overlap: int = 128,
        activation: Activation = "none",
        batch_tokens: int | None = None,
        attention: str | None = None,
        revision: str | None = None,
        token: bool | str | None = None,
        cache_folder: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        show_progress_bar: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        default_budget = DEFAULT_BATCH_TOKENS.get(self.device.type, 8192)
        self.batch_tokens = check_positive(default_budget if batch_tokens is None else batch_tokens, "batch_tokens")
        if attention is not None and attention not in BACKENDS:
            msg = f"attention must be one of {', '.join(BACKENDS)} or None, but got {attention!r}"
            raise ValueError(msg)
        hub = HubOptions(revision=revision, token=token, cache_folder=cache_folder, local_files_only=local_files_only)
        self.model_path = resolve_model_path(model, hub)
        self.model_name = str(model)
        self._cross_encoder = load_cross_encoder(
            self.model_path, device=self.device, dtype=self.dtype, trust_remote_code=trust_remote_code
        )
        self.model_max_length = int(self._cross_encoder.max_seq_length or 512)
        self._defaults = self._options(max_length, long_document_strategy, window_overlap, activation, base=None)
        self._pair_tokenizer = PairTokenizer(self._cross_encoder.tokenizer)
        self.show_progress_bar = show_progress_bar
        if PackedModernBertScorer.supports(self._cross_encoder):
            self.attention, attention_fn = resolve_attention(attention, self.device, self.dtype)
            self._scorer: Scorer = PackedModernBertScorer(self._cross_encoder, self.device, attention_fn)
        else:
            if attention not in (None, "sdpa"):
                msg = f"attention={attention!r} needs a ModernBERT checkpoint; {model!r} runs padded with sdpa"
                raise ValueError(msg)
            self.attention = "sdpa"
            pad_id = self._cross_encoder.tokenizer.pad_token_id or 0
            self._scorer = PaddedScorer(self._cross_encoder, self.device, pad_id)
        logger.info(
            "Loaded %s on %s (%s, attention=%s, max_length=%d)",
            self.model_path, self.device, str(self.dtype).removeprefix("torch."), self.attention,
            self._defaults.max_length,
        )

    def __repr__(self) -> str:
        return (
            f"Reranker(model={self.model_name!r}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, attention={self.attention!r})"
        )

    def _options(self, max_length, strategy, overlap, activation, base: _CallOptions | None) -> _CallOptions:
        base_length = base.max_length if base else self.model_max_length
        if max_length is not None:
            max_length = check_positive(max_length, "max_length")
            if max_length > self.model_max_length:
                msg = f"max_length must be <= the model's limit {self.model_max_length}, but got {max_length}"
                raise ValueError(msg)
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0):
            msg = f"window_overlap must be an integer >= 0, but got {overlap!r}"
            raise ValueError(msg)
        if activation is not None and activation not in ("none", "sigmoid"):
            msg = f"activation must be 'none' or 'sigmoid', but got {activation!r}"
            raise ValueError(msg)
        return _CallOptions(
            max_length=max_length or base_length,
            strategy=check_strategy(strategy) if strategy is not None else base.strategy,
            overlap=overlap if overlap is not None else base.overlap,
            activation=activation or base.activation,
        )

    # ------------------------------------------------------------------ public API

    def score(self, query: str, documents: Sequence[str], **options) -> list[float]:
        """Scores of ``documents`` for ``query``, in input order."""
        query = check_query(query)
        documents = check_documents(documents)
        return [r.score for r in self._run([query], [(0, d) for d in documents], options)]

    def score_pairs(self, pairs: Sequence[tuple[str, str]], **options) -> list[float]:
        """Scores of ``(query, document)`` pairs, in input order; queries may repeat or differ."""
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
            msg = f"pairs must be a list of (query, document) tuples, but got {type(pairs).__name__}"
            raise TypeError(msg)
        queries: dict[str, int] = {}
        items = []
        for position, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                msg = f"pairs[{position}] must be a (query, document) pair, but got {pair!r}"
                raise TypeError(msg)
            query = check_query(pair[0], f"pairs[{position}][0]")
            if not isinstance(pair[1], str):
                msg = f"pairs[{position}][1] must be a string, but got {type(pair[1]).__name__}"
                raise TypeError(msg)
            items.append((queries.setdefault(query, len(queries)), pair[1]))
        return [r.score for r in self._run(list(queries), items, options)]

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        **options,
    ) -> list[RerankResult]:
        """Documents best first, each with its input ``index`` and ``score``.

        Args:
            query: The query.
            documents: Texts to rank; an empty list gives an empty result.
            top_k: Keep the best ``top_k`` (``None`` or more than there are documents: keep all).
            score_threshold: Keep only results scoring at least this much (after ``activation``).
            return_documents: Put each document's text in its result.
            **options: Per-call ``max_length``, ``long_document_strategy``, ``window_overlap``, ``activation``.
        """
        return self.rerank_many(
            [query], [documents], top_k, score_threshold=score_threshold, return_documents=return_documents, **options
        )[0]

    def rerank_many(
        self,
        queries: Sequence[str],
        documents: Sequence[Sequence[str]],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        **options,
    ) -> list[list[RerankResult]]:
        """:meth:`rerank` for many queries in one pass (``documents[i]`` belongs to ``queries[i]``)."""
        top_k = check_top_k(top_k)
        if score_threshold is not None and (isinstance(score_threshold, bool)
                                            or not isinstance(score_threshold, (int, float))):
            msg = f"score_threshold must be a number or None, but got {score_threshold!r}"
            raise TypeError(msg)
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            msg = f"queries must be a list of strings, but got {type(queries).__name__}"
            raise TypeError(msg)
        if isinstance(documents, str) or not isinstance(documents, Sequence) or len(documents) != len(queries):
            msg = "documents must be a list with one list of documents per query"
            raise ValueError(msg)
        queries = [check_query(q, f"queries[{i}]" if len(queries) > 1 else "query") for i, q in enumerate(queries)]
        lists = [check_documents(d, f"documents[{i}]" if len(queries) > 1 else "documents")
                 for i, d in enumerate(documents)]
        items = [(q, doc) for q, docs in enumerate(lists) for doc in docs]
        results = iter(self._run(queries, items, options))
        ranked = []
        for docs in lists:
            rows = [next(results) for _ in docs]
            if return_documents:
                rows = [_with_document(row, docs[row.index]) for row in rows]
            rows.sort(key=lambda r: -r.score)
            if score_threshold is not None:
                rows = [row for row in rows if row.score >= score_threshold]
            ranked.append(rows[:top_k])
        return ranked

    async def ascore(self, query: str, documents: Sequence[str], **options) -> list[float]:
        """:meth:`score` on a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.score, query, documents, **options)

    async def ascore_pairs(self, pairs: Sequence[tuple[str, str]], **options) -> list[float]:
        """:meth:`score_pairs` on a worker thread."""
        return await asyncio.to_thread(self.score_pairs, pairs, **options)

    async def arerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        **options,
    ) -> list[RerankResult]:
        """:meth:`rerank` on a worker thread; concurrent calls run in parallel (PyTorch releases the GIL)."""
        return await asyncio.to_thread(
            self.rerank, query, documents, top_k,
            score_threshold=score_threshold, return_documents=return_documents, **options,
        )

    # ------------------------------------------------------------------ execution

    def _run(self, queries: list[str], items: list[tuple[int, str]], options: dict) -> list[RerankResult]:
        """Score ``(query index, document)`` items; results come back in input order with per-list indices."""
        unknown = set(options) - {"max_length", "long_document_strategy", "window_overlap", "activation"}
        if unknown:
            msg = f"unknown option(s): {', '.join(sorted(unknown))}"
            raise TypeError(msg)
        opts = self._options(
            options.get("max_length"), options.get("long_document_strategy"), options.get("window_overlap"),
            options.get("activation"), base=self._defaults,
        )
        if not items:
            return []
        tok = self._pair_tokenizer
        query_ids = [tok.encode_query(q) for q in queries]
        budgets = [document_budget(opts.max_length, len(ids), tok.template.num_special) for ids in query_ids]
        encoded = tok.encode_documents([doc for _, doc in items])
        windows: list[Window] = []
        for pair, ((q, _), doc) in enumerate(zip(items, encoded, strict=True)):
            for start, end in window_spans(len(doc.ids), budgets[q], opts.strategy, opts.overlap):
                windows.append(tok.build(pair, query_ids[q], doc.ids, start, end))
        window_scores = self._score_windows(windows)
        if opts.activation == "sigmoid":
            window_scores = torch.sigmoid(window_scores)
        return self._collect(items, encoded, windows, window_scores.tolist(), opts.strategy)

    @torch.inference_mode()
    def _score_windows(self, windows: list[Window]) -> torch.Tensor:
        scores = torch.empty(len(windows), dtype=torch.float32)
        batches = token_budget_batches([len(w.input_ids) for w in windows], self.batch_tokens)
        show = self.show_progress_bar
        if show is None:
            show = logger.isEnabledFor(logging.INFO) and len(batches) > 1
        for batch in tqdm(batches, desc="Reranking", unit="batch", disable=not show):
            scores[batch] = self._scorer([windows[i] for i in batch]).cpu()
        return scores

    @staticmethod
    def _collect(
        items: list[tuple[int, str]], encoded: list[EncodedDocument], windows: list[Window], scores: list[float],
        strategy: str,
    ) -> list[RerankResult]:
        per_pair: list[list[int]] = [[] for _ in items]
        for position, window in enumerate(windows):
            per_pair[window.pair].append(position)
        results = []
        counters: dict[int, int] = {}
        for pair, ((query, _), doc) in enumerate(zip(items, encoded, strict=True)):
            positions = per_pair[pair]
            score, best = aggregate([scores[p] for p in positions], strategy)
            window = windows[positions[best]]
            index = counters.get(query, 0)
            counters[query] = index + 1
            results.append(
                RerankResult(
                    index=index,
                    score=float(score),
                    num_tokens=len(doc.ids),
                    num_windows=len(positions),
                    truncated=window.token_end - window.token_start < len(doc.ids) and strategy == "truncate",
                    best_window=_span(doc, window.token_start, window.token_end),
                )
            )
        return results


def _span(doc: EncodedDocument, start: int, end: int) -> TextSpan:
    if end <= start:
        return TextSpan(start, end, 0, 0)
    return TextSpan(start, end, doc.offsets[start][0], doc.offsets[end - 1][1])


def _with_document(result: RerankResult, document: str) -> RerankResult:
    from dataclasses import replace

    return replace(result, document=document)
