"""Tables of (query, document) rows in Parquet (a file or a folder of files) or JSON Lines: checked in full before
any work, then streamed a fixed number of rows at a time.

:func:`scan` is the checking pass over the columns the work reads (cheap next to scoring them). Each problem is one
:class:`~ettin_rerank.errors.InputError` that names the file, the row and the column: Parquet rows are counted from
0 within their file (as pyarrow and pandas count), JSON Lines by line number (from 1, as editors count). It also
fixes the schema (a JSON Lines column keeps one type across the whole file, however its values are spread) and
says whether the rows of each group are contiguous. :func:`chunks` then streams the rows from any row on (to
resume), ``chunk_rows`` at a time, whatever the files' own row groups; :func:`fingerprint` hashes the bytes.
Memory stays flat in the number of rows (a set of hashes of the distinct groups is kept when asked for groups).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ettin_rerank.errors import InputError, MissingExtraError
from ettin_rerank.inputs import JSONL_SUFFIXES, json_object
from ettin_rerank.validation import has_text

if TYPE_CHECKING:
    import pyarrow as pa

SCAN_ROWS = 4096
"""Rows per step of the checking pass."""
QUERY_CHECK_BATCH = 512
"""Distinct queries handed to the model's check at once."""

QueryCheck = Callable[[list[str]], "tuple[int, str] | None"]
"""Given distinct queries, the position and problem of the first one the model cannot take (too long for the
window, say), or ``None``."""


def require_pyarrow() -> Any:
    """The ``pyarrow`` module, or the error that says which extra to install."""
    try:
        import pyarrow as pa
    except ImportError:
        raise MissingExtraError(extra="batch", missing="pyarrow") from None
    return pa


@dataclass(frozen=True)
class Columns:
    """The columns the work reads (``group`` only when ranking) and the ones it adds (which must not exist)."""

    query: str = "query"
    document: str = "document"
    group: str | None = None
    added: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableScan:
    """What the checking pass found."""

    source: Path
    kind: str
    """``"jsonl"`` or ``"parquet"``."""
    files: list[Path]
    rows: int
    schema: pa.Schema
    groups_contiguous: bool
    """Whether the rows of each group follow each other (then ranks need memory for one group only)."""
    jsonl_fingerprint: str | None
    """:func:`fingerprint` of a JSON Lines input, hashed as the checking pass read its lines (``None`` for Parquet,
    whose files the checking pass reads only in part)."""


@dataclass(frozen=True)
class Chunk:
    """Rows ``first_row`` to ``first_row + table.num_rows - 1`` of the input; ``locate(i)`` names where the chunk's
    row ``i`` comes from (``file:line`` or ``file, row n``)."""

    table: pa.Table
    first_row: int
    locate: Callable[[int], str]


def is_jsonl(path: str | Path) -> bool:
    return Path(path).suffix.lower() in JSONL_SUFFIXES


def scan(source: str | Path, columns: Columns, *, check_queries: QueryCheck | None = None) -> TableScan:
    """Check every row of ``source`` that the work will read; raises :class:`InputError` at the first problem.

    Checked: the file can be read; the query and document columns exist and hold text in every row (no null; a
    query with visible characters; an empty document is scored); the added columns do not exist; with a group
    column, no row lacks a group; with ``check_queries``, every distinct query fits the model.
    """
    require_pyarrow()
    source = Path(source)
    if not source.exists():
        msg = f"{source} does not exist"
        raise InputError(msg)
    checker = _RowChecker(columns, check_queries)
    kind = "jsonl" if is_jsonl(source) else "parquet"
    if kind == "jsonl":
        if source.is_dir():
            msg = f"{source} is a folder; a JSON Lines input is one file"
            raise InputError(msg)
        rows, schema, jsonl_fingerprint = _scan_jsonl(source, columns, checker)
        files = [source]
    else:
        rows, schema, files = _scan_parquet(source, columns, checker)
        jsonl_fingerprint = None
    checker.finish()
    if rows == 0:
        msg = f"{source} holds no rows"
        raise InputError(msg)
    _check_storable(source, schema)
    return TableScan(source, kind, files, rows, schema, groups_contiguous=checker.contiguous,
                     jsonl_fingerprint=jsonl_fingerprint)


