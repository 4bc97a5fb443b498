"""The options of a rerank call, checked when they are given (not when the first query arrives), and every choice
set of the project (activations, long-document strategies, attention backends, dtype names).

The engine keeps one set as its defaults and merges per-call overrides into it; adapters build one at construction,
so a typo fails before any model is loaded. Imports nothing heavy.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from ettin_rerank.validation import check_count

Activation = Literal["none", "sigmoid", "calibrated"]
ACTIVATIONS: tuple[str, ...] = ("none", "sigmoid", "calibrated")
"""``none``: the raw logit; ``sigmoid``: ``1 / (1 + exp(-factor * logit))``; ``calibrated``: the model's fitted
logit -> probability map (``ettin-rerank calibrate``)."""
Strategy = Literal["max", "mean", "truncate"]
LongDocumentStrategy = Strategy
STRATEGIES: tuple[str, ...] = ("max", "mean", "truncate")
"""What happens past the window: the best window's score, the mean of the windows' scores, or the head only (see
:mod:`ettin_rerank.engine.windows`)."""
ATTENTION_BACKENDS = ("sdpa", "flash_attn", "varlen")
"""Attention implementations of the packed path (see :mod:`ettin_rerank.engine.attention`)."""
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
          "fp16": "float16"}
"""dtype names the engine accepts, each with the torch dtype it means."""
DTYPE_NAMES = tuple(DTYPES)
DEFAULT_WINDOW_OVERLAP = 128
"""Tokens shared by consecutive windows of a long document, unless the window is too small for it (see below)."""
ADAPTER_MAX_TOKENS_PER_DOC = 16_384
"""Adapters and the server read at most this many tokens of a document by default (two 8K windows): a
200,000-character node costs seconds, not minutes. Set ``max_tokens_per_doc=None`` to read everything."""


@dataclass(frozen=True)
class RerankOptions:
    """What to do with each (query, document) pair of a call.

    Attributes:
        max_length: Tokens per (query + document) window, special tokens included; ``None``: the model's limit.
        long_document_strategy: ``"max"``, ``"mean"`` or ``"truncate"`` past the window.
        window_overlap: Tokens shared by consecutive windows; ``None``: 128, or a quarter of ``max_length`` when
            that is smaller. An explicit value must be below half of ``max_length``.
        activation: ``"none"`` (raw logits), ``"sigmoid"`` or ``"calibrated"``; ranking always uses the logit.
        calibration_factor: The logit is multiplied by it before the sigmoid (Haystack's ``calibration_factor``).
        max_tokens_per_doc: Read at most this many tokens of each document (Cohere's ``max_tokens_per_doc``); the
            rest is cut and the result says ``truncated=True``. ``None``: no cap.
        truncate_query: Cut a query longer than half of ``max_length`` (with a warning) instead of raising.
        truncation_direction: Which end ``"truncate"`` and ``max_tokens_per_doc`` keep: ``"right"`` cuts the end
            (keeps the head, the default), ``"left"`` cuts the beginning (keeps the tail), as in TEI.
    """

    max_length: int | None = None
    long_document_strategy: str = "max"
    window_overlap: int | None = None
    activation: str = "none"
    calibration_factor: float = 1.0
    max_tokens_per_doc: int | None = None
    truncate_query: bool = False
    truncation_direction: str = "right"

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_length", check_count(self.max_length, "max_length"))
        object.__setattr__(self, "max_tokens_per_doc", check_count(self.max_tokens_per_doc, "max_tokens_per_doc"))
        if self.long_document_strategy not in STRATEGIES:
            msg = (f"long_document_strategy must be one of {', '.join(STRATEGIES)}, "
                   f"but got {self.long_document_strategy!r}")
            raise ValueError(msg)
        if self.activation not in ACTIVATIONS:
            msg = f"activation must be one of {', '.join(ACTIVATIONS)}, but got {self.activation!r}"
            raise ValueError(msg)
        overlap = self.window_overlap
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral)
                                    or overlap < 0):
            msg = f"window_overlap must be an integer >= 0 or None, but got {overlap!r}"
            raise ValueError(msg)
        if self.max_length is not None:
            self.overlap_for(self.max_length)
        factor = self.calibration_factor
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not math.isfinite(factor):
            msg = f"calibration_factor must be a finite number, but got {factor!r}"
            raise ValueError(msg)
        if self.truncation_direction not in ("right", "left"):
            msg = f"truncation_direction must be 'right' or 'left', but got {self.truncation_direction!r}"
            raise ValueError(msg)
        if not isinstance(self.truncate_query, bool):
            msg = f"truncate_query must be True or False, but got {self.truncate_query!r}"
            raise TypeError(msg)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def merged(self, overrides: dict[str, Any]) -> RerankOptions:
        """These options with ``overrides`` applied; ``None`` values keep the current value."""
        unknown = set(overrides) - set(self.names())
        if unknown:
            msg = f"unknown option(s): {', '.join(sorted(unknown))}; known: {', '.join(self.names())}"
            raise TypeError(msg)
        given = {name: value for name, value in overrides.items() if value is not None}
        return replace(self, **given) if given else self

    def overlap_for(self, max_length: int) -> int:
        """The window overlap to use with windows of ``max_length`` tokens (an explicit one must fit)."""
        if self.window_overlap is None:
            return min(DEFAULT_WINDOW_OVERLAP, max_length // 4)
        if self.window_overlap >= max_length // 2:
            msg = (f"window_overlap must be smaller than half of max_length ({max_length // 2}), "
                   f"but got {self.window_overlap}")
            raise ValueError(msg)
        return self.window_overlap

    def as_dict(self) -> dict[str, Any]:
        """Every option by name (what goes over the wire to a server)."""
        return asdict(self)
