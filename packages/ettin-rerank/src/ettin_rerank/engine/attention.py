"""Attention over packed tokens, with and without ModernBERT's local (sliding-window) pattern.

Backends:
- ``"sdpa"`` (any device): scatter into a padded grid and call ``scaled_dot_product_attention``. Local layers
  are computed block by block, so each query block only meets the keys within its window: cost grows
  linearly with length instead of quadratically.
- ``"flash_attn"`` (CUDA, the ``flash-attn`` package): ``flash_attn_varlen_func`` on unpadded tokens.
- ``"varlen"`` (CUDA, PyTorch's own ``torch.nn.attention.varlen``): the same, with no extra package.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ettin_rerank.engine.packing import PackedBatch

logger = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, PackedBatch, "int | None"], torch.Tensor]
BLOCK_LOCAL_FROM = 5
"""Local layers of windows longer than this many half-windows (320 tokens for ModernBERT) run block by block;
shorter ones run as one band-masked SDPA call, which is faster there (measured on CPU, 4 heads x 64)."""


def sdpa_attention(qkv: torch.Tensor, batch: PackedBatch, half_window: int | None) -> torch.Tensor:
    """``qkv`` is ``(T, 3, heads, head_dim)``; returns ``(T, heads, head_dim)``.

    ``half_window``: each query reads the keys at most this many positions away (``None``: all keys).
    """
    if half_window is not None and batch.max_length > BLOCK_LOCAL_FROM * half_window:
        return _local_block_attention(qkv, batch, half_window)
    length = batch.max_length
    q, k, v = batch.to_padded(qkv, length).transpose(1, 3).unbind(2)  # 3 x (n, heads, length, dim)
    mask = batch.cached(("dense", half_window), lambda: _dense_mask(batch, half_window))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if mask.numel() else None)
    return batch.from_padded(out.transpose(1, 2))


def _dense_mask(batch: PackedBatch, half_window: int | None) -> torch.Tensor:
    """Which keys each query reads on the padded grid: real keys, within the window for a local layer. Empty when
    every key may be read (equal lengths, global layer): SDPA then runs unmasked."""
    length = batch.max_length
    mask = batch.key_mask(length)[:, None, None, :]
    if half_window is not None:
        pos = torch.arange(length, device=mask.device)
        return mask & ((pos[:, None] - pos[None, :]).abs() <= half_window)
    if bool((batch.lengths == length).all()):
        return mask.new_empty(0)
    return mask


def _local_block_attention(qkv: torch.Tensor, batch: PackedBatch, half_window: int) -> torch.Tensor:
    """Queries in blocks of ``half_window``; each block reads the 3 key blocks around it (exact band mask),
    so the cost is linear in the sequence length."""
    w = half_window
    blocks = -(-batch.max_length // w)
    length = blocks * w
    n, heads, dim = batch.num_sequences, qkv.shape[2], qkv.shape[3]
    grid = batch.to_padded(qkv, length + 2 * w, offset=w)  # (n, w + length + w, 3, heads, dim)
    q = grid[:, w : w + length, 0].reshape(n, blocks, w, heads, dim).permute(0, 1, 3, 2, 4)
    k, v = (grid[:, :, i].unfold(1, 3 * w, w).permute(0, 1, 2, 4, 3) for i in (1, 2))  # (n, blocks, heads, 3w, dim)
    mask = batch.cached(("block", w), lambda: _block_mask(batch, w, blocks))
    out = F.scaled_dot_product_attention(
        q.reshape(n * blocks, heads, w, dim),
        k.reshape(n * blocks, heads, 3 * w, dim),
        v.reshape(n * blocks, heads, 3 * w, dim),
        attn_mask=mask,
    )
    out = out.view(n, blocks, heads, w, dim).permute(0, 1, 3, 2, 4).reshape(n, length, heads, dim)
    return batch.from_padded(out)


def _block_mask(batch: PackedBatch, w: int, blocks: int) -> torch.Tensor:
    """``(n * blocks, 1, w, 3w)``: each query of a block reads the real keys within ``w`` positions."""
    length = blocks * w
    valid = batch.key_mask(length + 2 * w, offset=w).unfold(1, 3 * w, w)  # (n, blocks, 3w)
    rel = torch.arange(w, device=valid.device)[:, None] - torch.arange(3 * w, device=valid.device)[None, :] + w
    mask = (rel.abs() <= w)[None, None] & valid[:, :, None, :]  # (n, blocks, w, 3w)
    return mask.reshape(batch.num_sequences * blocks, 1, w, 3 * w)


def flash_attn_attention(qkv: torch.Tensor, batch: PackedBatch, half_window: int | None) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_qkvpacked_func

    window = (half_window, half_window) if half_window is not None else (-1, -1)
    return flash_attn_varlen_qkvpacked_func(qkv, batch.cu_seqlens, batch.max_length, window_size=window)


def varlen_attention(qkv: torch.Tensor, batch: PackedBatch, half_window: int | None) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    q, k, v = qkv.unbind(1)
    window = (half_window, half_window) if half_window is not None else (-1, -1)
    return varlen_attn(
        q, k, v, batch.cu_seqlens, batch.cu_seqlens, batch.max_length, batch.max_length, window_size=window
    )


def _varlen_has_window() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    return "window_size" in inspect.signature(varlen_attn).parameters


def available_backends(device: torch.device) -> list[str]:
    """Backends usable on ``device``, fastest first (see ``benchmarks/``)."""
    if device.type != "cuda":
        return ["sdpa"]
    found = []
    if importlib.util.find_spec("flash_attn") is not None:
        found.append("flash_attn")
    if _varlen_has_window():
        found.append("varlen")
    return [*found, "sdpa"]


def resolve_attention(name: str | None, device: torch.device, dtype: torch.dtype) -> tuple[str, AttentionFn]:
    """Pick an attention backend: ``name`` if given (it must be usable here), else the fastest available for
    ``device``. Names are checked by :class:`~ettin_rerank.args.EngineArgs`."""
    usable = available_backends(device)
    if dtype == torch.float32 and device.type == "cuda":
        usable = [b for b in usable if b == "sdpa"]  # flash kernels need 16-bit inputs
    if name is None:
        name = usable[0]
    elif name not in usable:
        msg = f"attention={name!r} is not usable with device={device.type}, dtype={dtype}: choose from {usable}"
        raise ValueError(msg)
    logger.debug("attention backend: %s", name)
    return name, {"sdpa": sdpa_attention, "flash_attn": flash_attn_attention, "varlen": varlen_attention}[name]