def chunks(scanned: TableScan, chunk_rows: int, *, start: int = 0) -> Iterator[Chunk]:
    """The rows of a scanned input from row ``start`` on, ``chunk_rows`` at a time (the last chunk may be shorter);
    chunk ``k`` always holds rows ``start + k * chunk_rows`` on, whatever the files' own blocks."""
    if scanned.kind == "jsonl":
        yield from _jsonl_chunks(scanned, chunk_rows, start)
    else:
        yield from _parquet_chunks(scanned, chunk_rows, start)


def fingerprint(scanned: TableScan) -> str:
    """SHA-256 of the input's bytes (each file of a folder with its name within the folder, in reading order)."""
    if scanned.jsonl_fingerprint is not None:
        return scanned.jsonl_fingerprint
    digest = hashlib.sha256()
    for path in scanned.files:
        name = path.relative_to(scanned.source).as_posix() if scanned.source.is_dir() else ""
        digest.update(_file_header(name, path))
        with path.open("rb") as data:
            while block := data.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def _file_header(name: str, path: Path) -> bytes:
    """What :func:`fingerprint` hashes before a file's bytes: its name within a folder input ("" for a file) and
    its size."""
    return f"{name}\0{path.stat().st_size}\0".encode()


# ----------------------------------------------------------------------------------------------------- checks


