"""Offline batch reranking on Ray Data: 1,000 pairs from Parquet in five batches, every row once with its ids, in
input order, with the in-process engine's scores; ranks within each query; the command never mixes runs in one
folder and says in one line what failed. One real local Ray for all (each job starts its own actors, the cost
here: the command's 50-row ranked job serves two tests)."""

from __future__ import annotations

import io
import json
import random
import shutil
from contextlib import redirect_stdout

import numpy as np
import pytest
from ettin_rerank.batch import BatchConfig, rerank_dataset
from ettin_rerank.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
WORDS = "protein cell gene disease study results patients clinical treatment effect data risk brain".split()


def _flags(checkpoint):
    return ["--model", str(checkpoint), "--dtype", "float32", "--device", "cpu", "--ray-address", "local"]


@pytest.fixture(scope="module")
def ranked_job(ray_local, tmp_path_factory, tiny_checkpoint):
    """`ettin-rerank batch --rank` on Ray: 50 rows, 5 queries of 10 documents, into a folder (the input, the
    folder, and what the command printed)."""
    folder = tmp_path_factory.mktemp("ranked")
    source, out = folder / "big.parquet", folder / "scored"
    pq.write_table(pa.table({"qid": [i // 10 for i in range(50)], "query": [f"query {i // 10}" for i in range(50)],
                             "document": [f"document {i} " + " ".join(WORDS[: i % 9 + 1]) for i in range(50)]}),
                   source)
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["batch", str(source), str(out), *_flags(tiny_checkpoint), "--rank", "--group-column", "qid"])
    assert code == 0
    return source, out, printed.getvalue()


def test_every_pair_once_in_order_with_the_engines_scores(ray_local, tmp_path, tiny_checkpoint, reranker):
    import ray.data

    rng = random.Random(4)
    count = 1_000
    queries = [f"query {i // 20} {rng.choice(WORDS)}" for i in range(count)]
    documents = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(count)]
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"pair_id": list(range(count)), "qid": [i // 20 for i in range(count)],
                             "query": queries, "document": documents}), source)
    config = BatchConfig(model=str(tiny_checkpoint), engine_options={"device": "cpu", "dtype": "float32"})
    scored = rerank_dataset(ray.data.read_parquet(str(source)), config, actors=1, rows_per_batch=200)
    table = scored.to_arrow_refs()
    rows = pa.concat_tables(ray.get(table)).to_pydict()
    assert rows["pair_id"] == list(range(count)), "every row exactly once, in input order"
    assert rows["qid"] == [i // 20 for i in range(count)]
    expected = reranker.score_pairs(list(zip(queries, documents, strict=True)))
    np.testing.assert_allclose(rows["score"], expected, atol=1e-4)


def test_the_actors_callable_scores_a_batch_as_one_table_even_an_empty_one(tiny_checkpoint, reranker):
    """What each actor runs on a Ray batch (no cluster needed): a table of several chunks is scored as one, and an
    empty one still gets its score column (every block written has the same columns)."""
    from ettin_rerank.batch import DatasetScorer

    scorer = DatasetScorer(BatchConfig(model=str(tiny_checkpoint), engine_options={"device": "cpu",
                                                                                  "dtype": "float32"}))
    pairs = [("query one", "a gene"), ("query one", "a cell study"), ("query two", "brain data")]
    table = pa.concat_tables([pa.Table.from_pylist([{"query": q, "document": d}]) for q, d in pairs])
    scored = scorer(table)
    assert scored.column_names == ["query", "document", "score"]
    np.testing.assert_allclose(scored["score"].to_pylist(), reranker.score_pairs(pairs), atol=1e-5)
    empty = scorer(table.slice(0, 0))
    assert empty.column_names == ["query", "document", "score"] and empty.num_rows == 0
    assert empty.schema.field("score").type == pa.float64()


def test_ranks_within_each_query(ranked_job):
    _, out, printed = ranked_job
    assert "scored 50 pairs" in printed
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["document"] for r in rows) == sorted(f"document {i} " + " ".join(WORDS[: i % 9 + 1])
                                                         for i in range(50))
    for qid in range(5):
        group = sorted((r for r in rows if r["qid"] == qid), key=lambda r: r["rank"])
        assert [r["rank"] for r in group] == list(range(1, 11))
        assert [r["score"] for r in group] == sorted((r["score"] for r in group), reverse=True)


def test_the_command_never_mixes_runs_and_counts_only_what_it_wrote(ranked_job, tmp_path, tiny_checkpoint, capsys):
    """A 3-row job into the folder of a 50-row job is refused; with --overwrite it replaces that folder (one that
    `batch` wrote) and reports 3; a folder it did not write is never replaced; bad rows are found before Ray runs,
    and what fails on an actor is one line without terminal colours."""
    import pyarrow.dataset as ds

    flags = _flags(tiny_checkpoint)
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(json.dumps({"query": "query", "document": w}) for w in WORDS[:3]))
    out = tmp_path / "scored"
    shutil.copytree(ranked_job[1], out)  # the 50-row job's folder, as `batch` wrote it
    before = sorted(p.name for p in out.iterdir())
    assert main(["batch", str(small), str(out), *flags]) == 2
    assert "exists and is not empty (pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(["batch", str(small), str(out), *flags, "--overwrite"]) == 0
    assert "scored 3 pairs" in capsys.readouterr().out
    assert ds.dataset(out, format="parquet").count_rows() == 3
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    pq.write_table(pa.table({"x": [1]}), theirs / "data.parquet")
    assert main(["batch", str(small), str(theirs), *flags, "--overwrite"]) == 2
    assert "was not written by ettin-rerank batch" in capsys.readouterr().err
    assert [p.name for p in theirs.iterdir()] == ["data.parquet"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "document": "d"}\n{"query": "q", "document": null}\n')
    assert main(["batch", str(bad), str(tmp_path / "never"), *flags]) == 2
    assert "bad.jsonl:2: column 'document' is null" in capsys.readouterr().err
    long_query = tmp_path / "long.jsonl"
    long_query.write_text(json.dumps({"query": "word " * 60, "document": "d"}))
    assert main(["batch", str(long_query), str(tmp_path / "never"), *flags, "--max-length", "32"]) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("ettin-rerank")]
    assert len(ours) == 1 and "query is" in ours[0] and "\x1b[" not in ours[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "long.jsonl", "scored", "small.jsonl",
                                                          "theirs"]  # nothing half-written beside
