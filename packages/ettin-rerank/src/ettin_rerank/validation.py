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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CheckedInput:
    """Queries and ``(query number, document)`` items, checked, with how to name each in an error message.

    ``sizes`` is the number of documents of each query for :func:`check_query_lists` (to split the results back
    into one list per query), ``None`` for :func:`check_pairs` (results stay in pair order).
    """

    queries: list[str]
    items: list[tuple[int, str]]
    document_name: Callable[[int], str]
    query_name: Callable[[int], str]
    sizes: list[int] | None = None


def check_pairs(pairs: Any) -> CheckedInput:
    """``(query, document)`` pairs; queries may repeat (each distinct query is tokenized once)."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        msg = f"pairs must be a list of (query, document) tuples, but got {type(pairs).__name__}"
        raise TypeError(msg)
    queries: dict[str, int] = {}
    first_seen: list[int] = []
    items = []
    for position, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            msg = f"pairs[{position}] must be a (query, document) pair, but got {pair!r}"
            raise TypeError(msg)
        query = check_query(pair[0], f"pairs[{position}][0]")
        if not isinstance(pair[1], str):
            msg = f"pairs[{position}][1] must be a string, but got {type(pair[1]).__name__}"
            raise TypeError(msg)
        if query not in queries:
            queries[query] = len(queries)
            first_seen.append(position)
        items.append((queries[query], pair[1]))
    return CheckedInput(list(queries), items, document_name=lambda i: f"pairs[{i}][1]",
                        query_name=lambda q: f"pairs[{first_seen[q]}][0]")


def check_query_lists(queries: Any, documents: Any) -> CheckedInput:
    """One list of documents per query (``documents[i]`` belongs to ``queries[i]``); errors name ``query`` and
    ``documents[j]`` for a single query, ``queries[i]`` and ``documents[i][j]`` for several."""
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        msg = f"queries must be a list of strings, but got {type(queries).__name__}"
        raise TypeError(msg)
    if isinstance(documents, str) or not isinstance(documents, Sequence) or len(documents) != len(queries):
        msg = "documents must be a list with one list of documents per query"
        raise ValueError(msg)
    single = len(queries) == 1
    checked = [check_query(q, "query" if single else f"queries[{i}]") for i, q in enumerate(queries)]
    lists = [check_documents(d, "documents" if single else f"documents[{i}]") for i, d in enumerate(documents)]
    owners = [(q, j) for q, docs in enumerate(lists) for j in range(len(docs))]

    def document_name(position: int) -> str:
        q, j = owners[position]
        return f"documents[{j}]" if single else f"documents[{q}][{j}]"

    return CheckedInput(checked, [(q, doc) for q, docs in enumerate(lists) for doc in docs], document_name,
                        query_name=lambda q: "query" if single else f"queries[{q}]", sizes=[len(d) for d in lists])
