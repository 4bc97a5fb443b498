"""Packed (unpadded) batches: every token of every input once, plus the indices to scatter into a padded grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class PackedBatch:
    """A batch of token sequences laid end to end.

    ``input_ids`` and ``position_ids`` have one entry per token (``T`` in all);
    ``cu_seqlens`` holds the sequence boundaries as flash-attention's varlen kernels want them.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    sequence_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    lengths: torch.Tensor
    max_length: int
    _cache: dict[Any, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def cached(self, key: Any, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()`` once per batch (masks and indices every layer of the forward pass reuses)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def num_sequences(self) -> int:
        return len(self.lengths)

    @property
    def first_token(self) -> torch.Tensor:
        """Index of each sequence's first token (CLS pooling)."""
        return self.cu_seqlens[:-1].long()

    def padded_index(self, row_length: int, offset: int = 0) -> torch.Tensor:
        """Flat index of each token in a ``(num_sequences, row_length)`` grid, shifted right by ``offset``."""
        return self.sequence_ids * row_length + self.position_ids + offset

    def key_mask(self, row_length: int, offset: int = 0) -> torch.Tensor:
        """``(num_sequences, row_length)`` booleans: which grid cells hold a real token."""
        mask = torch.zeros(self.num_sequences * row_length, dtype=torch.bool, device=self.input_ids.device)
        mask[self.padded_index(row_length, offset)] = True
        return mask.view(self.num_sequences, row_length)

    def to_padded(self, values: torch.Tensor, row_length: int, offset: int = 0) -> torch.Tensor:
        """Scatter ``(T, ...)`` token values into a zero-filled ``(num_sequences, row_length, ...)`` grid."""
        grid = values.new_zeros((self.num_sequences * row_length, *values.shape[1:]))
        grid[self.padded_index(row_length, offset)] = values
        return grid.view(self.num_sequences, row_length, *values.shape[1:])

    def from_padded(self, grid: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Gather the real tokens of a ``(num_sequences, row_length, ...)`` grid back to ``(T, ...)``."""
        row_length = grid.shape[1]
        return grid.reshape(self.num_sequences * row_length, *grid.shape[2:])[self.padded_index(row_length, offset)]


def pack(input_ids: list[list[int]], device: torch.device) -> PackedBatch:
    """Lay ``input_ids`` end to end (no padding) on ``device``."""
    lengths = torch.tensor([len(ids) for ids in input_ids], dtype=torch.int32)
    cu_seqlens = torch.zeros(len(input_ids) + 1, dtype=torch.int32)
    torch.cumsum(lengths, dim=0, out=cu_seqlens[1:])
    total = int(cu_seqlens[-1])
    sequence_ids = torch.repeat_interleave(torch.arange(len(input_ids)), lengths.long())
    position_ids = torch.arange(total) - cu_seqlens[:-1].long()[sequence_ids]
    flat_ids = torch.tensor([i for ids in input_ids for i in ids], dtype=torch.long)
    return PackedBatch(
        input_ids=flat_ids.to(device, non_blocking=True),
        position_ids=position_ids.to(device, non_blocking=True),
        sequence_ids=sequence_ids.to(device, non_blocking=True),
        cu_seqlens=cu_seqlens.to(device, non_blocking=True),
        lengths=lengths,
        max_length=int(lengths.max()),
    )