def _check_storable(source: Path, schema: pa.Schema) -> None:
    """Every column can be written to the Parquet output (a JSON Lines column of only empty objects cannot), found
    before any row is scored rather than when the first scored rows are written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for field in schema:
        try:
            pq.ParquetWriter(pa.BufferOutputStream(), pa.schema([field])).close()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as error:
            msg = (f"{source}: column {field.name!r} is {field.type}, which Parquet cannot store ({error}); a "
                   "column whose objects are all empty ({}) is one: drop it or give its objects a key")
            raise InputError(msg) from None


_START = object()


class _RowChecker:
    """The checks shared by both formats, on Arrow arrays of one block of rows at a time."""

    def __init__(self, columns: Columns, check_queries: QueryCheck | None) -> None:
        self.columns = columns
        self.check_queries = check_queries
        self.pending: list[tuple[str, str]] = []  # (query, where) waiting for the model's check
        self.previous_group: Any = _START
        self.seen_groups: set[int] = set()
        self.contiguous = True

    def block(self, query: pa.Array, document: pa.Array, group: pa.Array | None,
              locate: Callable[[int], str]) -> None:
        query = _text_array(query, self.columns.query, locate)
        _text_array(document, self.columns.document, locate)
        for position in _run_starts(query):
            text = query[position].as_py()
            if not has_text(text):
                msg = (f"{locate(position)}: column {self.columns.query!r} is empty (or only whitespace, control or "
                       "zero-width characters); every row needs a query")
                raise InputError(msg)
            if self.check_queries is not None:
                self.pending.append((text, locate(position)))
                if len(self.pending) >= QUERY_CHECK_BATCH:
                    self._check_pending()
        if group is not None:
            self._groups(group, locate)

    def finish(self) -> None:
        if self.pending:
            self._check_pending()

    def _check_pending(self) -> None:
        problem = self.check_queries([text for text, _ in self.pending])
        if problem is not None:
            position, message = problem
            msg = f"{self.pending[position][1]}: column {self.columns.query!r}: {message}"
            raise InputError(msg)
        self.pending.clear()

    def _groups(self, group: pa.Array, locate: Callable[[int], str]) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        name = self.columns.group
        kind = group.type
        if pa.types.is_dictionary(kind):
            group, kind = group.dictionary_decode(), kind.value_type
        if not (_is_text(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
            msg = f"{locate(0)}: column {name!r} holds {kind}; a group column holds text or numbers"
            raise InputError(msg)
        if group.null_count:
            msg = f"{locate(_first(pc.is_null(group)))}: column {name!r} is null; every row needs a group to rank in"
            raise InputError(msg)
        if pa.types.is_floating(kind) and pc.any(pc.is_nan(group)).as_py():
            msg = f"{locate(_first(pc.is_nan(group)))}: column {name!r} is NaN; every row needs a group to rank in"
            raise InputError(msg)
        for position in _run_starts(group):
            value = group[position].as_py()
            if position == 0 and value == self.previous_group:
                continue
            key = hash(value)  # a collision only costs memory later (ranks by index), never a wrong rank
            if key in self.seen_groups:
                self.contiguous = False
            self.seen_groups.add(key)
        self.previous_group = group[len(group) - 1].as_py() if len(group) else self.previous_group


def _text_array(array: pa.Array, name: str, locate: Callable[[int], str]) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind) and _is_text(kind.value_type):
        array, kind = array.dictionary_decode(), kind.value_type
    if array.null_count:
        msg = f"{locate(_first(pc.is_null(array)))}: column {name!r} is null; every row needs text in it"
        raise InputError(msg)
    if not _is_text(kind):
        msg = f"{locate(0)}: column {name!r} holds {kind}, not text"
        raise InputError(msg)
    try:
        array.validate(full=True)
    except pa.ArrowInvalid as error:
        found = re.search(r"index (\d+)", str(error))
        msg = f"{locate(int(found.group(1)) if found else 0)}: column {name!r} is not valid UTF-8 text ({error})"
        raise InputError(msg) from None
    return array


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _first(mask: pa.Array) -> int:
    import pyarrow.compute as pc

    return int(pc.index(mask, True).as_py())


def _run_starts(array: pa.Array) -> list[int]:
    """Positions where the value differs from the one before (0 included): distinct neighbours, checked once."""
    import pyarrow.compute as pc

    if len(array) == 0:
        return []
    changes = pc.indices_nonzero(pc.not_equal(array[1:], array[:-1])).to_pylist()
    return [0, *(position + 1 for position in changes)]


# ----------------------------------------------------------------------------------------------------- JSON Lines


def _jsonl_records(path: Path, skip: int = 0, digest: Any = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` per non-blank line (lines end at ``\\n`` only); the first ``skip`` records are
    passed over without parsing; every byte read goes into ``digest`` (a ``hashlib`` hash) when given."""
    with path.open("rb") as data:
        for number, line in enumerate(data, 1):
            if digest is not None:
                digest.update(line)
            raw = line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line
            if not raw.strip():
                continue
            if skip:
                skip -= 1
                continue
            yield number, json_object(raw, str(path), number)


def _jsonl_blocks(path: Path, size: int, skip: int = 0,
                  digest: Any = None) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
    lines: list[int] = []
    records: list[dict[str, Any]] = []
    for number, record in _jsonl_records(path, skip, digest):
        lines.append(number)
        records.append(record)
        if len(records) == size:
            yield lines, records
            lines, records = [], []
    if records:
        yield lines, records


def _scan_jsonl(path: Path, columns: Columns, checker: _RowChecker) -> tuple[int, pa.Schema, str]:
    """Rows, schema and fingerprint (the file's bytes hashed as they are read, one read for both)."""
    import pyarrow as pa

    types: dict[str, pa.DataType] = {}  # every column in order of first appearance, with its unified type
    first_seen: dict[str, int] = {}
    rows = 0
    digest = hashlib.sha256(_file_header("", path))
    for lines, records in _jsonl_blocks(path, SCAN_ROWS, digest=digest):
        for number, record in zip(lines, records, strict=True):
            for name in (columns.query, columns.document):
                _check_jsonl_text(path, number, record, name)
            for name in record:
                if name not in types:
                    if name in columns.added:
                        msg = (f"{path}:{number}: the input already has a column {name!r}, which the output adds; "
                               "rename it or choose another --score-column")
                        raise InputError(msg)
                    types[name] = pa.null()
                    first_seen[name] = number
        for name, known in types.items():
            kind = _infer_type(path, lines, name, [record.get(name) for record in records])
            types[name] = _unify(path, name, (known, first_seen[name]), (kind, lines[0]))
        arrays = {name: pa.array([record.get(name) for record in records], type=types[name])
                  for name in (columns.query, columns.document, columns.group) if name is not None}
        checker.block(arrays[columns.query], arrays[columns.document],
                      arrays.get(columns.group) if columns.group else None,
                      lambda i, lines=lines: f"{path}:{lines[i]}")
        rows += len(records)
    return rows, pa.schema(list(types.items())), digest.hexdigest()


