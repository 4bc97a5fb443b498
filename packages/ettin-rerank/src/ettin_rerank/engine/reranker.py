"""The reranking engine: load a cross-encoder once, then score (query, document) pairs fast."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from ettin_rerank.args import EngineArgs
from ettin_rerank.engine.activation import NOT_CALIBRATED, load_calibration
from ettin_rerank.engine.budget import stream_batches
from ettin_rerank.engine.device import (
    cpu_kind,
    openvino_streams,
    resolve_device,
    resolve_dtype,
    resolve_runtime,
    runtime_was_asked_for,
)
from ettin_rerank.engine.loading import HubOptions, load_cross_encoder, resolve_model_path
from ettin_rerank.engine.scorers import PackedModernBertScorer, Scorer, select_scorer
from ettin_rerank.engine.threads import ThreadGovernor, usable_cpus
from ettin_rerank.engine.tokenization import PairTokenizer, Window
from ettin_rerank.engine.windows import PreparedPairs, prepare_pairs
from ettin_rerank.errors import CancelledError
from ettin_rerank.options import RerankOptions
from ettin_rerank.results import RerankResult, rank
from ettin_rerank.validation import (
    CheckedInput,
    check_pairs,
    check_query_lists,
    check_threshold,
    check_top_k,
)

logger = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}

__all__ = ["DEFAULT_BATCH_TOKENS", "CancelledError", "Reranker"]


def _thread_governor(threads: int | None) -> ThreadGovernor:
    """Fixed ``threads`` if given (at most the usable CPUs); else at most the usable CPUs and ``OMP_NUM_THREADS``,
    following the load."""
    limit = usable_cpus()
    if threads is not None:
        if threads > limit:
            logger.warning("threads=%d, but this process may use %d CPU(s) (affinity mask, cgroup quota): running %d "
                           "threads", threads, limit, limit)
        return ThreadGovernor(min(threads, limit), adaptive=False)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        limit = min(limit, int(omp))
    return ThreadGovernor(limit)


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
            than the window (see :mod:`ettin_rerank.engine.windows`). ``None`` means the default.
        window_overlap: Tokens shared by consecutive windows of a long document. Defaults to 128 (a quarter of
            ``max_length`` when that is smaller).
        activation: ``"none"`` returns raw logits (as the models ship), ``"sigmoid"`` squashes them into (0, 1) in
            float64, ``"calibrated"`` applies the model's fitted calibration. Ranking always uses the raw logit.
        max_tokens_per_doc: Read at most this many tokens of each document (``None``: no cap).
        batch_tokens: Token budget of one forward pass. Defaults to 2,048 on CPU and 65,536 on CUDA.
        batch_size: At most this many windows in one forward pass (``None``: only the token budget limits it).
        attention: ``"sdpa"``, ``"flash_attn"`` or ``"varlen"``; ``None`` picks the fastest available.
        runtime: ``"torch"`` or ``"openvino"`` (CPU; ``pip install "ettin-rerank[openvino]"``). ``None``: the
            runtime measured fastest on this CPU kind, if installed (``benchmarks/results/``, README "Performance"), and
            PyTorch where that is OpenVINO but the model is not a ModernBERT or ``attention`` names a PyTorch backend.
        precision: ``"int8"`` (OpenVINO + NNCF, an explicit opt-in: not exact) or ``None`` (``dtype`` decides).
        threads: CPU threads of a forward pass. ``None``: the CPUs this process may use (its affinity and cgroup
            quota, and ``OMP_NUM_THREADS`` if set), fewer while other processes keep some of them busy. A number
            fixes the count, at most the CPUs the process may use (more is logged and capped).
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
        runtime: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        revision: str | None = None,
        token: bool | str | None = None,
        cache_folder: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        show_progress_bar: bool | None = None,
    ) -> None:
        args = EngineArgs(model=model, device=device, dtype=dtype, revision=revision, token=token,
                          cache_folder=cache_folder, local_files_only=local_files_only, attention=attention,
                          batch_tokens=batch_tokens, batch_size=batch_size, trust_remote_code=trust_remote_code,
                          runtime=runtime, precision=precision, threads=threads)
        defaults = RerankOptions().merged({
            "max_length": max_length, "long_document_strategy": long_document_strategy,
            "window_overlap": window_overlap, "activation": activation, "max_tokens_per_doc": max_tokens_per_doc,
        })
        self._load(args, defaults, show_progress_bar)

    @classmethod
    def from_args(cls, args: EngineArgs, options: RerankOptions | None = None, *,
                  show_progress_bar: bool | None = None) -> Reranker:
        """Load the engine ``args`` describe; ``options`` are the defaults of every call (see
        :class:`~ettin_rerank.options.RerankOptions`)."""
        engine = cls.__new__(cls)
        engine._load(args, options or RerankOptions(), show_progress_bar)
        return engine

    def _load(self, args: EngineArgs, defaults: RerankOptions, show_progress_bar: bool | None) -> None:
        self.args = args
        self.device = resolve_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.batch_tokens = args.batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, 8192)
        self.batch_size = args.batch_size
        self._threads = _thread_governor(args.threads) if self.device.type == "cpu" else None
        hub = HubOptions(revision=args.revision, token=args.token, cache_folder=args.cache_folder,
                         local_files_only=args.local_files_only)
        self.model_path = resolve_model_path(args.model, hub)
        self.model_name = str(args.model)
        self.runtime = resolve_runtime(args.runtime, args.precision, self.device)
        self.precision = args.precision
        self.cpu_kind = cpu_kind() if self.device.type == "cpu" else None
        measured_default = self.runtime == "openvino" and not runtime_was_asked_for(args.runtime, args.precision)
        if measured_default and args.attention not in (None, "sdpa"):
            self._run_pytorch_instead(f"attention={args.attention!r} is a PyTorch backend")
        self._scorer: Scorer | None
        # OpenVINO converts the float32 weights (self.dtype is its inference precision); PyTorch runs them in dtype
        weights_dtype = torch.float32 if self.runtime == "openvino" else self.dtype
        with self._cpu_threads():  # loading runs parallel ops too: on the CPUs the engine may use
            self._cross_encoder = load_cross_encoder(
                self.model_path, device=self.device, dtype=weights_dtype, trust_remote_code=args.trust_remote_code
            )
            if (measured_default and self.runtime == "openvino"
                    and not PackedModernBertScorer.supports(self._cross_encoder)):
                self._run_pytorch_instead("OpenVINO runs ModernBERT checkpoints, not this model")
                self._cross_encoder.to(self.dtype)
            self.model_max_length = int(self._cross_encoder.max_seq_length or 512)
            self.calibration = load_calibration(self.model_path)
            self._pair_tokenizer = PairTokenizer(self._cross_encoder.tokenizer)
            if self.runtime == "openvino":
                self._scorer, self.attention = self._openvino_scorer(args), "openvino"
            else:
                self._scorer, self.attention = select_scorer(self._cross_encoder, self.device, self.dtype,
                                                             args.attention)
        self.show_progress_bar = show_progress_bar
        self._defaults = self._resolve(defaults)
        logger.info(
            "Loaded %s on %s (%s, runtime=%s, attention=%s, max_length=%d)",
            self.model_path, self.device, str(self.dtype).removeprefix("torch."), self.runtime, self.attention,
            self._defaults.max_length,
        )

    def _run_pytorch_instead(self, reason: str) -> None:
        """The measured default (OpenVINO) cannot run this engine: PyTorch does (as ``runtime="torch"``)."""
        logger.info("OpenVINO is the measured default on this CPU, but %s: running PyTorch", reason)
        self.runtime = "torch"

    def _governed_pass(self, scorer: Callable[[list[Window]], torch.Tensor], windows: list[Window]) -> torch.Tensor:
        """One torch pass on the thread governor's count, its speed reported back to the governor."""
        with self._threads.timed(self._threads.apply(), sum(len(w.input_ids) for w in windows)):
            return scorer(windows)

    def _cpu_threads(self) -> contextlib.AbstractContextManager[None]:
        """At most the governor's threads for torch in the calling thread, the caller's count restored after."""
        return self._threads.capped() if self._threads is not None else contextlib.nullcontext()

    def _openvino_scorer(self, args: EngineArgs) -> Scorer:
        from ettin_rerank.engine.openvino_runtime import OpenVINOScorer, calibration_batches

        if args.attention not in (None, "sdpa"):
            msg = f"attention={args.attention!r} is a torch backend; runtime='openvino' has its own attention"
            raise ValueError(msg)
        calibration = None
        if args.precision == "int8":
            calibration = functools.partial(calibration_batches, self._pair_tokenizer, self.model_max_length)
        return OpenVINOScorer(self._cross_encoder, self.model_path, dtype=self.dtype, threads=self._threads,
                              streams=openvino_streams(self.cpu_kind),
                              pad_id=self._cross_encoder.tokenizer.pad_token_id or 0, calibration=calibration)

    def __repr__(self) -> str:
        precision = f", precision={self.precision!r}" if self.precision else ""
        return (
            f"Reranker(model={self.model_name!r}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, runtime={self.runtime!r}{precision}, "
            f"attention={self.attention!r})"
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
        return replace(options, max_length=length)

    def call_options(self, options: RerankOptions | None = None, /, **overrides: Any) -> RerankOptions:
        """The options of one call, resolved against this model: ``options`` (or the engine's defaults) with
        ``overrides`` applied; ``None`` fields keep the engine's defaults."""
        base = self._defaults if options is None else self._defaults.merged(vars(options))
        return self._resolve(base.merged(overrides))

    # ------------------------------------------------------------------ public API
    #
    # Every verb takes the per-call options as keywords (``max_length=...``) or as one ``options=RerankOptions``
    # (what the adapters hold), or both (keywords win).

    def score(self, query: str, documents: Sequence[str], *, options: RerankOptions | None = None,
              **overrides: Any) -> list[float]:
        """Scores of ``documents`` for ``query``, in input order."""
        return self._score_input(check_query_lists([query], [documents]), options, overrides)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, options: RerankOptions | None = None,
                    **overrides: Any) -> list[float]:
        """Scores of ``(query, document)`` pairs, in input order; queries may repeat or differ."""
        return self._score_input(check_pairs(pairs), options, overrides)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        options: RerankOptions | None = None,
        **overrides: Any,
    ) -> list[RerankResult]:
        """Documents best first (by raw logit), each with its input ``index`` and ``score``.

        Args:
            query: The query.
            documents: Texts to rank; an empty list gives an empty result.
            top_k: Keep the best ``top_k`` (``None`` or more than there are documents: keep all).
            score_threshold: Keep only results whose ``score`` (after ``activation``) is at least this.
            return_documents: Put each document's text in its result.
            options: Per-call :class:`~ettin_rerank.options.RerankOptions` as one object.
            **overrides: Per-call options by name: ``max_length``, ``long_document_strategy``, ``window_overlap``,
                ``activation``, ``calibration_factor``, ``max_tokens_per_doc``, ``truncate_query``.
        """
        return self.rerank_many([query], [documents], top_k, score_threshold=score_threshold,
                                return_documents=return_documents, options=options, **overrides)[0]

    def rerank_many(
        self,
        queries: Sequence[str],
        documents: Sequence[Sequence[str]],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        options: RerankOptions | None = None,
        **overrides: Any,
    ) -> list[list[RerankResult]]:
        """:meth:`rerank` for many queries in one pass (``documents[i]`` belongs to ``queries[i]``)."""
        return self._rerank_many(queries, documents, top_k, score_threshold, return_documents,
                                 self.call_options(options, **overrides))

    def _score_input(self, checked: CheckedInput, options: RerankOptions | None, overrides: dict[str, Any],
                     cancel: threading.Event | None = None) -> list[float]:
        prepared = self._prepare_checked(checked, self.call_options(options, **overrides))
        return [r.score for r in self.run(prepared, cancel)]

    def _rerank_many(self, queries, documents, top_k, score_threshold, return_documents,  # noqa: PLR0917
                     options: RerankOptions, cancel: threading.Event | None = None) -> list[list[RerankResult]]:
        top_k = check_top_k(top_k)
        score_threshold = check_threshold(score_threshold)
        checked = check_query_lists(queries, documents)
        results = iter(self.run(self._prepare_checked(checked, options), cancel))
        ranked = []
        position = 0
        for size in checked.sizes:
            rows = [next(results) for _ in range(size)]
            if return_documents:
                rows = [replace(row, document=checked.items[position + row.index][1]) for row in rows]
            position += size
            ranked.append(rank(rows, top_k, score_threshold))
        return ranked

    async def ascore(self, query: str, documents: Sequence[str], *, options: RerankOptions | None = None,
                     **overrides: Any) -> list[float]:
        """:meth:`score` on a worker thread, so the event loop keeps running; cancelling it stops the work."""
        return await self._in_thread(self._score_input, check_query_lists([query], [documents]), options, overrides)

    async def ascore_pairs(self, pairs: Sequence[tuple[str, str]], *, options: RerankOptions | None = None,
                           **overrides: Any) -> list[float]:
        """:meth:`score_pairs` on a worker thread; cancelling it stops the work."""
        return await self._in_thread(self._score_input, check_pairs(pairs), options, overrides)

    async def arerank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        options: RerankOptions | None = None,
        **overrides: Any,
    ) -> list[RerankResult]:
        """:meth:`rerank` on a worker thread; concurrent calls run in parallel (PyTorch releases the GIL).

        Cancelling the awaiting task stops the work at the next batch, so an abandoned call frees the model.
        """
        rows = await self.arerank_many([query], [documents], top_k, score_threshold=score_threshold,
                                       return_documents=return_documents, options=options, **overrides)
        return rows[0]

    async def arerank_many(
        self,
        queries: Sequence[str],
        documents: Sequence[Sequence[str]],
        top_k: int | None = None,
        *,
        score_threshold: float | None = None,
        return_documents: bool = False,
        options: RerankOptions | None = None,
        **overrides: Any,
    ) -> list[list[RerankResult]]:
        """:meth:`rerank_many` on a worker thread; cancelling it stops the work."""
        return await self._in_thread(self._rerank_many, queries, documents, top_k, score_threshold,
                                     return_documents, self.call_options(options, **overrides))

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

        ``options``: a :class:`~ettin_rerank.options.RerankOptions` or overrides by name; either way resolved
        against this model. The windows can be scored by :meth:`score_windows` (or together with other calls'
        windows); then :meth:`PreparedPairs.results` gives the results. ``name`` and ``query_name`` label inputs in
        errors.
        """
        if isinstance(options, RerankOptions):
            resolved = self.call_options(options)
        else:
            resolved = self.call_options(**(options or {}))
        return prepare_pairs(self._pair_tokenizer, queries, items, resolved, self.calibration, name=name,
                             query_name=query_name)

    def _prepare_checked(self, checked: CheckedInput, options: RerankOptions) -> PreparedPairs:
        return prepare_pairs(self._pair_tokenizer, checked.queries, checked.items, options, self.calibration,
                             name=checked.document_name, query_name=checked.query_name)

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
        batches, streams = stream_batches([len(w.input_ids) for w in windows], self.batch_tokens, self.batch_size,
                                          getattr(scorer, "streams", 1))
        show = self.show_progress_bar
        if show is None:
            show = logger.isEnabledFor(logging.INFO) and len(batches) > 1

        def batch_windows() -> Iterator[list[Window]]:
            for batch in batches:
                if cancel is not None and cancel.is_set():
                    msg = "the caller went away; the remaining batches were not run"
                    raise CancelledError(msg)
                yield [windows[i] for i in batch]

        if streams > 1:  # batches in flight at once, sharing the token budget
            results = scorer.score_batches(batch_windows(), self.batch_tokens // streams)
        elif self._threads is not None and self.runtime == "torch":  # (the OpenVINO scorer asks the governor itself)
            results = map(functools.partial(self._governed_pass, scorer), batch_windows())
        else:
            results = map(scorer, batch_windows())
        with self._cpu_threads():  # the caller's thread count is theirs again after the call
            progress = tqdm(batches, desc="Reranking", unit="batch", disable=not show)
            for batch, batch_scores in zip(progress, results, strict=True):
                scores[batch] = batch_scores.cpu()
        return scores.tolist()
