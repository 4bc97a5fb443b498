"""One engine per loaded checkpoint, shared by every adapter in the process.

The cache key is what decides the weights in memory, not how they were spelt: the
:class:`~ettin_rerank.args.EngineArgs` with the resolved checkpoint folder (a hub id at a revision resolves to one
snapshot folder; a relative path, an absolute one and one with a trailing slash are the same folder), the resolved
device (``None``, ``"cpu"`` and ``torch.device("cpu")`` are one device) and dtype, and without what only finds the
folder (revision, token, cache folder, ``local_files_only``); every other field (attention backend, batch limits,
runtime, precision, threads, remote code) is part of it. Per-call options (``max_length``, strategies, activation,
...) are not: every adapter passes its own on each call.

Each :func:`shared_reranker` call takes a reference; :func:`release_shared` gives one back, and the engine is closed
(its memory freed) when the last reference is given back.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from ettin_rerank.args import EngineArgs

if TYPE_CHECKING:
    import torch

    from ettin_rerank.engine.reranker import Reranker

_ENGINES: dict[EngineArgs, Reranker] = {}
_USERS: dict[int, int] = {}
_LOCK = threading.Lock()
_LOADING: dict[EngineArgs, threading.Lock] = {}


def shared_reranker(
    model: str | os.PathLike[str] = "17m",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    token: bool | str | None = None,
    cache_folder: str | None = None,
    local_files_only: bool = False,
    attention: str | None = None,
    batch_tokens: int | None = None,
    batch_size: int | None = None,
    trust_remote_code: bool = False,
) -> Reranker:
    """The process-wide :class:`~ettin_rerank.Reranker` for this checkpoint, loading it the first time.

    Arguments are those of :class:`~ettin_rerank.args.EngineArgs` (what is loaded and how it runs). Give the
    reference back with :func:`release_shared` when done (adapters do it in ``close()``).
    """
    return shared_engine(EngineArgs(
        model=model, device=device, dtype=dtype, revision=revision, token=token, cache_folder=cache_folder,
        local_files_only=local_files_only, attention=attention, batch_tokens=batch_tokens, batch_size=batch_size,
        trust_remote_code=trust_remote_code,
    ))


def shared_engine(args: EngineArgs) -> Reranker:
    """:func:`shared_reranker` for an :class:`~ettin_rerank.args.EngineArgs`."""
    import torch

    from ettin_rerank.engine.device import resolve_device, resolve_dtype
    from ettin_rerank.engine.loading import HubOptions, resolve_model_path
    from ettin_rerank.engine.reranker import Reranker

    hub = HubOptions(revision=args.revision, token=args.token, cache_folder=args.cache_folder,
                     local_files_only=args.local_files_only)
    path = resolve_model_path(args.model, hub).resolve()
    resolved_device = resolve_device(args.device)
    if resolved_device.type == "cuda" and resolved_device.index is None:
        resolved_device = torch.device("cuda", torch.cuda.current_device())
    resolved_dtype = resolve_dtype(args.dtype, resolved_device)
    key = replace(args, model=str(path), device=str(resolved_device), dtype=str(resolved_dtype), revision=None,
                  token=None, cache_folder=None, local_files_only=False)  # the folder found, not how it was found
    with _LOCK:
        loading = _LOADING.setdefault(key, threading.Lock())
    with loading:  # one load per key, other keys load in parallel
        with _LOCK:
            engine = _ENGINES.get(key)
        if engine is None:
            engine = Reranker.from_args(replace(args, model=path, device=resolved_device, dtype=resolved_dtype))
            engine.model_name = str(args.model)
        with _LOCK:
            _ENGINES[key] = engine
            _USERS[id(engine)] = _USERS.get(id(engine), 0) + 1
    return engine


def release_shared(engine: Reranker) -> None:
    """Give back one reference to a shared engine; the last one closes it and frees its memory.

    Engines that did not come from :func:`shared_reranker` are left alone.
    """
    with _LOCK:
        users = _USERS.get(id(engine))
        if users is None:
            return
        if users > 1:
            _USERS[id(engine)] = users - 1
            return
        del _USERS[id(engine)]
        for key, cached in list(_ENGINES.items()):
            if cached is engine:
                del _ENGINES[key]
    engine.close()


def retain_shared(engine: Reranker) -> None:
    """Take one more reference to a shared engine (for a copy of an adapter that holds one)."""
    with _LOCK:
        if id(engine) in _USERS:
            _USERS[id(engine)] += 1


def shared_engines() -> list[Reranker]:
    """The engines loaded now (for inspection: how many checkpoints are in memory)."""
    with _LOCK:
        return list(_ENGINES.values())
