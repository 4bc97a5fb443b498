"""The evaluation harness, proven on both ends: it reproduces the published retrieval figure on SciFact, and an
oracle reranker reaches exactly the best NDCG@10 that the retrieved set allows."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from ettin_rerank.evaluation.beir import load_beir
from ettin_rerank.evaluation.compare import retrieve
from ettin_rerank.evaluation.metrics import metrics, oracle_run
from ettin_rerank.evaluation.retrieval import QdrantRetriever
from ettin_rerank.inputs import InputError

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "scifact"
needs_scifact = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(),
                                   reason=f"SciFact assets not found at {SCIFACT}")


@pytest.fixture(scope="module")
def scifact_retrieval():
    data = load_beir(SCIFACT, "test")
    retrieved = retrieve(data, QdrantRetriever(), top_k=100)
    return data, retrieved, retrieved.run


@needs_scifact
@pytest.mark.slow
def test_dense_retrieval_reproduces_the_published_ndcg(scifact_retrieval):
    data, retrieved, _ = scifact_retrieval
    assert len(data.queries) == 300 and len(data.corpus) == 5183
    assert retrieved.metrics["NDCG@10"] == pytest.approx(0.6451, abs=0.005)


@needs_scifact
@pytest.mark.slow
def test_oracle_reranker_reaches_the_ceiling_set_by_recall(scifact_retrieval):
    data, retrieved, run = scifact_retrieval
    oracle = metrics(data.qrels, oracle_run(data.qrels, run), 100)
    ceiling = []
    for qid, judged in data.qrels.items():
        relevant = {d for d, grade in judged.items() if grade > 0}
        found = len(relevant & set(run[qid]))
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
        ceiling.append(sum(1 / math.log2(i + 2) for i in range(min(found, 10))) / ideal)
    assert oracle["NDCG@10"] == pytest.approx(sum(ceiling) / len(ceiling), abs=1e-9)
    assert oracle["Recall@100"] == pytest.approx(retrieved.metrics["Recall@100"], abs=1e-12)  # same documents
    assert oracle["NDCG@10"] > retrieved.metrics["NDCG@10"] + 0.1


def _mini_beir(folder: Path) -> Path:
    rng = random.Random(0)
    topics = ["bees dance", "tides moon", "pasta water", "sourdough yeast", "volcano magma", "jupiter moons"]
    corpus, queries, qrels = [], [], []
    for t, topic in enumerate(topics):
        queries.append({"_id": f"q{t}", "text": f"what about {topic}?"})
        for d in range(5):
            corpus.append({"_id": f"{t}-{d}", "title": topic, "text": f"{topic} " * rng.randint(3, 40)})
            if d < 2:
                qrels.append(f"q{t}\t{t}-{d}\t1")
    folder.mkdir()
    (folder / "qrels").mkdir()
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in corpus))
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels))
    return folder


def test_eval_command_writes_results_and_a_plot(tmp_path, tiny_checkpoint, capsys):
    from ettin_rerank.cli import main

    data = _mini_beir(tmp_path / "mini")
    out = tmp_path / "out"
    assert main(["eval", str(data), "--model", str(tiny_checkpoint), "--top-k", "10", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NDCG@10" in printed and "Recall@10" in printed and "MRR@10" in printed and "pairs/s" in printed
    result = json.loads((out / "eval.json").read_text())
    [model] = result["models"]
    assert result["complete"] and model["model"] == str(tiny_checkpoint) and model["untrained"]
    assert set(result["retrieval"]) == set(model["metrics"]) == {"NDCG@10", "Recall@10", "MRR@10"}
    assert result["retrieval"]["Recall@10"] == pytest.approx(model["metrics"]["Recall@10"])  # same documents
    assert set(result["seconds"]) == {"index", "retrieve"} and model["pairs_per_s"] > 0 and model["seconds"] > 0
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_data_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a BEIR-layout folder: corpus.jsonl is missing"):
        load_beir(tmp_path)


# ---------------------------------------------------------------- data as it exists in the wild, read strictly


def _canonical(folder: Path) -> dict:
    data = load_beir(folder)
    return {"corpus": data.corpus, "queries": data.queries, "qrels": data.qrels}


def test_qrels_and_rows_in_every_common_shape_read_the_same(tmp_path):
    reference = _canonical(_mini_beir(tmp_path / "mini"))
    variant = _mini_beir(tmp_path / "variant")
    lines = (variant / "qrels" / "test.tsv").read_text().splitlines()[1:]
    trec = [f"{q}\tQ0\t{d}\t{float(r):.1f}" for q, d, r in (line.split("\t") for line in lines)]
    (variant / "qrels" / "test.tsv").write_text("\n".join(trec) + "\n\n")  # no header, 4 columns, 1.0, blank end
    corpus = [json.loads(line) for line in (variant / "corpus.jsonl").read_text().splitlines()]
    rows = [{"_id": c["_id"], "text": c["text"], **({"title": c["title"]} if i % 2 else {})}
            for i, c in enumerate(corpus)]
    (variant / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = _canonical(variant)
    assert got["qrels"] == reference["qrels"] and got["queries"] == reference["queries"]
    assert {k: v["text"] for k, v in got["corpus"].items()} == {k: v["text"] for k, v in reference["corpus"].items()}
    assert [v["title"] for v in got["corpus"].values()][:2] == ["", reference["corpus"]["0-1"]["title"]]


def test_numeric_ids_are_read_as_strings(tmp_path):
    folder = _mini_beir(tmp_path / "mini")
    (folder / "corpus.jsonl").write_text('{"_id": 7, "text": "bees"}\n{"_id": "8", "text": "tides"}\n')
    (folder / "queries.jsonl").write_text('{"_id": 1, "text": "what about bees?"}\n')
    (folder / "qrels" / "test.tsv").write_text("1\t7\t1\n")
    data = load_beir(folder)
    assert list(data.corpus) == ["7", "8"] and data.queries == {"1": "what about bees?"}
    assert data.qrels == {"1": {"7": 1}}


@pytest.mark.parametrize(
    ("target", "content", "message"),
    [
        ("corpus.jsonl", '{"_id": "a", "text": "x"}\n{"text": "no id"}\n', r"corpus\.jsonl:2: '_id' must be a string"),
        ("corpus.jsonl", '{"_id": "a", "text": 5}\n', r"corpus\.jsonl:1: 'text' must be a string \(got int\)"),
        ("corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n',
         r"corpus\.jsonl:2: duplicate _id 'a' \(first on line 1\)"),
        ("corpus.jsonl", "\n", r"corpus\.jsonl holds no documents"),
        ("qrels/test.tsv", "q0\t0-0\n", r"test\.tsv:1: expected 3 columns"),
        ("qrels/test.tsv", "q0\t0-0\t1\nq1\t1-0\thigh\n", r"test\.tsv:2: relevance must be a whole number"),
        ("queries.jsonl", '{"_id": "q0", "text": "   "}\n', r"queries\.jsonl:1: query 'q0' is judged but its 'text'"),
        ("queries.jsonl", '{"_id": "q0", "text": "bees"}\n', r"judges 5 quer\(ies\) that queries\.jsonl does not"),
    ],
)
def test_bad_rows_are_named_by_file_line_and_field(tmp_path, target, content, message):
    folder = _mini_beir(tmp_path / "mini")
    (folder / target).write_text(content)
    with pytest.raises(InputError, match=message):
        load_beir(folder)


def test_duplicates_can_be_allowed_and_are_counted(tmp_path, caplog):
    folder = _mini_beir(tmp_path / "mini")
    with (folder / "corpus.jsonl").open("a") as corpus:
        corpus.write('\n{"_id": "0-0", "text": "a second copy"}\n')
    with pytest.raises(InputError, match="duplicate _id '0-0'"):
        load_beir(folder)
    data = load_beir(folder, allow_duplicates=True)
    assert data.corpus["0-0"]["text"] != "a second copy"
    assert "1 duplicate corpus id(s) skipped" in caplog.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-k", "0"], "--top-k must be > 0"),
        (["--max-queries", "0"], "--max-queries must be > 0"),
        (["--output", "FILE"], "is a file; give a folder"),
        (["--model", "./no/such/model"], "not an Ettin size"),
    ],
)
def test_eval_fails_before_embedding_anything(tmp_path, capsys, extra, message):
    from ettin_rerank.cli import main

    data = _mini_beir(tmp_path / "mini")
    (tmp_path / "FILE").write_text("")
    extra = [str(tmp_path / "FILE") if e == "FILE" else e for e in extra]
    # an embedding model that cannot load: reaching the embedding stage would be a different error
    args = ["eval", str(data), "--embedding-model", str(tmp_path / "no-embedder"), "--output", str(tmp_path / "o")]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err


def test_eval_keeps_what_was_measured_when_a_later_model_fails(tmp_path, tiny_checkpoint, capsys):
    import shutil

    from ettin_rerank.cli import main

    data = _mini_beir(tmp_path / "mini")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"corrupt")
    out = tmp_path / "out"
    code = main(["eval", str(data), "--model", str(tiny_checkpoint), "--model", str(broken), "--top-k", "10",
                 "--output", str(out)])
    assert code == 2 and "could not load the cross-encoder" in capsys.readouterr().err
    record = json.loads((out / "eval.json").read_text())
    assert record["complete"] is False and set(record["retrieval"]) == {"NDCG@10", "Recall@10", "MRR@10"}
    assert [m["model"] for m in record["models"]] == [str(tiny_checkpoint)]


def test_eval_compares_several_models_on_the_same_candidates(tmp_path, checkpoint_factory, capsys):
    from ettin_rerank.cli import main

    data = _mini_beir(tmp_path / "mini")
    first, second = checkpoint_factory("17m", layers=2, seed=1), checkpoint_factory("17m", layers=2, seed=2)
    out = tmp_path / "out"
    assert main(["eval", str(data), "--model", str(first), "--model", str(second), "--top-k", "10",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("retrieval alone"):].splitlines()
    assert table[0].startswith("retrieval alone") and str(first) in table[1] and str(second) in table[2]
    record = json.loads((out / "eval.json").read_text())
    assert [m["model"] for m in record["models"]] == [str(first), str(second)]
    assert all(m["metrics"]["Recall@10"] == pytest.approx(record["retrieval"]["Recall@10"]) for m in record["models"])
    assert all(m["pairs_per_s"] > 0 and m["peak_memory_mib"] >= 0 for m in record["models"])
    assert record["models"][0]["metrics"] != record["models"][1]["metrics"]  # different weights, different order
