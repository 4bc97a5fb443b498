"""Offline batch reranking: score (query, document) rows of Parquet or JSONL files, in this process or on Ray Data.

Input rows need a ``query`` and a ``document`` column (names configurable); every other column (ids, labels...) is
kept untouched. The output is Parquet with a ``score`` column (and ``rank`` within each query when asked), one row
per input row, in input order. Every row is checked before any is scored (:mod:`ettin_rerank.tables`).

In this process (the default, no cluster needed) the rows stream through the engine ``chunk_rows`` at a time with a
progress bar. Nothing half-done ever sits at the output's name: scored rows go into parts in ``OUTPUT.partial/``
(each part complete on disk within ``save_every`` seconds of scoring), and the output is assembled beside and
renamed into place when every row is scored. A run that stops (an error, Ctrl-C, SIGTERM, even SIGKILL) keeps its
parts; the same command again resumes after the last one, checked by a fingerprint of the input's bytes and the
settings stored in the parts, so the output equals an uninterrupted run's row for row. An existing output is
replaced only with ``overwrite`` and only if this command wrote it; the input is never the output.

With Ray (``rerank_dataset``, or ``ettin-rerank batch --ray-address ...``) the rows go through ``ray.data``
``map_batches`` on a pool of actors, each loading the model once; files are written into a folder beside the output
and renamed into place when complete. The scores are the same either way: the same engine scores the same pairs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ettin_rerank.args import EngineArgs
from ettin_rerank.cluster import init_ray
from ettin_rerank.errors import MissingExtraError
from ettin_rerank.options import RerankOptions
from ettin_rerank.outputs import (
    check_apart,
    check_replaceable_folder,
    check_writable,
    read_json_object,
    replace_folder,
    staging_folder,
    write_text_atomic,
)
from ettin_rerank.tables import Chunk, Columns, TableScan, chunks, fingerprint, is_jsonl, require_pyarrow, scan

if TYPE_CHECKING:
    import pyarrow as pa

    from ettin_rerank.engine.reranker import Reranker

logger = logging.getLogger(__name__)

CHUNK_ROWS = 4096
"""Rows read, scored and written at a time in this process (memory stays flat for any input size)."""
SAVE_EVERY = 60.0
"""Seconds of scoring between two parts of ``OUTPUT.partial`` saved complete on disk (what a SIGKILL can cost)."""
METADATA_KEY = b"ettin_rerank.batch"
"""Parquet schema metadata: what wrote the file, from which input (fingerprint) and with which settings."""
WRITTEN_BY = "ettin-rerank batch"
RAY_MARKER = "_ettin_batch.json"
"""Written into a Ray output folder when it is complete (Ray Data and pyarrow skip files starting with ``_``)."""
_PART = re.compile(r"part-(\d{6})\.parquet")
_OWN_FILES = re.compile(r"part-\d{6}\.parquet(\.tmp)?|\.lock|_ranks\.int32|_output\.parquet\.tmp")


@dataclass(frozen=True)
class BatchConfig:
    """What to score and how.

    Attributes:
        model: Ettin size, folder or hub id.
        query_column, document_column: Where the texts are.
        score_column: Name of the output score (raw logit unless ``activation`` says otherwise).
        rank: Add ``rank`` (1 = best) within each query (grouped by ``group_column``, default the query text).
        activation: ``"none"`` (raw logits, default), ``"sigmoid"`` or ``"calibrated"``.
        engine_options: Further :class:`~ettin_rerank.Reranker` arguments (``device``, ``dtype``, ``max_length``...):
            those of :class:`~ettin_rerank.args.EngineArgs` become :attr:`engine_args`, the others the per-call
            :attr:`options`.
    """

    model: str = "17m"
    query_column: str = "query"
    document_column: str = "document"
    score_column: str = "score"
    rank: bool = False
    group_column: str | None = None
    activation: str = "none"
    engine_options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """The fields, with a hub ``token`` in ``engine_options`` shown as ``'***'``."""
        options = {name: "***" if name == "token" and value else value for name, value in self.engine_options.items()}
        named = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "engine_options")
        return f"BatchConfig({named}, engine_options={options!r})"

    def __post_init__(self) -> None:
        unknown = set(self.engine_options) - {*EngineArgs.names(), *RerankOptions.names()} - {"model"}
        if unknown:
            msg = f"unknown engine option(s): {', '.join(sorted(unknown))}"
            raise TypeError(msg)
        if self.rank and self.score_column == "rank":
            msg = "score_column must not be 'rank' when ranks are added"
            raise ValueError(msg)
        self.engine_args  # noqa: B018 -- checked now, not on the first row
        self.options  # noqa: B018

    @property
    def group_by(self) -> str:
        return self.group_column or self.query_column

    @property
    def columns(self) -> Columns:
        """What the checking pass reads (the group only when ranking) and what the output adds."""
        return Columns(query=self.query_column, document=self.document_column,
                       group=self.group_by if self.rank else None,
                       added=(self.score_column, "rank") if self.rank else (self.score_column,))

    @property
    def engine_args(self) -> EngineArgs:
        """Which model scores the rows, and how."""
        given = {k: v for k, v in self.engine_options.items() if k in EngineArgs.names()}
        return EngineArgs(**{**given, "model": self.model})

    @property
    def options(self) -> RerankOptions:
        """The per-pair options (window, strategy, ``activation``...)."""
        given = {k: v for k, v in self.engine_options.items() if k in RerankOptions.names()}
        return RerankOptions().merged({**given, "activation": self.activation})

    def settings(self) -> dict[str, Any]:
        """Everything that changes the output, as stored with it (a resumed run must match it); never the hub
        ``token``, which changes no score and must not be written into outputs."""
        return json.loads(json.dumps({
            "model": self.model, "query_column": self.query_column, "document_column": self.document_column,
            "score_column": self.score_column, "rank": self.rank, "group_column": self.group_column,
            "activation": self.activation, "engine_options": _without_token(self.engine_options),
        }, default=str))


def _without_token(engine_options: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in sorted(engine_options.items()) if name != "token"}


def partial_path(output: str | Path) -> Path:
    """Where the scored rows of an unfinished run of ``output`` are kept: ``OUTPUT.partial``."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def score_batch(engine: Reranker, batch: pa.RecordBatch | pa.Table, config: BatchConfig) -> pa.RecordBatch | pa.Table:
    """``batch`` with the score column appended (rows in the same order); an error names the batch's row."""
    return _with_scores(engine, batch, config, lambda position: f"row {position} of a Ray Data batch")


