"""The evaluation harness, proven on both ends: it reproduces the published retrieval figure on SciFact, and an
oracle reranker reaches exactly the best NDCG@10 that the retrieved set allows."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from ettin_rerank.evaluation.beir import load_beir
from ettin_rerank.evaluation.compare import retrieve
from ettin_rerank.evaluation.demo import demo_corpus
from ettin_rerank.evaluation.metrics import metrics, oracle_run
from ettin_rerank.evaluation.retrieval import QdrantRetriever
from ettin_rerank.inputs import InputError

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "scifact"
needs_scifact = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(),
                                   reason=f"SciFact assets not found at {SCIFACT}")


DISTRACTORS = 700
"""Unjudged abstracts kept beside the judged ones in the CI-sized SciFact (embedding all 5,183 takes CI minutes)."""


def _scifact_retrieval(corpus_size: int | None):
    data = load_beir(SCIFACT, "test")
    if corpus_size is not None:
        judged = {doc for docs in data.qrels.values() for doc in docs}
        others = sorted(set(data.corpus) - judged)
        kept = judged | set(random.Random(0).sample(others, corpus_size))
        data = replace(data, corpus={k: v for k, v in data.corpus.items() if k in kept})
    retrieved = retrieve(data, QdrantRetriever(), top_k=100)
    return data, retrieved, retrieved.run


@pytest.fixture(scope="module")
def scifact_subset():
    return _scifact_retrieval(DISTRACTORS)


@needs_scifact
@pytest.mark.manual
def test_dense_retrieval_reproduces_the_published_ndcg():
    data, retrieved, _ = _scifact_retrieval(None)
    assert len(data.queries) == 300 and len(data.corpus) == 5183
    assert retrieved.metrics["NDCG@10"] == pytest.approx(0.6451, abs=0.005)


@needs_scifact
@pytest.mark.slow
def test_dense_retrieval_on_fewer_distractors_is_at_least_the_published_figure(scifact_subset):
    """Leaving unjudged abstracts out can only move relevant ones up, so NDCG@10 cannot fall below the full corpus's
    published 0.6451; swapped or misread qrels, or a wrong metric, fall far below it."""
    data, retrieved, _ = scifact_subset
    judged = {doc for docs in data.qrels.values() for doc in docs}
    assert len(data.queries) == 300 and len(data.corpus) == len(judged) + DISTRACTORS
    assert 0.6451 - 0.005 <= retrieved.metrics["NDCG@10"] < 1
    assert retrieved.metrics["Recall@100"] > 0.9


@needs_scifact
@pytest.mark.slow
def test_oracle_reranker_reaches_the_ceiling_set_by_recall(scifact_subset):
    data, retrieved, run = scifact_subset
    oracle = metrics(data.qrels, oracle_run(data.qrels, run), 100)
    ceiling = []
    for qid, judged in data.qrels.items():
        relevant = {d for d, grade in judged.items() if grade > 0}
        found = len(relevant & set(run[qid]))
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
        ceiling.append(sum(1 / math.log2(i + 2) for i in range(min(found, 10))) / ideal)
    assert oracle["NDCG@10"] == pytest.approx(sum(ceiling) / len(ceiling), abs=1e-9)
    assert oracle["Recall@100"] == pytest.approx(retrieved.metrics["Recall@100"], abs=1e-12)  # same documents
    assert oracle["NDCG@10"] > retrieved.metrics["NDCG@10"] + 0.05


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


ROOT = Path(__file__).resolve().parents[2]
BEIR_DEMO = ROOT / "examples" / "beir-demo"


def _leaderboard_folder(folder: Path, source: Path = BEIR_DEMO, unpublished: int = 3) -> Path:
    """``source`` as a public leaderboard ships it: qrels judging more queries than ``queries.jsonl`` publishes."""
    shutil.copytree(source, folder)
    with (folder / "qrels" / "test.tsv").open("a") as qrels:
        qrels.writelines(f"hidden-{i}\tbees\t1\n" for i in range(unpublished))
    return folder


def test_the_readme_eval_example_runs_on_a_leaderboard_like_folder(tmp_path, tiny_checkpoint, capsys):
    """The README's example folder ships with the clone; as a leaderboard folder (qrels judging queries that
    queries.jsonl lacks) it is evaluated on the queries with text, says how many it left out, draws both charts
    with short names and paired intervals, and prints no transformers loading bar."""
    from ettin_rerank.cli import main

    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"ettin-rerank eval (\S+)", readme)
    assert "examples/beir-demo" in examples, "the README's eval example must use a folder a clone has"
    assert not [path for path in examples if path.startswith(("../", "/"))], "a path outside the clone"
    assert load_beir(BEIR_DEMO).corpus == {d["_id"]: {"title": d["title"], "text": d["text"]} for d in demo_corpus()}

    data = _leaderboard_folder(tmp_path / "leaderboard")
    out = tmp_path / "out"
    assert main(["eval", str(data), "--model", str(tiny_checkpoint), "--top-k", "10", "--fusion", "--output",
                 str(out)]) == 0
    captured = capsys.readouterr()
    assert "judges 3 quer(ies) that queries.jsonl does not hold" in captured.err and "--strict" in captured.err
    assert "Loading weights" not in captured.err and "Reranking (" in captured.err  # our bar, with a total
    printed = captured.out
    assert "10 queries" in printed and "3 judged quer(ies) without text left out" in printed
    assert "NDCG@10" in printed and "Recall@10" in printed and "MRR@10" in printed and "pairs/s" in printed
    assert "NDCG@10 vs retrieval (95% CI)" in printed and str(tiny_checkpoint) not in printed
    result = json.loads((out / "eval.json").read_text())
    assert result["settings"]["queries"] == 10 and result["settings"]["judged_without_text"] == 3
    [model] = result["models"]
    assert result["complete"] and model["model"] == str(tiny_checkpoint) and model["untrained"]
    assert model["label"] == f"{tiny_checkpoint.name} (UNTRAINED)"
    assert set(result["retrieval"]) == set(model["metrics"]) == set(model["vs_retrieval"]) == {
        "NDCG@10", "Recall@10", "MRR@10"}
    assert result["retrieval"]["Recall@10"] == pytest.approx(model["metrics"]["Recall@10"])  # same documents
    for name, compared in model["vs_retrieval"].items():
        assert compared["low"] <= compared["delta"] <= compared["high"]
        assert compared["delta"] == pytest.approx(model["metrics"][name] - result["retrieval"][name], abs=1e-9)
    assert model["vs_retrieval"]["Recall@10"] == {"delta": 0.0, "low": 0.0, "high": 0.0, "verdict": "same"}
    assert model["fusion"]["dev_split"] == "dev" and model["fusion"]["dev_queries"] == 6
    assert set(result["seconds"]) == {"index", "retrieve"} and model["pairs_per_s"] > 0 and model["seconds"] > 0
    for chart in ("eval.png", "accuracy-vs-speed.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["accuracy-vs-speed.png", "eval.json", "eval.png"]


def _result(label: str, values: dict[str, float], pairs_per_s: float, low: float, high: float,
            retrieval: dict[str, float]):
    from ettin_rerank.evaluation.compare import ModelResult

    versus = {name: {"delta": values[name] - retrieval[name], "low": low, "high": high, "verdict": "better"}
              for name in values}
    return ModelResult(model=f"/somewhere/deep/{label}", label=label, metrics=values, seconds=1.0,
                       pairs_per_s=pairs_per_s, peak_memory_mib=10.0, vs_retrieval=versus)


def test_charts_print_values_name_models_shortly_and_draw_the_paired_interval():
    from ettin_rerank.evaluation.compare import bar_chart, short_labels, speed_chart

    assert short_labels(["17m", "cross-encoder/ettin-reranker-150m-v1", str(BEIR_DEMO)]) == [
        "17m", "ettin-reranker-150m-v1", "beir-demo"]
    retrieval = {"NDCG@10": 0.60, "Recall@100": 0.90, "MRR@10": 0.55}
    small = _result("17m", {"NDCG@10": 0.70, "Recall@100": 0.90, "MRR@10": 0.65}, 240.0, 0.06, 0.14, retrieval)
    large = _result("150m", {"NDCG@10": 0.75, "Recall@100": 0.90, "MRR@10": 0.70}, 12.0, 0.10, 0.20, retrieval)

    [bars] = bar_chart(retrieval, [small, large], "t").axes
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["retrieval alone", "+ 17m", "+ 150m"]
    values = sorted(t.get_text() for t in bars.texts)
    assert values == sorted(f"{v:.3f}" for r in (retrieval, small.metrics, large.metrics) for v in r.values())
    intervals = [c.errorbar for c in bars.containers if getattr(c, "errorbar", None) is not None]
    assert len(intervals) == 2  # one per reranker, none for retrieval
    [segments] = [c.get_segments() for c in intervals[0].lines[2]]
    ndcg_low, ndcg_high = segments[0][:, 1]  # the NDCG@10 bar of 17m: retrieval + the interval of the delta
    assert (ndcg_low, ndcg_high) == pytest.approx((0.60 + 0.06, 0.60 + 0.14))

    [speed] = speed_chart(retrieval, [small, large], "t").axes
    assert speed.get_xscale() == "log"  # 12 to 240 pairs/s
    labels = [t.get_text() for t in speed.texts]
    assert labels == ["17m\n0.700", "150m\n0.750"]
    baseline = [line for line in speed.get_lines() if list(line.get_ydata()) == [0.60, 0.60]]
    assert baseline, "retrieval alone is drawn as the baseline"
    points = [(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in speed.containers]
    assert points == [(240.0, 0.70), (12.0, 0.75)]


def test_every_model_sharing_a_short_label_gets_its_parent(tmp_path, monkeypatch):
    from ettin_rerank.evaluation.compare import short_labels

    for parent in ("a", "b"):
        (tmp_path / "rv" / parent / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert short_labels(["rv/a/model", "rv/b/model"]) == ["a/model", "b/model"]
    assert short_labels(["org1/m", "org2/m", "17m"]) == ["org1/m", "org2/m", "17m"]


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
        ("queries.jsonl", '{"_id": "x", "text": "bees"}\n', r"judges 6 quer\(ies\), none of which queries\.jsonl"),
    ],
)
def test_bad_rows_are_named_by_file_line_and_field(tmp_path, target, content, message):
    folder = _mini_beir(tmp_path / "mini")
    (folder / target).write_text(content)
    with pytest.raises(InputError, match=message):
        load_beir(folder)


def test_judged_queries_without_text_are_left_out_and_counted_or_refused(tmp_path, caplog):
    folder = _mini_beir(tmp_path / "mini")
    with (folder / "qrels" / "test.tsv").open("a") as qrels:
        qrels.write("\nunpublished-1\t0-0\t1\nunpublished-2\t1-0\t1\n")
    data = load_beir(folder)
    assert list(data.queries) == list(data.qrels) == [f"q{t}" for t in range(6)]
    assert data.judged_without_text == 2
    assert "judges 2 quer(ies) that queries.jsonl does not hold (unpublished-1, unpublished-2)" in caplog.text
    assert list(load_beir(folder, max_queries=4).queries) == ["q0", "q1", "q2", "q3"]
    with pytest.raises(InputError, match=r"test\.tsv judges 2 quer\(ies\) that queries\.jsonl does not hold "
                       r"\(unpublished-1, unpublished-2\); without --strict they are left out and the other 6"):
        load_beir(folder, strict=True)


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
        (["--output", "FILE/sub"], "cannot be created: FILE is a file"),
        (["--model", "./no/such/model"], "not an Ettin size"),
        (["--model", "CHECKPOINT", "--strict"], "judges 1 quer(ies) that queries.jsonl does not hold (hidden-0); "
         "without --strict they are left out and the other 6 evaluated"),
        (["--model", "CHECKPOINT", "--fusion"], "--fusion tunes alpha on labelled dev queries: MINI has no "
         "qrels/dev.tsv or qrels/train.tsv; it holds only the evaluated split (test): add labelled dev queries as "
         "qrels/dev.tsv, or drop --fusion"),
        (["--model", "CHECKPOINT", "--fusion", "--fusion-split", "dev"], "--fusion-split dev: MINI has no "
         "qrels/dev.tsv"),
    ],
    ids=["top-k", "max-queries", "output-file", "output-under-a-file", "model", "strict", "fusion-no-dev",
         "fusion-split-missing"],
)
def test_eval_fails_before_embedding_anything_and_leaves_no_folder(tmp_path, capsys, tiny_checkpoint, extra,
                                                                   message):
    from ettin_rerank.cli import main

    data = _mini_beir(tmp_path / "mini")
    with (data / "qrels" / "test.tsv").open("a") as qrels:
        qrels.write("\nhidden-0\t0-0\t1\n")  # a leaderboard folder: judged, but not published
    (tmp_path / "FILE").write_text("")
    names = {"FILE": str(tmp_path / "FILE"), "CHECKPOINT": str(tiny_checkpoint), "MINI": str(data)}
    extra = [names.get(e, e).replace("FILE/", f"{tmp_path / 'FILE'}/") for e in extra]
    # an embedding model that cannot load: reaching the embedding stage would be a different error
    args = ["eval", str(data), "--embedding-model", str(tmp_path / "no-embedder"), "--output", str(tmp_path / "o")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    for name, value in names.items():
        message = message.replace(name, value)
    assert message in err
    assert not (tmp_path / "o").exists(), "a failed eval left an output folder behind"


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
    assert table[0].startswith("retrieval alone") and f"+ {first.name} " in table[1] and f"+ {second.name} " in table[2]
    assert str(first) not in printed  # short names, not absolute paths
    record = json.loads((out / "eval.json").read_text())
    assert [m["model"] for m in record["models"]] == [str(first), str(second)]
    assert all(m["metrics"]["Recall@10"] == pytest.approx(record["retrieval"]["Recall@10"]) for m in record["models"])
    assert all(m["pairs_per_s"] > 0 and m["peak_memory_mib"] >= 0 for m in record["models"])
    assert record["models"][0]["metrics"] != record["models"][1]["metrics"]  # different weights, different order
