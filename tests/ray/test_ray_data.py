"""Offline batch reranking on Ray Data: 2,000 pairs from Parquet in five batches, every row once with its ids, in
input order, with the in-process engine's scores; the command never mixes runs in one folder and says in one line
what failed."""

from __future__ import annotations

import random

import numpy as np
import pytest
from ettin_rerank.batch import BatchConfig, rerank_dataset

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
WORDS = "protein cell gene disease study results patients clinical treatment effect data risk brain".split()


def test_every_pair_once_in_order_with_the_engines_scores(ray_local, tmp_path, tiny_checkpoint, reranker):
    import ray.data

    rng = random.Random(4)
    count = 2_000
    queries = [f"query {i // 20} {rng.choice(WORDS)}" for i in range(count)]
    documents = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(count)]
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"pair_id": list(range(count)), "qid": [i // 20 for i in range(count)],
                             "query": queries, "document": documents}), source)
    config = BatchConfig(model=str(tiny_checkpoint), engine_options={"device": "cpu", "dtype": "float32"})
    scored = rerank_dataset(ray.data.read_parquet(str(source)), config, actors=1, rows_per_batch=400)
    table = scored.to_arrow_refs()
    rows = pa.concat_tables(ray.get(table)).to_pydict()
    assert rows["pair_id"] == list(range(count)), "every row exactly once, in input order"
    assert rows["qid"] == [i // 20 for i in range(count)]
    expected = reranker.score_pairs(list(zip(queries, documents, strict=True)))
    np.testing.assert_allclose(rows["score"], expected, atol=1e-4)


def test_ranks_within_each_query(ray_local, tmp_path, tiny_checkpoint):
    import ray.data

    rows = [{"qid": q, "query": f"query {q}", "document": f"document {d} " + " ".join(WORDS[: d + 1])}
            for q in range(3) for d in range(6)]
    config = BatchConfig(model=str(tiny_checkpoint), rank=True, group_column="qid",
                         engine_options={"device": "cpu", "dtype": "float32"})
    out = rerank_dataset(ray.data.from_items(rows), config, actors=1).take_all()
    assert len(out) == len(rows)
    for qid in range(3):
        group = sorted((r for r in out if r["qid"] == qid), key=lambda r: r["rank"])
        assert [r["rank"] for r in group] == [1, 2, 3, 4, 5, 6]
        assert [r["score"] for r in group] == sorted((r["score"] for r in group), reverse=True)


def test_the_command_never_mixes_runs_and_counts_only_what_it_wrote(ray_local, tmp_path, tiny_checkpoint, capsys):
    """A 3-row job into the folder of a 50-row job is refused; with --overwrite it replaces that folder (one that
    `batch` wrote) and reports 3; a folder it did not write is never replaced; bad rows are found before Ray runs,
    and what fails on an actor is one line without terminal colours."""
    import json

    import pyarrow.dataset as ds
    from ettin_rerank.cli import main

    flags = ["--model", str(tiny_checkpoint), "--dtype", "float32", "--device", "cpu", "--ray-address", "local"]
    big, small = tmp_path / "big.parquet", tmp_path / "small.jsonl"
    pq.write_table(pa.table({"query": [f"query {i // 10}" for i in range(50)],
                             "document": [" ".join(WORDS[: i % 9 + 1]) for i in range(50)]}), big)
    small.write_text("\n".join(json.dumps({"query": "query", "document": w}) for w in WORDS[:3]))
    out = tmp_path / "scored"
    assert main(["batch", str(big), str(out), *flags]) == 0
    assert "scored 50 pairs" in capsys.readouterr().out
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "big.parquet", "long.jsonl", "scored",
                                                          "small.jsonl", "theirs"]  # nothing half-written beside
