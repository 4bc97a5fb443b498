"""Token-budget batching: longest inputs first, each batch under a token budget, input order restored after; with
several streams, the budget shared between the batches in flight."""

from __future__ import annotations

from collections.abc import Sequence


def token_budget_batches(lengths: Sequence[int], budget: int, max_count: int | None = None) -> list[list[int]]:
    """Group input indices, longest first, so that ``len(batch) * longest_in_batch <= budget``.

    An input longer than the budget gets a batch of its own; ``max_count`` caps the inputs per batch. Every index
    appears exactly once.
    """
    if budget <= 0:
        msg = f"batch_tokens must be > 0, but got {budget}"
        raise ValueError(msg)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * longest > budget or len(current) == max_count):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def stream_batches(lengths: Sequence[int], budget: int, max_count: int | None,
                   streams: int) -> tuple[list[list[int]], int]:
    """Batches for ``streams`` forward passes in flight at once, each under its share ``budget // streams``, and
    the number of streams to run them on: 1, with batches under the whole budget, when the shares would make fewer
    than two batches per stream (the streams would not be kept busy: a few batches run fastest one at a time on all
    the threads)."""
    if streams > 1:
        batches = token_budget_batches(lengths, max(1, budget // streams), max_count)
        if len(batches) >= 2 * streams:
            return batches, streams
    return token_budget_batches(lengths, budget, max_count), 1
