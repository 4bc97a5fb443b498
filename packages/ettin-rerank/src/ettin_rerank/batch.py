"""Offline batch reranking: score (query, document) rows of Parquet or JSONL files, in this process or on Ray Data.

Input rows need a ``query`` and a ``document`` column (names configurable); every other column (ids, labels...) is
kept untouched. The output is Parquet with a ``score`` column (and ``rank`` within each query when asked), one row
per input row, in input order. In this process (the default, no cluster needed) the rows stream through the engine
in chunks with a progress bar; with Ray (``rerank_dataset``, or ``ettin-rerank batch --ray-address ...``) they go
through ``ray.data`` ``map_batches`` on a pool of actors, each loading the model once. The scores are the same
either way: the same engine scores the same pairs (batches are formed by tokens inside each actor).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ettin_rerank.args import EngineArgs
from ettin_rerank.cluster import init_ray
from ettin_rerank.errors import MissingExtraError
from ettin_rerank.options import RerankOptions

if TYPE_CHECKING:
    import pyarrow as pa

    from ettin_rerank.engine.reranker import Reranker

logger = logging.getLogger(__name__)

CHUNK_ROWS = 4096
"""Rows read, scored and written at a time in this process (memory stays flat for any input size)."""


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

    def __post_init__(self) -> None:
        unknown = set(self.engine_options) - {*EngineArgs.names(), *RerankOptions.names()} - {"model"}
        if unknown:
            msg = f"unknown engine option(s): {', '.join(sorted(unknown))}"
            raise TypeError(msg)
        self.engine_args  # noqa: B018 -- checked now, not on the first row
        self.options  # noqa: B018

    @property
    def group_by(self) -> str:
        return self.group_column or self.query_column

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


def _require_pyarrow() -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        raise MissingExtraError(extra="batch", missing="pyarrow") from None
    return pa


def read_table_batches(path: str | Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet file (or folder) or a JSONL file, ``CHUNK_ROWS`` rows at a time."""
    pa = _require_pyarrow()
    import pyarrow.dataset as ds

    path = Path(path)
    if not path.exists():
        msg = f"{path} does not exist"
        raise FileNotFoundError(msg)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        import pyarrow.json as pj

        try:
            table = pj.read_json(path)
        except pa.ArrowInvalid as error:
            msg = f"{path}: not valid JSON Lines ({error})"
            raise ValueError(msg) from None
        yield from table.select(columns or table.column_names).to_batches(CHUNK_ROWS)
        return
    dataset = ds.dataset(path, format="parquet")
    yield from dataset.to_batches(columns=columns, batch_size=CHUNK_ROWS)


def count_rows(path: str | Path) -> int | None:
    """Rows in a Parquet input (from its metadata), ``None`` for JSONL."""
    if Path(path).suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return None
    import pyarrow.dataset as ds

    return ds.dataset(path, format="parquet").count_rows()


def _check_columns(batch: pa.RecordBatch, config: BatchConfig, source: str) -> None:
    for column in (config.query_column, config.document_column):
        if column not in batch.schema.names:
            msg = f"{source} has no column {column!r} (columns: {', '.join(batch.schema.names)})"
            raise ValueError(msg)
    if config.score_column in batch.schema.names or (config.rank and "rank" in batch.schema.names):
        msg = f"{source} already has a column {config.score_column!r} or 'rank'; choose another --score-column"
        raise ValueError(msg)


def score_batch(engine: Reranker, batch: pa.RecordBatch, config: BatchConfig) -> pa.RecordBatch:
    """``batch`` with the score column appended (rows in the same order)."""
    pa = _require_pyarrow()
    queries = batch.column(config.query_column).to_pylist()
    documents = batch.column(config.document_column).to_pylist()
    for position, (query, document) in enumerate(zip(queries, documents, strict=True)):
        if not isinstance(query, str) or not isinstance(document, str):
            bad = config.query_column if not isinstance(query, str) else config.document_column
            msg = f"row {position} of a batch has a {type(query if bad == config.query_column else document).__name__}"
            msg += f" in column {bad!r}; every row needs text in both {config.query_column!r} and "
            msg += f"{config.document_column!r}"
            raise ValueError(msg)
    scores = engine.score_pairs(list(zip(queries, documents, strict=True)), options=config.options)
    return batch.append_column(config.score_column, pa.array(scores, type=pa.float64()))


