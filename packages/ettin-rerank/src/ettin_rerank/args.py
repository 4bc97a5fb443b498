"""Which reranker to load and how to run it: one definition for every entry point.

The engine (:meth:`ettin_rerank.Reranker.from_args`), the process-wide engine cache the adapters share, the server
(``ServerConfig.engine_args``), offline batch reranking, training and every command of the CLI build their engine
from one :class:`EngineArgs`, so a load option is added (and checked) in one place. Per-call choices (window length,
long-document strategy, activation, ...) are :class:`~ettin_rerank.options.RerankOptions`. Imports nothing heavy:
adapters check their arguments at construction without loading PyTorch.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field, fields
from typing import Any

from ettin_rerank.options import ATTENTION_BACKENDS, DTYPE_NAMES

RUNTIMES = ("torch", "openvino")
"""What runs the forward pass: PyTorch (every device) or OpenVINO (CPU, ``pip install "ettin-rerank[openvino]"``)."""
PRECISIONS = ("int8",)
"""Precisions beyond ``dtype``, each an explicit opt-in: ``int8`` (OpenVINO + NNCF post-training quantization)."""


@dataclass(frozen=True)
class EngineArgs:
    """What is loaded and how it runs; checked when built, loaded by :meth:`ettin_rerank.Reranker.from_args`.

    Attributes:
        model: ``"17m"`` ... ``"1b"``, a local Sentence Transformers CrossEncoder folder or a hub id.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``... (``None``: CUDA, then Apple MPS, then CPU).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (``None``: bfloat16 where the hardware computes it
            natively, float32 elsewhere).
        revision: Hub revision (branch, tag or commit) of a hub id.
        token: Hub token for private models (never shown in ``repr``).
        cache_folder: Hugging Face cache folder.
        local_files_only: Never contact the hub (also implied by ``HF_HUB_OFFLINE=1``).
        attention: ``"sdpa"``, ``"flash_attn"`` or ``"varlen"`` (``None``: the fastest available).
        batch_tokens: Token budget of one forward pass (``None``: 2,048 on CPU, 65,536 on CUDA).
        batch_size: At most this many windows in one forward pass (``None``: only the token budget limits it).
        trust_remote_code: Allow custom modelling code from the checkpoint. Off by default.
        runtime: ``"torch"`` or ``"openvino"`` (``None``: the one measured fastest on this CPU kind and installed;
            see :func:`ettin_rerank.engine.device.kind_defaults`).
        precision: ``"int8"`` to quantize the linear layers (OpenVINO + NNCF; not exact, rank agreement in the
            README), or ``None`` (``dtype`` decides).
        threads: CPU threads of a forward pass (``None``: the CPUs the process may use, by affinity and cgroup
            quota, fewer while other processes keep some busy; a number fixes the count, at most those CPUs).
    """

    model: str | os.PathLike[str] = "17m"
    device: Any = None
    dtype: Any = None
    revision: str | None = None
    token: str | bool | None = field(default=None, repr=False)
    cache_folder: str | None = None
    local_files_only: bool = False
    attention: str | None = None
    batch_tokens: int | None = None
    batch_size: int | None = None
    trust_remote_code: bool = False
    runtime: str | None = None
    precision: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, (str, os.PathLike)) or not str(self.model).strip():
            msg = f"model must be an Ettin size (17m ... 1b), a folder or a hub id, but got {self.model!r}"
            raise ValueError(msg)
        if self.dtype is not None and str(self.dtype).removeprefix("torch.") not in DTYPE_NAMES:
            msg = f"dtype must be one of {', '.join(DTYPE_NAMES)} or None, but got {self.dtype!r}"
            raise ValueError(msg)
        if self.attention is not None and self.attention not in ATTENTION_BACKENDS:
            msg = f"attention must be one of {', '.join(ATTENTION_BACKENDS)} or None, but got {self.attention!r}"
            raise ValueError(msg)
        if self.runtime is not None and self.runtime not in RUNTIMES:
            msg = f"runtime must be one of {', '.join(RUNTIMES)} or None, but got {self.runtime!r}"
            raise ValueError(msg)
        if self.precision is not None and self.precision not in PRECISIONS:
            msg = f"precision must be one of {', '.join(PRECISIONS)} or None, but got {self.precision!r}"
            raise ValueError(msg)
        if self.precision == "int8" and self.runtime == "torch":
            msg = "precision='int8' runs on runtime='openvino' (or None), but got runtime='torch'"
            raise ValueError(msg)
        for name in ("batch_tokens", "batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0):
                msg = f"{name} must be a positive integer or None, but got {value!r}"
                raise ValueError(msg)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (to split keyword arguments between engine arguments and per-call options)."""
        return tuple(f.name for f in fields(cls))