def _check_jsonl_text(path: Path, number: int, record: dict[str, Any], name: str) -> None:
    if name not in record:
        msg = f"{path}:{number}: the row has no column {name!r} (it has: {', '.join(record) or 'nothing'})"
        raise InputError(msg)
    value = record[name]
    if not isinstance(value, str):
        got = "null" if value is None else f"a {type(value).__name__}"
        msg = f"{path}:{number}: column {name!r} is {got}, not text; every row needs text in it"
        raise InputError(msg)


_KINDS = {str: "text", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}


def _infer_type(path: Path, lines: list[int], name: str, values: list[Any]) -> pa.DataType:
    """pyarrow's type for one column of a block; a value that does not fit is named by its line."""
    import pyarrow as pa

    try:
        return pa.array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError):
        pass
    first = next(((line, value) for line, value in zip(lines, values, strict=True) if value is not None), None)
    for line, value in zip(lines, values, strict=True):
        if value is None:
            continue
        if _KINDS.get(type(value)) != _KINDS.get(type(first[1])):
            msg = (f"{path}:{line}: column {name!r} is {_KINDS.get(type(value), type(value).__name__)} here but "
                   f"{_KINDS.get(type(first[1]), type(first[1]).__name__)} on line {first[0]}; a column holds one "
                   "type of value")
            raise InputError(msg)
        try:
            pa.array([value])
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError) as error:
            msg = f"{path}:{line}: column {name!r} cannot be stored ({error})"
            raise InputError(msg) from None
    msg = f"{path}:{lines[0]}-{lines[-1]}: column {name!r} holds values of different shapes"
    raise InputError(msg)


def _unify(path: Path, name: str, known: tuple[pa.DataType, int], new: tuple[pa.DataType, int]) -> pa.DataType:
    """One type for a column over the blocks so far (``(type, from line)`` each); a clash names both lines."""
    import pyarrow as pa

    (known, first_line), (new, block_line) = known, new
    try:
        return pa.unify_schemas([pa.schema([(name, known)]), pa.schema([(name, new)])],
                                promote_options="permissive").field(name).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        msg = (f"{path}: column {name!r} holds {new} from line {block_line} on, but {known} from line {first_line}; "
               "a column holds one type of value")
        raise InputError(msg) from None


def _jsonl_chunks(scanned: TableScan, chunk_rows: int, start: int) -> Iterator[Chunk]:
    import pyarrow as pa

    first_row = start
    for lines, records in _jsonl_blocks(scanned.source, chunk_rows, skip=start):
        table = pa.Table.from_pylist(records, schema=scanned.schema)
        yield Chunk(table, first_row, lambda i, lines=lines: f"{scanned.source}:{lines[i]}")
        first_row += len(records)


# ----------------------------------------------------------------------------------------------------- Parquet


def _parquet_dataset(source: Path) -> Any:
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        return ds.dataset(source, format="parquet")
    except (pa.ArrowInvalid, OSError) as error:
        msg = f"{source}: not a Parquet file or folder of Parquet files ({error})"
        raise InputError(msg) from None


