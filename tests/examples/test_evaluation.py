"""The evaluation harness, proven on both ends: it reproduces the published retrieval figure on SciFact, and an
oracle reranker reaches exactly the best NDCG@10 that the retrieved set allows."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from ettin_rerank.evaluation import evaluate, load_beir, metrics, oracle_run
from ettin_rerank.retrieval import QdrantRetriever

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "scifact"
needs_scifact = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(),
                                   reason=f"SciFact assets not found at {SCIFACT}")


@pytest.fixture(scope="module")
def scifact_retrieval():
    data = load_beir(SCIFACT, "test")
    result, run, _ = evaluate(data, QdrantRetriever(), None, top_k=100)
    return data, result, run


@needs_scifact
@pytest.mark.slow
def test_dense_retrieval_reproduces_the_published_ndcg(scifact_retrieval):
    data, result, _ = scifact_retrieval
    assert len(data.queries) == 300 and len(data.corpus) == 5183
    assert result.retrieval["NDCG@10"] == pytest.approx(0.6451, abs=0.005)


@needs_scifact
@pytest.mark.slow
def test_oracle_reranker_reaches_the_ceiling_set_by_recall(scifact_retrieval):
    data, result, run = scifact_retrieval
    oracle = metrics(data.qrels, oracle_run(data.qrels, run), 100)
    ceiling = []
    for qid, judged in data.qrels.items():
        relevant = {d for d, grade in judged.items() if grade > 0}
        found = len(relevant & set(run[qid]))
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
        ceiling.append(sum(1 / math.log2(i + 2) for i in range(min(found, 10))) / ideal)
    assert oracle["NDCG@10"] == pytest.approx(sum(ceiling) / len(ceiling), abs=1e-9)
    assert oracle["Recall@100"] == pytest.approx(result.retrieval["Recall@100"], abs=1e-12)  # same documents
    assert oracle["NDCG@10"] > result.retrieval["NDCG@10"] + 0.1


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
    assert set(result["retrieval"]) == set(result["reranked"]) == {"NDCG@10", "Recall@10", "MRR@10"}
    assert result["retrieval"]["Recall@10"] == pytest.approx(result["reranked"]["Recall@10"])  # same documents
    assert set(result["seconds"]) == {"index", "retrieve", "rerank"} and result["pairs_per_s"] > 0
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_data_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a BEIR-layout folder: corpus.jsonl is missing"):
        load_beir(tmp_path)
