"""The reranking engine: load a cross-encoder once, then score (query, document) pairs fast."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ettin_rerank.activation import NOT_CALIBRATED, activate, load_calibration
from ettin_rerank.attention import BACKENDS, resolve_attention
from ettin_rerank.batching import token_budget_batches
from ettin_rerank.device import resolve_device, resolve_dtype
from ettin_rerank.loading import HubOptions, load_cross_encoder, resolve_model_path
from ettin_rerank.long_documents import document_budget, query_limit, window_spans
from ettin_rerank.options import RerankOptions
from ettin_rerank.pairs import PreparedPairs
from ettin_rerank.results import RerankResult, rank
from ettin_rerank.scorers import PackedModernBertScorer, PaddedScorer, Scorer
from ettin_rerank.tokenization import PairTokenizer, Window
from ettin_rerank.validation import (
    check_count,
    check_documents,
    check_encodable,
    check_positive,
    check_query,
    check_threshold,
    check_top_k,
)

logger = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}


class CancelledError(RuntimeError):
    """The caller of a call went away (its asyncio task was cancelled); the work stopped between batches."""


class Reranker:
    """A cross-encoder reranker: an Ettin size, a Sentence Transformers CrossEncoder folder or a hub id.

    Loads once (``__init__``) and is safe to share between threads. ``close()`` (or ``with Reranker(...) as r:``)
    frees the model's memory.

    Args:
        model: ``"17m"``, ``"32m"``, ``"68m"``, ``"150m"``, ``"400m"``, ``"1b"``, a local folder or a hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``... Defaults to CUDA, then Apple MPS, then CPU.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``. Defaults to bfloat16 on CUDA and on CPUs with native
            bfloat16, float32 otherwise. Use ``"float32"`` for scores that match Sentence Transformers to 1e-4.
        max_length: Tokens per (query + document) window, special tokens included. Defaults to the model's
            limit (7,999 for the Ettin rerankers).
        long_document_strategy: ``"max"`` (default), ``"mean"`` or ``"truncate"``: what to do with a document longer
            than the window (see :mod:`ettin_rerank.long_documents`). ``None`` means the default.
        window_overlap: Tokens shared by consecutive windows of a long document. Defaults to 128 (a quarter of
            ``max_length`` when that is smaller).
        activation: ``"none"`` returns raw logits (as the models ship), ``"sigmoid"`` squashes them into (0, 1) in
            float64, ``"calibrated"`` applies the model's fitted calibration. Ranking always uses the raw logit.
        max_tokens_per_doc: Read at most this many tokens of each document (``None``: no cap).
        batch_tokens: Token budget of one forward pass. Defaults to 2,048 on CPU and 65,536 on CUDA.
        batch_size: At most this many windows in one forward pass (``None``: only the token budget limits it).
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
        long_document_strategy: str | None = "max",
        window_overlap: int | None = None,
        activation: str | None = "none",
        max_tokens_per_doc: int | None = None,
        batch_tokens: int | None = None,
        batch_size: int | None = None,
        attention: str | None = None,
        revision: str | None = None,
        token: bool | str | None = None,
        cache_folder: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        show_progress_bar: bool | None = None,
    ) -> None:
        defaults = RerankOptions().merged({
            "max_length": max_length, "long_document_strategy": long_document_strategy,
            "window_overlap": window_overlap, "activation": activation, "max_tokens_per_doc": max_tokens_per_doc,
        })
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        default_budget = DEFAULT_BATCH_TOKENS.get(self.device.type, 8192)
        self.batch_tokens = check_positive(default_budget if batch_tokens is None else batch_tokens, "batch_tokens")
        self.batch_size = check_count(batch_size, "batch_size")
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
        self.calibration = load_calibration(self.model_path)
        self._pair_tokenizer = PairTokenizer(self._cross_encoder.tokenizer)
        self.show_progress_bar = show_progress_bar
        if PackedModernBertScorer.supports(self._cross_encoder):
            self.attention, attention_fn = resolve_attention(attention, self.device, self.dtype)
            self._scorer: Scorer | None = PackedModernBertScorer(self._cross_encoder, self.device, attention_fn)
        else:
            if attention not in (None, "sdpa"):
                msg = f"attention={attention!r} needs a ModernBERT checkpoint; {model!r} runs padded with sdpa"
                raise ValueError(msg)
            self.attention = "sdpa"
            pad_id = self._cross_encoder.tokenizer.pad_token_id or 0
            self._scorer = PaddedScorer(self._cross_encoder, self.device, pad_id)
        self._defaults = self._resolve(defaults)
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

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Free the model's memory; any later call raises ``RuntimeError``. Calling it twice is harmless."""
        self._scorer = None
        self._cross_encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def closed(self) -> bool:
        return self._scorer is None

    def __deepcopy__(self, memo: dict[int, Any]) -> Reranker:
        """An engine is immutable and thread-safe: a copy is the same engine (the model is never duplicated)."""
        return self

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ options

    @property
    def defaults(self) -> RerankOptions:
        """The options every call starts from (set at construction)."""
        return self._defaults

    @property
    def min_max_length(self) -> int:
        """The smallest ``max_length`` that leaves room for a one-token query and a one-token document."""
        return 2 * (self._pair_tokenizer.template.num_special + 1)

    def _resolve(self, options: RerankOptions) -> RerankOptions:
        """Check ``options`` against this model and fill in ``max_length``."""
        length = options.max_length or self.model_max_length
        if length > self.model_max_length:
            msg = f"max_length must be <= the model's limit {self.model_max_length}, but got {length}"
            raise ValueError(msg)
        if length < self.min_max_length:
            msg = (f"max_length must be at least {self.min_max_length} (room for the special tokens, a query and a "
                   f"document), but got {length}")
            raise ValueError(msg)
        options.overlap_for(length)  # raises for an overlap that does not fit
        if options.activation == "calibrated" and self.calibration is None:
            raise ValueError(NOT_CALIBRATED)
        return options.merged({"max_length": length})

    def call_options(self, **overrides: Any) -> RerankOptions:
        """The engine's defaults with per-call ``overrides`` (see :class:`~ettin_rerank.options.RerankOptions`)."""
        return self._resolve(self._defaults.merged(overrides))

    # ------------------------------------------------------------------ public API

    def score(self, query: str, documents: Sequence[str], **options: Any) -> list[float]:
        """Scores of ``documents`` for ``query``, in input order."""
        return self._score(query, documents, options)

    def _score(self, query, documents, options, cancel: threading.Event | None = None) -> list[float]:
        query = check_query(query)
        documents = check_documents(documents)
        prepared = self.prepare([query], [(0, d) for d in documents], options, name=_names("documents"))
        return [r.score for r in self.run(prepared, cancel)]

    def score_pairs(self, pairs: Sequence[tuple[str, str]], **options: Any) -> list[float]:
        """Scores of ``(query, document)`` pairs, in input order; queries may repeat or differ."""
        return self._score_pairs(pairs, options)

    def _score_pairs(self, pairs, options, cancel: threading.Event | None = None) -> list[float]:
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
        prepared = self.prepare(list(queries), items, options, name=lambda i: f"pairs[{i}][1]",
                                query_name=lambda q: f"pairs[{next(i for i, (n, _) in enumerate(items) if n == q)}][0]")
        return [r.score for r in self.run(prepared, cancel)]

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        **options: Any,
    ) -> list[RerankResult]:
        """Documents best first (by raw logit), each with its input ``index`` and ``score``.

        Args:
            query: The query.
            documents: Texts to rank; an empty list gives an empty result.
            top_k: Keep the best ``top_k`` (``None`` or more than there are documents: keep all).
            score_threshold: Keep only results whose ``score`` (after ``activation``) is at least this.
            return_documents: Put each document's text in its result.
            **options: Per-call :class:`~ettin_rerank.options.RerankOptions`: ``max_length``,
                ``long_document_strategy``, ``window_overlap``, ``activation``, ``calibration_factor``,
                ``max_tokens_per_doc``, ``truncate_query``.
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
        **options: Any,
    ) -> list[list[RerankResult]]:
        """:meth:`rerank` for many queries in one pass (``documents[i]`` belongs to ``queries[i]``)."""
        return self._rerank_many(queries, documents, top_k, score_threshold, return_documents, options)

    def _rerank_many(self, queries, documents, top_k, score_threshold, return_documents, options,  # noqa: PLR0917
                     cancel: threading.Event | None = None) -> list[list[RerankResult]]:
        top_k = check_top_k(top_k)
        score_threshold = check_threshold(score_threshold)
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            msg = f"queries must be a list of strings, but got {type(queries).__name__}"
            raise TypeError(msg)
        if isinstance(documents, str) or not isinstance(documents, Sequence) or len(documents) != len(queries):
            msg = "documents must be a list with one list of documents per query"
            raise ValueError(msg)
        single = len(queries) == 1
        queries = [check_query(q, "query" if single else f"queries[{i}]") for i, q in enumerate(queries)]
        lists = [check_documents(d, "documents" if single else f"documents[{i}]") for i, d in enumerate(documents)]
        items = [(q, doc) for q, docs in enumerate(lists) for doc in docs]
        starts = [0]
        for docs in lists:
            starts.append(starts[-1] + len(docs))

        def name(position: int) -> str:
            q = next(i for i in range(len(lists)) if starts[i + 1] > position)
            return f"documents[{position}]" if single else f"documents[{q}][{position - starts[q]}]"

        prepared = self.prepare(queries, items, options, name=name,
                                query_name=lambda q: "query" if single else f"queries[{q}]")
        results = iter(self.run(prepared, cancel))
        ranked = []
        for docs in lists:
            rows = [next(results) for _ in docs]
            if return_documents:
                rows = [_with_document(row, docs[row.index]) for row in rows]
            ranked.append(rank(rows, top_k, score_threshold))
        return ranked

    async def ascore(self, query: str, documents: Sequence[str], **options: Any) -> list[float]:
        """:meth:`score` on a worker thread, so the event loop keeps running; cancelling it stops the work."""
        return await self._in_thread(self._score, query, documents, options)

    async def ascore_pairs(self, pairs: Sequence[tuple[str, str]], **options: Any) -> list[float]:
        """:meth:`score_pairs` on a worker thread; cancelling it stops the work."""
        return await self._in_thread(self._score_pairs, pairs, options)

    async def arerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        **options: Any,
    ) -> list[RerankResult]:
        """:meth:`rerank` on a worker thread; concurrent calls run in parallel (PyTorch releases the GIL).

        Cancelling the awaiting task stops the work at the next batch, so an abandoned call frees the model.
        """
        rows = await self._in_thread(
            self._rerank_many, [query], [documents], top_k, score_threshold, return_documents, options
        )
        return rows[0]

    async def arerank_many(
        self,
        queries: Sequence[str],
        documents: Sequence[Sequence[str]],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        **options: Any,
    ) -> list[list[RerankResult]]:
        """:meth:`rerank_many` on a worker thread; cancelling it stops the work."""
        return await self._in_thread(
            self._rerank_many, queries, documents, top_k, score_threshold, return_documents, options
        )

    @staticmethod
    async def _in_thread(function: Callable, *args: Any) -> Any:
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(functools.partial(function, *args, cancel=cancel))
        finally:
            cancel.set()  # a cancelled caller stops the worker at its next batch; after success this is a no-op

    # ------------------------------------------------------------------ pair-level API

    def prepare(
        self,
        queries: Sequence[str],
        items: Sequence[tuple[int, str]],
        options: RerankOptions | dict[str, Any] | None = None,
        *,
        name: Callable[[int], str] = lambda i: f"documents[{i}]",
        query_name: Callable[[int], str] = lambda q: "query",
    ) -> PreparedPairs:
        """Tokenize ``(query number, document)`` items (queries already checked) and lay out their windows.

        The windows can be scored by :meth:`score_windows` (or together with other calls' windows); then
        :meth:`PreparedPairs.results` gives the results. ``name`` and ``query_name`` label inputs in errors.
        """
        opts = options if isinstance(options, RerankOptions) else self.call_options(**(options or {}))
        tok = self._pair_tokenizer
        limit = query_limit(opts.max_length, tok.template.num_special)
        query_ids = [self._encode_query(q, functools.partial(query_name, i), limit, opts)
                     for i, q in enumerate(queries)]
        budgets = [document_budget(opts.max_length, len(ids), tok.template.num_special) for ids in query_ids]
        texts = [doc for _, doc in items]
        try:
            encoded = tok.encode_documents(texts)
        except (TypeError, ValueError, RuntimeError, UnicodeError):
            check_encodable(texts, name)  # raises naming the culprit (a lone surrogate, say)
            raise
        windows: list[Window] = []
        overlap = opts.overlap_for(opts.max_length)
        keep_tail = opts.truncation_direction == "left"
        for pair, ((q, _), doc) in enumerate(zip(items, encoded, strict=True)):
            readable = len(doc.ids) if opts.max_tokens_per_doc is None else min(len(doc.ids), opts.max_tokens_per_doc)
            first = len(doc.ids) - readable if keep_tail else 0
            for start, end in window_spans(readable, budgets[q], opts.long_document_strategy, overlap, start=first,
                                           keep_tail=keep_tail):
                windows.append(tok.build(pair, query_ids[q], doc.ids, start, end))
        activation = functools.partial(activate, activation=opts.activation,
                                       calibration_factor=opts.calibration_factor, calibration=self.calibration)
        return PreparedPairs(items=list(items), documents=encoded, windows=windows,
                             strategy=opts.long_document_strategy, activate=activation)

    def _encode_query(self, query: str, name: Callable[[], str], limit: int, options: RerankOptions) -> list[int]:
        try:
            ids = self._pair_tokenizer.encode_query(query)
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

    def run(self, prepared: PreparedPairs, cancel: threading.Event | None = None) -> list[RerankResult]:
        """Score every window of ``prepared`` and return its results (in input order)."""
        if not prepared.items:
            return []
        return prepared.results(self.score_windows(prepared.windows, cancel))

    @torch.inference_mode()
    def score_windows(self, windows: Sequence[Window], cancel: threading.Event | None = None) -> list[float]:
        """Raw scores of ``windows``, in order: length-sorted batches under the token budget.

        Raises :class:`CancelledError` between batches once ``cancel`` is set.
        """
        scorer = self._scorer
        if scorer is None:
            msg = "this Reranker was closed; create a new one"
            raise RuntimeError(msg)
        scores = torch.empty(len(windows), dtype=torch.float32)
        batches = token_budget_batches([len(w.input_ids) for w in windows], self.batch_tokens, self.batch_size)
        show = self.show_progress_bar
        if show is None:
            show = logger.isEnabledFor(logging.INFO) and len(batches) > 1
        for batch in tqdm(batches, desc="Reranking", unit="batch", disable=not show):
            if cancel is not None and cancel.is_set():
                msg = "the caller went away; the remaining batches were not run"
                raise CancelledError(msg)
            scores[batch] = scorer([windows[i] for i in batch]).cpu()
        return scores.tolist()


def _names(argument: str) -> Callable[[int], str]:
    return lambda position: f"{argument}[{position}]"


def _with_document(result: RerankResult, document: str) -> RerankResult:
    from dataclasses import replace

    return replace(result, document=document)
