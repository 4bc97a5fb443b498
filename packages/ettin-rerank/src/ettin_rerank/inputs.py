"""Reading the text files users hand to the command line: UTF-8, lines split on ``\\n`` only, errors with file:line.

``str.splitlines()`` also splits on form feeds, U+2028/U+2029, ``\\x1c``-``\\x1e`` and ``\\x85``, all of which occur
inside real documents (and ``json.dumps(..., ensure_ascii=False)`` writes U+2028 raw), so it is never used here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ettin_rerank.errors import InputError
from ettin_rerank.validation import check_encodable

FORMATS = ("auto", "jsonl", "lines")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
"""Suffixes of JSON Lines files (any other suffix is lines of text here, Parquet for ``batch``)."""


def read_text(source: str | Path) -> str:
    """The whole of a UTF-8 file (a leading byte-order mark dropped), or of stdin for ``"-"``."""
    label = "<stdin>" if str(source) == "-" else str(source)
    try:
        data = sys.stdin.buffer.read() if str(source) == "-" else Path(source).read_bytes()
    except IsADirectoryError:
        msg = f"{label} is a folder; give a file"
        raise InputError(msg) from None
    except FileNotFoundError:
        msg = f"{label} does not exist"
        raise InputError(msg) from None
    except PermissionError:
        msg = f"{label} cannot be read: permission denied"
        raise InputError(msg) from None
    except OSError as error:
        msg = f"{label} cannot be read: {error.strerror or error}"
        raise InputError(msg) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        msg = (f"{label}:{line}: not UTF-8 text (byte offset {error.start}: {data[error.start:error.start + 4]!r}); "
               "convert the file to UTF-8")
        raise InputError(msg) from None


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for each non-blank line; lines end at ``\\n`` only (a trailing ``\\r`` is dropped)."""
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        if line.strip():
            yield number, line


def json_object(line: str | bytes, label: str, number: int) -> dict[str, Any]:
    """One JSON Lines line as an object; anything else is an error naming ``label`` and the line ``number``."""
    try:
        record = json.loads(line)
    except UnicodeDecodeError as error:
        msg = f"{label}:{number}: not UTF-8 text (byte {error.start} of the line); convert the file to UTF-8"
        raise InputError(msg) from None
    except json.JSONDecodeError as error:
        msg = f"{label}:{number}: not a JSON object ({error.msg} at column {error.colno})"
        raise InputError(msg) from None
    if not isinstance(record, dict):
        msg = f"{label}:{number}: expected a JSON object, got {type(record).__name__}"
        raise InputError(msg)
    return record


def jsonl_records(text: str, label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON Lines text; anything else is an error."""
    for number, line in numbered_lines(text):
        yield number, json_object(line, label, number)


def detect_format(source: str | Path, text: str) -> str:
    """``jsonl`` for a ``.jsonl``/``.ndjson``/``.json`` file, ``lines`` for any other suffix; for stdin or a file
    without a suffix, ``jsonl`` if the first non-blank line is a JSON object, else ``lines``."""
    suffix = Path(str(source)).suffix.lower() if str(source) != "-" else ""
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix:
        return "lines"
    first = next((line for _, line in numbered_lines(text)), "")
    try:
        return "jsonl" if isinstance(json.loads(first), dict) else "lines"
    except json.JSONDecodeError:
        return "lines"


def read_documents(source: str | Path, format: str = "auto") -> list[str]:
    """Documents from a file or stdin (``"-"``).

    - ``jsonl``: one JSON object per line with a string ``text`` (an optional ``title`` is put first, on its own
      line); blank lines are skipped.
    - ``lines``: one document per non-blank line.
    - ``auto``: see :func:`detect_format`.

    Raises:
        InputError: naming the file and line of anything that cannot be read as asked.
    """
    if format not in FORMATS:
        msg = f"format must be one of {', '.join(FORMATS)}, but got {format!r}"
        raise ValueError(msg)
    label = "<stdin>" if str(source) == "-" else str(source)
    text = read_text(source)
    if format == "auto":
        format = detect_format(source, text)
    documents: list[str] = []
    if format == "lines":
        numbers = []
        for number, line in numbered_lines(text):
            numbers.append(number)
            documents.append(line)
        _check_unicode(documents, label, numbers)
        return documents
    numbers = []
    for number, record in jsonl_records(text, label):
        body, title = record.get("text"), record.get("title")
        if not isinstance(body, str):
            msg = f"{label}:{number}: needs a string field 'text'" + ("" if body is None else
                                                                        f", got {type(body).__name__}")
            raise InputError(msg)
        if title is not None and not isinstance(title, str):
            msg = f"{label}:{number}: 'title' must be a string, got {type(title).__name__}"
            raise InputError(msg)
        numbers.append(number)
        documents.append(f"{title}\n{body}" if title else body)
    _check_unicode(documents, label, numbers)
    return documents


def _check_unicode(documents: list[str], label: str, numbers: list[int]) -> None:
    try:
        check_encodable(documents, lambda position: f"{label}:{numbers[position]}: the document")
    except ValueError as error:
        raise InputError(str(error)) from None
