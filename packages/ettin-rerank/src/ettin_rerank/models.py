"""The six Ettin reranker sizes: short names, hub ids and published shapes."""

from __future__ import annotations

from dataclasses import dataclass

MAX_TOKENS = 7999
"""Longest (query + document) pair an Ettin reranker reads, special tokens included."""


@dataclass(frozen=True)
class EttinShape:
    """Published architecture of one Ettin reranker size."""

    size: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    head_dim: int = 64
    local_window: int = 128
    global_every: int = 3
    max_tokens: int = MAX_TOKENS

    @property
    def hub_id(self) -> str:
        """Hugging Face hub id of the trained checkpoint."""
        return f"cross-encoder/ettin-reranker-{self.size}-v1"


ETTIN_SHAPES: dict[str, EttinShape] = {
    shape.size: shape
    for shape in (
        EttinShape("17m", 7, 256, 384, 4),
        EttinShape("32m", 10, 384, 576, 6),
        EttinShape("68m", 19, 512, 768, 8),
        EttinShape("150m", 22, 768, 1152, 12),
        EttinShape("400m", 28, 1024, 2624, 16),
        EttinShape("1b", 28, 1792, 3840, 28),
    )
}
"""Ettin sizes by short name, smallest first."""


def ettin_shape(size: str) -> EttinShape:
    """Return the shape of an Ettin size, e.g. ``"17m"``; raises ``ValueError`` for an unknown size."""
    key = size.lower().removeprefix("ettin-").removesuffix("-v1")
    if key not in ETTIN_SHAPES:
        msg = f"size must be one of {', '.join(ETTIN_SHAPES)}, but got {size!r}"
        raise ValueError(msg)
    return ETTIN_SHAPES[key]