def score_chunk(engine: Any, chunk: Chunk, config: BatchConfig) -> pa.Table:
    """The chunk's rows with the score column appended; an engine error names the file row it is about."""
    return _with_scores(engine, chunk.table, config, chunk.locate)


def _with_scores(engine: Any, table: pa.Table | pa.RecordBatch, config: BatchConfig,
                 locate: Callable[[int], str]) -> pa.Table | pa.RecordBatch:
    """``table`` (a Table or RecordBatch) with the score column; ``pairs[i]`` in an engine error becomes
    ``locate(i)`` and the column."""
    pa = require_pyarrow()
    pairs = list(zip(table.column(config.query_column).to_pylist(), table.column(config.document_column).to_pylist(),
                     strict=True))
    try:
        scores = engine.score_pairs(pairs, options=config.options)
    except (ValueError, TypeError) as error:
        found = re.search(r"pairs\[(\d+)\](\[[01]\])?", str(error))
        if found is None:
            raise
        column = {"[0]": config.query_column, "[1]": config.document_column}.get(found.group(2) or "")
        where = locate(int(found.group(1))) + (f": column {column!r}" if column else "")
        msg = where + str(error)[found.end():]
        raise type(error)(msg) from None
    return table.append_column(config.score_column, pa.array(scores, type=pa.float64()))