def add_ranks(table: pa.Table, config: BatchConfig) -> pa.Table:
    """``rank`` within each group (1 = best score; ties keep input order)."""
    pa = _require_pyarrow()
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


def rerank_file(source: str | Path, output: str | Path, config: BatchConfig, *,
                show_progress_bar: bool = True) -> int:
    """Score every row of ``source`` in this process and write ``output`` (Parquet); returns the row count."""
    _require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ettin_rerank.engine.reranker import Reranker

    output = Path(output)
    if output.exists() and output.is_dir():
        msg = f"{output} is a folder; give a file name for the Parquet output"
        raise ValueError(msg)
    batches = read_table_batches(source)
    first = next(batches, None)
    if first is None:
        msg = f"{source} holds no rows"
        raise ValueError(msg)
    _check_columns(first, config, str(source))
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with Reranker.from_args(config.engine_args, config.options, show_progress_bar=False) as engine, \
            tqdm(total=count_rows(source), unit="pair", desc="Reranking", disable=not show_progress_bar) as bar:
        scored = []
        writer = None
        for batch in _chain(first, batches):
            result = score_batch(engine, batch, config)
            rows += result.num_rows
            bar.update(result.num_rows)
            if config.rank:
                scored.append(result)  # ranks need every row of a query
                continue
            if writer is None:
                writer = pq.ParquetWriter(output, result.schema)
            writer.write_batch(result)
        if config.rank:
            pq.write_table(add_ranks(pa.Table.from_batches(scored), config), output)
        elif writer is not None:
            writer.close()
    logger.info("Scored %d pairs from %s into %s", rows, source, output)
    return rows


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


class DatasetScorer:
    """The ``map_batches`` callable on Ray Data: loads the engine once per actor, scores each batch."""

    def __init__(self, config: BatchConfig) -> None:
        from ettin_rerank.engine.reranker import Reranker

        self.config = config
        self.engine = Reranker.from_args(config.engine_args, config.options, show_progress_bar=False)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        scored = [score_batch(self.engine, b, self.config) for b in batch.to_batches()]
        return pa.Table.from_batches(scored) if scored else batch


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
    scored = dataset.map_batches(
        DatasetScorer, fn_constructor_kwargs={"config": config}, batch_size=rows_per_batch, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
    )
    if not config.rank:
        return scored
    return scored.groupby(config.group_by).map_groups(
        lambda group: add_ranks(group, config), batch_format="pyarrow")


def rerank_with_ray(source: str | Path, output: str | Path, config: BatchConfig, *, address: str | None = "local",
                    actors: int = 1, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0) -> int:
    """Read ``source`` with Ray Data, score it on ``actors`` actors, write Parquet files into the folder ``output``;
    returns the row count. ``address``: ``"local"`` starts Ray in this process, else an existing cluster."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtraError(extra="ray", missing="ray[data]") from None

    if not Path(source).exists():
        msg = f"{source} does not exist"
        raise FileNotFoundError(msg)
    init_ray(address)  # a local cluster listens on 127.0.0.1 only (ettin_rerank.cluster)
    suffix = Path(source).suffix.lower()
    blocks = max(8, 4 * actors)  # enough blocks for every actor to have work
    dataset = (ray.data.read_json(str(source), override_num_blocks=blocks) if suffix in (".jsonl", ".json", ".ndjson")
               else ray.data.read_parquet(str(source), override_num_blocks=blocks))
    scored = rerank_dataset(dataset, config, actors=actors, cpus_per_actor=cpus_per_actor,
                            gpus_per_actor=gpus_per_actor)
    scored.write_parquet(str(output))
    return ray.data.read_parquet(str(output)).count()
