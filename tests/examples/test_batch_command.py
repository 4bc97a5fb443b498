"""`ettin-rerank batch` in this process (no cluster): every input row once, ids untouched, scores as the engine's,
ranks within each query, clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ettin_rerank.cli import main

pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def pairs_jsonl(tmp_path, make_text):
    rows = [{"qid": f"q{i // 5}", "doc_id": i, "query": f"query {i // 5} {make_text(3)}", "document": make_text(20 + i),
             "label": i % 2} for i in range(30)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, rows


def test_jsonl_in_parquet_out_with_ranks(pairs_jsonl, tmp_path, tiny_checkpoint, reranker, capsys):
    path, rows = pairs_jsonl
    out = tmp_path / "scored.parquet"
    assert main(["batch", str(path), str(out), "--model", str(tiny_checkpoint), "--dtype", "float32", "--rank",
                 "--group-column", "qid"]) == 0
    assert "scored 30 pairs" in capsys.readouterr().out
    table = pq.read_table(out).to_pylist()
    assert [r["doc_id"] for r in table] == [r["doc_id"] for r in rows]  # input order, ids untouched
    assert all(t["label"] == r["label"] and t["qid"] == r["qid"] for t, r in zip(table, rows, strict=True))
    expected = reranker.score_pairs([(r["query"], r["document"]) for r in rows])
    np.testing.assert_allclose([t["score"] for t in table], expected, atol=1e-5)
    for qid in {r["qid"] for r in rows}:
        group = [t for t in table if t["qid"] == qid]
        by_rank = sorted(group, key=lambda t: t["rank"])
        assert [t["rank"] for t in by_rank] == list(range(1, len(group) + 1))
        assert [t["score"] for t in by_rank] == sorted((t["score"] for t in group), reverse=True)


def test_parquet_in_with_other_column_names(tmp_path, tiny_checkpoint, reranker):
    import pyarrow as pa

    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"q": ["a question"] * 3, "passage": ["one", "two two", "three three three"],
                             "id": [7, 8, 9]}), source)
    out = tmp_path / "out.parquet"
    assert main(["batch", str(source), str(out), "--model", str(tiny_checkpoint), "--dtype", "float32",
                 "--query-column", "q", "--document-column", "passage", "--activation", "sigmoid"]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["id"] == [7, 8, 9]
    expected = reranker.score_pairs([("a question", p) for p in ["one", "two two", "three three three"]],
                                    activation="sigmoid")
    np.testing.assert_allclose(table["score"], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"query": "q", "text": "x"}\n', "has no column 'document'"),
        ('{"query": "q", "document": null}\n{"query": "q", "document": "d"}\n', "every row needs text"),
        ('{"query": "q", "document": "d", "score": 1}\n', "already has a column 'score'"),
        ("not json\n", "not valid JSON Lines"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, tiny_checkpoint, capsys, content, message):
    source = tmp_path / "bad.jsonl"
    source.write_text(content)
    assert main(["batch", str(source), str(tmp_path / "o.parquet"), "--model", str(tiny_checkpoint)]) == 2
    assert message in capsys.readouterr().err