def add_ranks(table: pa.Table, config: BatchConfig) -> pa.Table:
    """``rank`` within each group (1 = best score; ties keep input order)."""
    pa = require_pyarrow()
    groups = table.column(config.group_by).to_pylist()
    scores = table.column(config.score_column).to_pylist()
    order = sorted(range(len(scores)), key=lambda i: (groups[i], -(scores[i] if not math.isnan(scores[i])
                                                                   else -math.inf), i))
    ranks = [0] * len(scores)
    previous, rank = object(), 0
    for i in order:
        rank = 1 if groups[i] != previous else rank + 1
        previous = groups[i]
        ranks[i] = rank
    return table.append_column("rank", pa.array(ranks, type=pa.int32()))


# ----------------------------------------------------------------------------------------------------- in process


def rerank_file(source: str | Path, output: str | Path, config: BatchConfig, *, overwrite: bool = False,
                resume: bool | None = None, chunk_rows: int = CHUNK_ROWS, save_every: float = SAVE_EVERY,
                engine: Any = None, show_progress_bar: bool = True) -> int:
    """Score every row of ``source`` in this process into the Parquet file ``output``; returns its row count.

    Args:
        source: Parquet file or folder, or JSON Lines file.
        output: Parquet file to write (never ``source``; an existing one only with ``overwrite``, and only if this
            command wrote it).
        config: What to score and how.
        overwrite: Replace an ``output`` that ``ettin-rerank batch`` wrote before.
        resume: ``None`` (default): continue ``OUTPUT.partial`` when it holds rows of the same input and settings
            (another input or settings is an error); ``True``: the same, and an error when there is nothing to
            continue; ``False``: discard it and start over.
        chunk_rows: Rows read, scored and written at a time (part of the settings a resumed run must match).
        save_every: Seconds of scoring between two parts saved complete on disk.
        engine: A loaded :class:`~ettin_rerank.Reranker` (or anything with its ``score_pairs``) to use instead of
            loading ``config``'s model.
        show_progress_bar: Show a progress bar over the rows.

    Raises:
        ValueError: a bad input (file, row and column named), an output that may not be written, a partial run of
            another input or settings. Checked before any row is scored.
    """
    require_pyarrow()
    source, output = Path(source), Path(output)
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows <= 0:
        msg = f"chunk_rows must be a positive integer, but got {chunk_rows!r}"
        raise ValueError(msg)
    _check_output_file(source, output, overwrite)
    partial = partial_path(output)
    _check_partial_is_ours(partial, resume)
    with contextlib.ExitStack() as stack:
        if engine is None:
            from ettin_rerank.engine.reranker import Reranker

            engine = stack.enter_context(Reranker.from_args(config.engine_args, config.options,
                                                            show_progress_bar=False))
        scanned = scan(source, config.columns, check_queries=_query_check(engine, config.options))
        run = _Run(scanned, config, partial, chunk_rows, record={
            "written_by": WRITTEN_BY, "input": fingerprint(scanned), "rows": scanned.rows,
            "settings": {**config.settings(), "chunk_rows": chunk_rows, "engine": _engine_identity(engine)}})
        partial.mkdir(parents=True, exist_ok=True)
        stack.enter_context(_locked(partial))
        done = None
        try:
            done = _resume_point(run, resume)
            if done:
                logger.warning("resuming %s: %d of %d rows were scored before and are kept", partial, done,
                               scanned.rows)
            _score_into_parts(engine, run, done, save_every=save_every, show_progress_bar=show_progress_bar)
        except BaseException:  # an empty folder goes; parts are kept (another run's, refused, as they are)
            parts = _parts(partial)
            if not parts:
                shutil.rmtree(partial, ignore_errors=True)
            elif done is not None:
                logger.warning("stopped after %d of %d rows: they are kept in %s; run the same command again to "
                               "resume (--restart discards them)", _rows(parts), scanned.rows, partial)
            raise
        _assemble(run, output, overwrite=overwrite)
        # Removed while the lock (partial/.lock, inside) is held: a run that started meanwhile is refused until the
        # folder is gone, so it never has its parts removed (POSIX removes a file that is open and locked).
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("Scored %d pairs from %s into %s", scanned.rows, source, output)
    return scanned.rows


