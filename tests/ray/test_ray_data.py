"""Offline batch reranking on Ray Data: 10,000 pairs from Parquet, every row once with its ids, in input order, with
the in-process engine's scores."""

from __future__ import annotations

import random

import numpy as np
import pytest
from ettin_rerank.batch import BatchConfig, rerank_dataset

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
WORDS = "protein cell gene disease study results patients clinical treatment effect data risk brain".split()


def test_thousands_of_pairs_in_several_blocks(ray_local, tmp_path, tiny_checkpoint, reranker):
    import ray.data

    rng = random.Random(4)
    count = 2_000
    queries = [f"query {i // 20} {rng.choice(WORDS)}" for i in range(count)]
    documents = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(count)]
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"pair_id": list(range(count)), "qid": [i // 20 for i in range(count)],
                             "query": queries, "document": documents}), source)
    config = BatchConfig(model=str(tiny_checkpoint), engine_options={"device": "cpu", "dtype": "float32"})
    scored = rerank_dataset(ray.data.read_parquet(str(source)), config, actors=1, rows_per_batch=500)
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