def _scan_parquet(source: Path, columns: Columns, checker: _RowChecker) -> tuple[int, pa.Schema, list[Path]]:
    import pyarrow as pa

    dataset = _parquet_dataset(source)
    files = [Path(name) for name in dataset.files]
    if not files:
        msg = f"{source} holds no Parquet files"
        raise InputError(msg)
    schema = dataset.schema
    for name in (columns.query, columns.document, columns.group):
        if name is not None and name not in schema.names:
            msg = f"{source} has no column {name!r} (columns: {', '.join(schema.names)})"
            raise InputError(msg)
    for name in columns.added:
        if name in schema.names:
            msg = (f"{source} already has a column {name!r}, which the output adds; rename it or choose another "
                   "--score-column")
            raise InputError(msg)
    needed = [name for name in (columns.query, columns.document, columns.group) if name is not None]
    rows = 0
    try:
        for path in files:
            _check_file_schema(path, schema, files[0])
            for offset, batch in _file_batches(path, schema, needed, SCAN_ROWS):
                checker.block(batch.column(columns.query), batch.column(columns.document),
                              batch.column(columns.group) if columns.group else None,
                              lambda i, path=path, offset=offset: f"{path}, row {offset + i}")
                rows += batch.num_rows
    except (pa.ArrowInvalid, OSError) as error:
        msg = f"{source}: cannot be read as Parquet ({error})"
        raise InputError(msg) from None
    return rows, schema, files


def _check_file_schema(path: Path, schema: pa.Schema, first: Path) -> None:
    import pyarrow.parquet as pq

    physical = pq.read_schema(path)
    for field in schema:
        index = physical.get_field_index(field.name)
        if index >= 0 and physical.field(index).type != field.type:
            msg = (f"{path}: column {field.name!r} is {physical.field(index).type} here but {field.type} in "
                   f"{first}; the files of a Parquet folder need the same column types")
            raise InputError(msg)


def _file_batches(path: Path, schema: pa.Schema, columns: list[str] | None, size: int,
                  start: int = 0) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(row within the file, batch)`` of one Parquet file from row ``start`` on, laid out as ``schema`` (a column
    this file lacks is null). Pages are decoded as they are read (``pre_buffer=False``): memory stays at a few
    batches whatever the file's row groups (the dataset API decodes a whole row group, 580 MiB for one group of
    1,000,000 rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    names = columns or schema.names
    row, groups = 0, []
    for index in range(file.num_row_groups):
        count = file.metadata.row_group(index).num_rows
        if row + count <= start and not groups:
            row += count
        else:
            groups.append(index)
    if not groups:
        return
    present = [name for name in names if name in file.schema_arrow.names]
    for batch in file.iter_batches(batch_size=size, row_groups=groups, columns=present):
        drop = min(max(start - row, 0), batch.num_rows)
        row += drop
        if drop == batch.num_rows:
            continue
        block = batch.slice(drop)
        arrays = [block.column(name) if name in present else pa.nulls(block.num_rows, schema.field(name).type)
                  for name in names]
        yield row, pa.RecordBatch.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in names]))
        row += block.num_rows


def _parquet_chunks(scanned: TableScan, chunk_rows: int, start: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pending: list[pa.Table] = []
    places: list[tuple[int, str, int]] = []  # (row within the chunk, file, row within that file)
    held = 0
    first_row = start
    skip = start
    for path in scanned.files:
        count = pq.ParquetFile(path).metadata.num_rows
        if skip >= count:
            skip -= count
            continue
        for in_file, block in _file_batches(path, scanned.schema, None, chunk_rows, start=skip):
            rest, at = block, in_file
            while rest.num_rows:
                take = min(rest.num_rows, chunk_rows - held)
                places.append((held, str(path), at))
                pending.append(pa.Table.from_batches([rest.slice(0, take)]))
                held, at, rest = held + take, at + take, rest.slice(take)
                if held == chunk_rows:
                    yield _parquet_chunk(pending, first_row, places)
                    first_row += held
                    pending, places, held = [], [], 0
        skip = 0
    if held:
        yield _parquet_chunk(pending, first_row, places)


def _parquet_chunk(tables: list[pa.Table], first_row: int, places: list[tuple[int, str, int]]) -> Chunk:
    import pyarrow as pa

    def locate(i: int) -> str:
        start, path, row = next(place for place in reversed(places) if place[0] <= i)
        return f"{path}, row {row + i - start}"

    return Chunk(pa.concat_tables(tables).combine_chunks(), first_row, locate)
