"""A ModernBERT reranker as one traceable module on padded batches, for graph runtimes (OpenVINO, ONNX Runtime).

``PaddedEncoder(input_ids, attention_mask) -> pooled (batch, hidden)`` is the same function as the packed scorer's
encoder and pooling (:mod:`ettin_rerank.engine.scorers`), written with static control flow so that a tracer
records it whole: the global and local (sliding-window) masks are built in the graph, and a padding query reads
every key, so that no row of a mask is empty (an empty row gives NaN, and NaN times a zero weight spreads into the
real tokens of later layers). The head runs outside, in float32 (see the scorers).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


class PaddedEncoder(torch.nn.Module):
    """ModernBERT encoder + ``cls``/``mean`` pooling on ``(batch, length)`` int64 ``input_ids`` and
    ``attention_mask``; returns the pooled vectors in float32."""

    def __init__(self, model, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        config = model.config
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.half_window = config.local_attention // 2

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        model = self.model
        batch, length = input_ids.shape
        hidden = model.embeddings(input_ids=input_ids)
        valid = attention_mask.bool()
        positions = torch.arange(length, device=input_ids.device)
        padding_query = ~valid[:, None, :, None]
        keys = valid[:, None, None, :]
        band = (positions[:, None] - positions[None, :]).abs() <= self.half_window
        masks = {"full_attention": keys | padding_query,
                 "sliding_attention": (keys & band[None, None]) | padding_query}
        position_ids = positions[None].expand(batch, length)
        rotary = {kind: model.rotary_emb(hidden, position_ids, kind) for kind in set(model.config.layer_types)}
        for layer in model.layers:
            qkv = layer.attn.Wqkv(layer.attn_norm(hidden)).view(batch, length, 3, self.heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (batch, heads, length, dim) each
            cos, sin = (t[:, None] for t in rotary[layer.attention_type])
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[layer.attention_type])
            hidden = hidden + layer.attn.Wo(out.transpose(1, 2).reshape(batch, length, -1))
            hidden = hidden + layer.mlp(layer.mlp_norm(hidden))
        hidden = model.final_norm(hidden).float()
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = valid.to(hidden.dtype)[:, :, None]
        return (hidden * weights).sum(1) / weights.sum(1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) in float32, as transformers computes it."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos.float() + rotated * sin.float()).to(x.dtype)


@contextmanager
def quiet_tracing() -> Iterator[None]:
    """Silence what tracing makes transformers say about attributes the traced graph never uses: the tracer reads
    every attribute of each module, so deprecated properties warn (``is_gradient_checkpointing``) and
    ``loss_function`` logs that the config names no loss; a newcomer's first conversion would print both."""

    def not_about_loss(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("`loss_type=")

    transformers_logger = logging.getLogger("transformers.modeling_utils")
    transformers_logger.addFilter(not_about_loss)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
            yield
    finally:
        transformers_logger.removeFilter(not_about_loss)


def pad_batch(input_ids: list[list[int]], multiple: int = 8, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` int64 tensors, each row padded on the right to the longest row rounded up to
    ``multiple`` (fewer distinct shapes for a graph runtime to prepare)."""
    longest = max(len(ids) for ids in input_ids)
    length = -(-longest // multiple) * multiple
    ids = torch.full((len(input_ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), length), dtype=torch.long)
    for row, values in enumerate(input_ids):
        ids[row, : len(values)] = torch.tensor(values, dtype=torch.long)
        mask[row, : len(values)] = 1
    return ids, mask
