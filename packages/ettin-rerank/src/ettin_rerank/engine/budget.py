"""Token-budget batching: longest inputs first, each batch under a token budget, input order restored after."""

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