@dataclass(frozen=True)
class _Run:
    """One in-process run: its input, settings and partial folder, and the record stored with every part."""

    scanned: TableScan
    config: BatchConfig
    partial: Path
    chunk_rows: int
    record: dict[str, Any]


def _check_output_file(source: Path, output: Path, overwrite: bool) -> None:
    check_apart(output, {"input": source}, argument="OUTPUT")
    if output.is_dir():
        msg = f"OUTPUT {output} is a folder; give a file name for the Parquet output"
        raise ValueError(msg)
    if output.exists():
        if not overwrite:
            msg = f"OUTPUT {output} exists (pass --overwrite to replace an output of ettin-rerank batch)"
            raise ValueError(msg)
        if _written_by_us(output) is None:
            msg = (f"OUTPUT {output} was not written by ettin-rerank batch, so --overwrite does not replace it: move "
                   "it away yourself or choose another OUTPUT")
            raise ValueError(msg)
    check_writable(output.parent, argument="OUTPUT")


def _written_by_us(path: Path) -> dict | None:
    """The run record in a Parquet file's metadata, if ``ettin-rerank batch`` wrote it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return None
    try:
        record = json.loads(metadata.get(METADATA_KEY, b"null"))
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("written_by") == WRITTEN_BY else None


def _engine_identity(engine: Any) -> dict[str, str | None]:
    return {name: None if getattr(engine, name, None) is None else str(getattr(engine, name))
            for name in ("model_path", "device", "dtype")}


def _query_check(engine: Any, options: RerankOptions) -> Any:
    """The model's check of distinct queries (too long for the window, no tokens): a query it cannot take is found
    in the checking pass, not after hours of scoring."""
    if not hasattr(engine, "prepare"):
        return None

    def check(queries: list[str]) -> tuple[int, str] | None:
        try:
            engine.prepare(queries, [], options)
            return None
        except (ValueError, TypeError):
            pass
        for position, query in enumerate(queries):
            try:
                engine.prepare([query], [], options)
            except (ValueError, TypeError) as error:
                return position, str(error)
        return None

    return check


def _parts(partial: Path) -> list[Path]:
    return sorted(path for path in partial.iterdir() if _PART.fullmatch(path.name))


def _check_partial_is_ours(partial: Path, resume: bool | None) -> None:
    if not partial.exists():
        if resume:
            msg = f"--resume: there is no {partial} to resume; run without --resume to start"
            raise ValueError(msg)
        return
    strangers = [path.name for path in partial.iterdir() if not _OWN_FILES.fullmatch(path.name)] \
        if partial.is_dir() else [partial.name]
    if strangers:
        msg = (f"{partial} exists and was not written by ettin-rerank batch ({', '.join(strangers[:3])}); move it "
               "away or choose another OUTPUT")
        raise ValueError(msg)


def _resume_point(run: _Run, resume: bool | None) -> int:
    """Rows already scored in the partial folder (held under its lock) by a run of the same input and settings, 0
    if none; parts of another input or settings are an error, before any work."""
    import pyarrow.parquet as pq

    partial = run.partial
    for leftover in partial.glob("*.tmp"):  # a part (or the output) in flight when a run was killed
        leftover.unlink()
    parts = _parts(partial)
    if resume is False:
        for path in parts:
            path.unlink(missing_ok=True)
        return 0
    if resume and not parts:
        msg = f"--resume: {partial} holds no scored rows to resume; run without --resume to start"
        raise ValueError(msg)
    done = 0
    for number, part in enumerate(parts):
        metadata = pq.read_schema(part).metadata or {}
        stored = json.loads(metadata.get(METADATA_KEY, b"{}"))
        if number == 0:
            differences = _differences(stored, run.record)
            if differences:
                msg = (f"{partial} holds {_rows(parts)} rows of a run with {'; '.join(differences)}: run the same "
                       "command as before to resume it, or pass --restart to discard it")
                raise ValueError(msg)
        if stored.get("first_row") != done or _PART.fullmatch(part.name).group(1) != f"{number:06d}":
            msg = f"{partial} is not a sequence of parts ({part.name} out of place); pass --restart to discard it"
            raise ValueError(msg)
        done += pq.ParquetFile(part).metadata.num_rows
    return done


def _rows(parts: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(part).metadata.num_rows for part in parts)


def _differences(stored: dict, run: dict) -> list[str]:
    if stored.get("input") != run["input"]:
        return ["another input (its bytes differ)"]
    before, now = stored.get("settings", {}), run["settings"]
    if isinstance(before.get("engine_options"), dict):  # parts written before tokens were left out
        before = {**before, "engine_options": _without_token(before["engine_options"])}
    found = []
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            found.append(f"{key} {before.get(key)!r} (now {now.get(key)!r})")
    return ["other settings: " + ", ".join(found)] if found else []


@contextlib.contextmanager
def _locked(partial: Path) -> Iterator[None]:
    """One run at a time per output: a second one fails instead of mixing its parts with the first's."""
    try:
        import fcntl
    except ImportError:  # not on this platform: no lock
        yield
        return
    with (partial / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            msg = f"another ettin-rerank batch is writing {partial}; wait for it or choose another OUTPUT"
            raise ValueError(msg) from None
        yield


def _score_into_parts(engine: Any, run: _Run, done: int, *, save_every: float, show_progress_bar: bool) -> None:
    """Score the rows from ``done`` on into numbered parts, each renamed into place once complete (and when the
    scoring stops, whatever stops it)."""
    parts = _PartWriter(run, number=len(_parts(run.partial)))
    with tqdm(total=run.scanned.rows, initial=done, unit="pair", desc="Reranking",
              disable=not show_progress_bar) as bar:
        try:
            for chunk in chunks(run.scanned, run.chunk_rows, start=done):
                table = score_chunk(engine, chunk, run.config)
                parts.write(table, chunk.first_row)
                bar.update(table.num_rows)
                if parts.age() >= save_every:
                    parts.seal()
        finally:
            parts.seal()


class _PartWriter:
    """Writes ``part-NNNNNN.parquet.tmp`` and renames it to ``part-NNNNNN.parquet`` when sealed."""

    def __init__(self, run: _Run, number: int) -> None:
        self.run, self.number = run, number
        self.writer: Any = None
        self.opened = 0.0

    @property
    def path(self) -> Path:
        return self.run.partial / f"part-{self.number:06d}.parquet.tmp"

    def write(self, table: pa.Table, first_row: int) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            record = json.dumps({**self.run.record, "first_row": first_row}).encode()
            self.writer = pq.ParquetWriter(self.path, table.schema.with_metadata({METADATA_KEY: record}))
            self.opened = time.monotonic()
        self.writer.write_table(table)

    def age(self) -> float:
        return time.monotonic() - self.opened if self.writer is not None else 0.0

    def seal(self) -> None:
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        try:
            writer.close()
        except Exception:
            self.path.unlink(missing_ok=True)  # damaged (a full disk, say): drop it, keep the sealed ones
            raise
        os.replace(self.path, self.path.with_suffix(""))
        self.number += 1


def _assemble(run: _Run, output: Path, *, overwrite: bool) -> None:
    """Write the output beside, from the parts (with ranks when asked), and rename it into place. Parts are read one
    row group at a time (``pre_buffer=False``: pyarrow's default holds a whole file in memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = _parts(run.partial)
    rows = _rows(parts)
    if rows != run.scanned.rows:
        msg = f"{run.partial} holds {rows} rows, but the input has {run.scanned.rows}; pass --restart to score again"
        raise ValueError(msg)
    ranks = _rank_file(parts, run.config, run.scanned.groups_contiguous, run.partial) if run.config.rank else None
    schema = pq.read_schema(parts[0])
    if ranks is not None:
        schema = schema.append(pa.field("rank", pa.int32()))
    metadata = {**(run.scanned.schema.metadata or {}), METADATA_KEY: json.dumps(run.record).encode()}
    assembled = run.partial / "_output.parquet.tmp"
    with pq.ParquetWriter(assembled, schema.with_metadata(metadata)) as writer, \
            (ranks.open("rb") if ranks is not None else contextlib.nullcontext()) as rank_data:
        for part in parts:
            for batch in pq.ParquetFile(part, pre_buffer=False).iter_batches(batch_size=run.chunk_rows):
                table = pa.Table.from_batches([batch])
                if rank_data is not None:
                    values = np.frombuffer(rank_data.read(4 * table.num_rows), dtype=np.int32)
                    table = table.append_column("rank", pa.array(values, type=pa.int32()))
                writer.write_table(table)
    if output.exists() and not (overwrite and _written_by_us(output)):
        msg = f"OUTPUT {output} appeared while this run worked; the result stays in {run.partial}"
        raise ValueError(msg)
    os.replace(assembled, output)


def _rank_file(parts: list[Path], config: BatchConfig, contiguous: bool, folder: Path) -> Path:
    """Ranks of every row (int32, in row order) in a file: one group in memory at a time when the rows of each group
    are contiguous, else 16 bytes per row (group number and score)."""
    import numpy as np
    import pyarrow.parquet as pq

    path = folder / "_ranks.int32"

    def batches() -> Iterator[tuple[list[Any], np.ndarray]]:
        for part in parts:
            for batch in pq.ParquetFile(part, pre_buffer=False).iter_batches(
                    batch_size=CHUNK_ROWS, columns=[config.group_by, config.score_column]):
                yield batch.column(0).to_pylist(), batch.column(1).to_numpy(zero_copy_only=False)

    with path.open("wb") as out:
        if contiguous:
            current, held = object(), []
            for groups, scores in batches():
                start = 0
                for position in range(1, len(groups) + 1):
                    if position == len(groups) or groups[position] != groups[position - 1]:
                        if groups[start] != current and held:
                            out.write(_ranks_of(np.concatenate(held)).tobytes())
                            held = []
                        current = groups[start]
                        held.append(scores[start:position])
                        start = position
            if held:
                out.write(_ranks_of(np.concatenate(held)).tobytes())
        else:
            numbers: dict[Any, int] = {}
            group_ids, all_scores = [], []
            for groups, scores in batches():
                group_ids.append(np.fromiter((numbers.setdefault(g, len(numbers)) for g in groups), dtype=np.int64,
                                             count=len(groups)))
                all_scores.append(scores)
            out.write(_ranks_of(np.concatenate(all_scores), np.concatenate(group_ids)).tobytes())
    return path


def _ranks_of(scores: Any, groups: Any = None) -> Any:
    """1 = best score within each group; NaN ranks last; ties keep input order."""
    import numpy as np

    key = np.where(np.isnan(scores), np.inf, -scores)
    order = np.lexsort((np.arange(len(scores)), key) if groups is None else (np.arange(len(scores)), key, groups))
    ranks = np.empty(len(scores), dtype=np.int32)
    if groups is None:
        ranks[order] = np.arange(1, len(scores) + 1, dtype=np.int32)
        return ranks
    ordered = groups[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, len(ordered)]))
    ranks[order] = (np.arange(len(ordered)) - first_of_group + 1).astype(np.int32)
    return ranks


# ----------------------------------------------------------------------------------------------------- Ray Data


class DatasetScorer:
    """The ``map_batches`` callable on Ray Data: loads the engine once per actor, scores each batch."""

    def __init__(self, config: BatchConfig) -> None:
        from ettin_rerank.engine.reranker import Reranker

        self.config = config
        self.engine = Reranker.from_args(config.engine_args, config.options, show_progress_bar=False)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_batch(self.engine, batch, self.config)


def rerank_dataset(dataset: Any, config: BatchConfig, *, actors: int = 1, rows_per_batch: int = 1024,
                   cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0) -> Any:
    """``dataset`` (a ``ray.data.Dataset``) with the score column (and ``rank``), through a pool of ``actors``,
    each holding one engine. Rows keep their input order (``preserve_order``). Give the dataset at least as many
    blocks as actors (``override_num_blocks`` when reading), or some actors get no work; on a small machine leave
    a CPU free (an actor pool that takes every CPU hangs Ray Data: ray-project/ray#44687)."""
    try:
        import ray.data
    except ImportError:
        raise MissingExtraError(extra="ray", missing="ray[data]") from None

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    schema = dataset.schema()
    if schema is not None:
        names = list(schema.names)
        for column in (config.query_column, config.document_column):
            if column not in names:
                msg = f"the dataset has no column {column!r} (columns: {', '.join(names)})"
                raise ValueError(msg)
        for column in config.columns.added:
            if column in names:
                msg = f"the dataset already has a column {column!r}, which the output adds; choose another name"
                raise ValueError(msg)
    scored = dataset.map_batches(
        DatasetScorer, fn_constructor_kwargs={"config": config}, batch_size=rows_per_batch, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
    )
    if not config.rank:
        return scored
    return scored.groupby(config.group_by).map_groups(
        lambda group: add_ranks(group, config), batch_format="pyarrow")


def rerank_with_ray(source: str | Path, output: str | Path, config: BatchConfig, *, address: str | None = "local",
                    actors: int = 1, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                    overwrite: bool = False) -> int:
    """Read ``source`` with Ray Data, score it on ``actors`` actors, write Parquet files into the folder ``output``;
    returns the row count this run wrote. ``address``: ``"local"`` starts Ray in this process, else an existing
    cluster. Every row is checked before Ray starts; the files go into a folder beside ``output``, renamed into
    place when complete; an existing ``output`` is replaced only with ``overwrite``, and only if this command
    wrote it (its ``_ettin_batch.json``)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtraError(extra="ray", missing="ray[data]") from None

    source, output = Path(source), Path(output)
    check_apart(output, {"input": source}, argument="OUTPUT")
    check_replaceable_folder(output, command="batch", marker=RAY_MARKER, overwrite=overwrite, argument="OUTPUT",
                             is_ours=lambda folder: (read_json_object(folder / RAY_MARKER) or {}).get("written_by")
                             == WRITTEN_BY)
    check_writable(output.parent, argument="OUTPUT")
    scanned = scan(source, config.columns)
    run = {"written_by": WRITTEN_BY, "input": fingerprint(scanned), "rows": scanned.rows,
           "settings": {**config.settings(), "ray_actors": actors}}
    init_ray(address)  # a local cluster listens on 127.0.0.1 only (ettin_rerank.cluster)
    blocks = max(8, 4 * actors)  # enough blocks for every actor to have work
    dataset = (ray.data.read_json(str(source), override_num_blocks=blocks) if is_jsonl(source)
               else ray.data.read_parquet(str(source), override_num_blocks=blocks))
    scored = rerank_dataset(dataset, config, actors=actors, cpus_per_actor=cpus_per_actor,
                            gpus_per_actor=gpus_per_actor)
    staging = staging_folder(output)
    try:
        try:
            scored.write_parquet(str(staging))
        except ray.exceptions.RayError as error:
            raise RuntimeError(_ray_error_line(error)) from None
        import pyarrow.dataset as ds

        rows = ds.dataset(staging, format="parquet").count_rows()
        if rows != scanned.rows:
            msg = f"Ray wrote {rows} rows for the {scanned.rows} of {source}; nothing was kept"
            raise RuntimeError(msg)
        write_text_atomic(staging / RAY_MARKER, json.dumps(run, indent=2))
        replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return rows


def _ray_error_line(error: BaseException) -> str:
    """What failed on an actor, in one line without terminal colours: the first (innermost) error of the
    traceback Ray carries as text, else its last line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = [(name, message) for name, message in
             re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", text, flags=re.MULTILINE)
             if not name.startswith("ray.")]
    if found:
        name, message = found[0]
        return f"scoring on Ray failed: {message} ({name.rsplit('.', 1)[-1]} on an actor)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"scoring on Ray failed: {lines[-1] if lines else type(error).__name__}"
