"""Argument checks shared by the engine and the adapters: clear errors that name the argument."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_query(query: Any, name: str = "query") -> str:
    if not isinstance(query, str):
        msg = f"{name} must be a string, but got {type(query).__name__}"
        raise TypeError(msg)
    if not query.strip():
        msg = f"{name} must not be empty or only whitespace"
        raise ValueError(msg)
    return query


def check_documents(documents: Any, name: str = "documents") -> list[str]:
    """A list of strings; an empty list is allowed (it gives an empty result)."""
    if isinstance(documents, (str, bytes)):
        msg = f"{name} must be a list of strings, not a single string; wrap one document as [{name}]"
        raise TypeError(msg)
    if documents is None or not isinstance(documents, Sequence):
        msg = f"{name} must be a list of strings, but got {type(documents).__name__}"
        raise TypeError(msg)
    for position, document in enumerate(documents):
        if not isinstance(document, str):
            msg = f"{name}[{position}] must be a string, but got {type(document).__name__}"
            raise TypeError(msg)
    return list(documents)


def check_top_k(top_k: Any, name: str = "top_k") -> int | None:
    """``None`` keeps every document; a value above the number of documents keeps them all."""
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        msg = f"{name} must be a positive integer or None, but got {top_k!r}"
        raise TypeError(msg)
    if top_k <= 0:
        msg = f"{name} must be > 0, but got {top_k}"
        raise ValueError(msg)
    return top_k


def check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        msg = f"{name} must be a positive integer, but got {value!r}"
        raise ValueError(msg)
    return value
