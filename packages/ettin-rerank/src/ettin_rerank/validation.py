"""Argument checks shared by the engine, the adapters and the server: clear errors that name the argument.

Numbers are accepted as numbers (``numpy.int64`` for a count, ``numpy.float32`` for a threshold); booleans are not.
This module imports nothing heavy, so adapters can validate at construction without loading PyTorch.
"""

from __future__ import annotations

import math
import numbers
import operator
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

_INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Cn", "Co", "Cs"})


def has_text(text: str) -> bool:
    """Whether ``text`` holds at least one visible character (not only whitespace, control or zero-width ones)."""
    return any(unicodedata.category(char) not in _INVISIBLE for char in text)


def check_query(query: Any, name: str = "query") -> str:
    if not isinstance(query, str):
        msg = f"{name} must be a string, but got {type(query).__name__}"
        raise TypeError(msg)
    if not has_text(query):
        msg = f"{name} must not be empty or only whitespace, control or zero-width characters"
        raise ValueError(msg)
    return query


def check_documents(documents: Any, name: str = "documents") -> list[str]:
    """A list of strings; an empty list is allowed (it gives an empty result)."""
    if isinstance(documents, (str, bytes)):
        msg = f"{name} must be a list of strings, not a single string; wrap one document as [{name}]"
        raise TypeError(msg)
    return check_list_of(documents, str, name, "strings", "a string")


def check_list_of(items: Any, kind: type | tuple[type, ...], name: str, plural: str, singular: str) -> list[Any]:
    """A list (or tuple) whose every item is a ``kind``; errors name ``name`` and the position of a bad item."""
    if items is None or isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        msg = f"{name} must be a list of {plural}, but got {type(items).__name__}"
        raise TypeError(msg)
    for position, item in enumerate(items):
        if not isinstance(item, kind):
            msg = f"{name}[{position}] must be {singular}, but got {type(item).__name__}"
            raise TypeError(msg)
    return list(items)


def check_encodable(texts: Sequence[str], name: str | Callable[[int], str]) -> None:
    """Raise ``ValueError`` naming the first text that is not valid Unicode (a lone surrogate, say).

    ``name`` is the argument's name (``"documents"`` gives ``documents[3]``) or a function from position to label.
    """
    label = name if callable(name) else (lambda position: f"{name}[{position}]")
    for position, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            msg = (f"{label(position)} is not valid Unicode: {error.reason} at character {error.start} "
                   f"({text[error.start]!r}); lone surrogates usually come from a wrong decoding upstream")
            raise ValueError(msg) from None


def check_count(value: Any, name: str, *, allow_none: bool = True) -> int | None:
    """A positive integer (any integer type, ``numpy.int64`` included) or, if allowed, ``None``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = "a positive integer or None" if allow_none else "a positive integer"
        msg = f"{name} must be {expected}, but got {value!r}"
        raise TypeError(msg)
    value = operator.index(value)
    if value <= 0:
        msg = f"{name} must be > 0, but got {value}"
        raise ValueError(msg)
    return value


def check_top_k(top_k: Any, name: str = "top_k") -> int | None:
    """``None`` keeps every document; a value above the number of documents keeps them all."""
    return check_count(top_k, name)


def check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        msg = f"{name} must be a positive integer, but got {value!r}"
        raise ValueError(msg)
    return operator.index(value)


def check_threshold(value: Any, name: str = "score_threshold") -> float | None:
    """``None`` or a finite number (a NaN threshold would silently drop everything)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"{name} must be a number or None, but got {value!r}"
        raise TypeError(msg)
    if math.isnan(value):
        msg = f"{name} must be a number, not NaN"
        raise ValueError(msg)
    return float(value)
