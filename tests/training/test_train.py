"""Training runs end to end on CPU in seconds: the output loads in the engine with Sentence Transformers' scores,
keeps the original max length and the UNTRAINED marker, and comes with a before/after report."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("datasets", reason="the train extra is not installed")

from ettin_rerank import Reranker
from ettin_rerank.cli import main
from ettin_rerank.training.data import Example, TrainingData
from ettin_rerank.training.train import TrainConfig, resolve_objective, train
from sentence_transformers import CrossEncoder

TOPICS = ["bees dance", "tides moon", "pasta water", "sourdough yeast", "volcano magma", "jupiter moons",
          "coral reefs", "solar wind"]


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    rng = random.Random(0)
    rows = [{"query": f"what about {t}?", "positive": f"{t} " * rng.randint(3, 10),
             "negatives": [f"{o} facts" for o in rng.sample([x for x in TOPICS if x != t], 3)]}
            for t in TOPICS for _ in range(2)]
    path = tmp_path_factory.mktemp("groups") / "groups.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture(scope="module")
def base(checkpoint_factory):
    return checkpoint_factory("17m", layers=2, seed=5)


def test_objective_resolution():
    def data(*rows):
        return TrainingData("pairs", list(rows), [])

    config = TrainConfig(data="x")
    assert resolve_objective(config, data(Example("q", "d", 1.0), Example("q", "e", 0.0))) == "bce"
    assert resolve_objective(config, data(Example("q", "d", 2.0), Example("q", "e", 0.0))) == "lambda"
    assert resolve_objective(config, data(Example("q", "d", None, 3.5))) == "distill"
    assert resolve_objective(TrainConfig(data="x", teacher="17m"), data(Example("q", "d", 1.0))) == "distill"
    with pytest.raises(ValueError, match="'distill' needs teacher scores"):
        resolve_objective(TrainConfig(data="x", objective="distill"), data(Example("q", "d", 1.0)))


def test_a_short_run_gives_a_servable_model_and_a_report(groups, base, tmp_path):
    output = tmp_path / "trained"
    report = train(TrainConfig(data=str(groups), base=str(base), output=str(output), max_steps=3, batch_size=8,
                               max_length=64, holdout=0.25))
    assert report.objective == "bce" and report.steps == 3 and report.verdict is not None
    assert report.counts["heldout_queries"] == 2 and report.counts["train_queries"] == 6
    assert set(report.before["reranked"]) == set(report.after["reranked"]) == {"NDCG@10", "Recall@8", "MRR@10"}
    assert report.verdict.label in ("better", "same", "worse") and report.verdict.low <= report.verdict.high
    assert json.loads((output / "tokenizer_config.json").read_text())["model_max_length"] == 7999
    assert (output / "UNTRAINED").exists()  # an untrained base stays labelled
    record = json.loads((output / "ettin_training.json").read_text())
    assert record["objective"] == "bce" and record["verdict"]["label"] == report.verdict.label
    assert "sentence_transformers" in record["versions"]
    pairs = [("what about bees dance?", "bees dance bees dance"), ("what about bees dance?", "pasta water facts")]
    ours = Reranker(output, device="cpu", dtype="float32").score_pairs(pairs)
    reference = CrossEncoder(str(output), device="cpu").predict(pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    assert [step for step, _ in report.evaluations] == [1, 2, 3]
    kept = report.best_step
    assert record["kept_step"] == kept and max(v for _, v in report.evaluations) == dict(report.evaluations)[kept]


def test_the_original_is_never_overwritten(groups, base, tmp_path):
    with pytest.raises(ValueError, match="is the base model's folder"):
        train(TrainConfig(data=str(groups), base=str(base), output=str(base), max_steps=1))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty"):
        train(TrainConfig(data=str(groups), base=str(base), output=str(taken), max_steps=1))


def test_distillation_from_a_teacher_with_a_resumable_cache(groups, base, checkpoint_factory, tmp_path):
    teacher = checkpoint_factory("17m", layers=2, seed=6)
    cache = tmp_path / "teacher.jsonl"
    config = TrainConfig(data=str(groups), base=str(base), output=str(tmp_path / "student"), teacher=str(teacher),
                         teacher_cache=str(cache), max_steps=2, batch_size=8, max_length=64, holdout=0.25)
    report = train(config)
    assert report.objective == "distill"
    assert json.loads(cache.read_text().splitlines()[0]) == {"teacher": str(teacher)}
    from ettin_rerank.training.data import load_examples
    from ettin_rerank.training.teacher import teacher_scores

    _, rows = load_examples(groups)
    full = tmp_path / "all.jsonl"
    teacher_scores(rows, str(teacher), full, device="cpu", dtype="float32")
    lines = full.read_text().splitlines()
    assert len(lines) == 1 + len({(r.query, r.document) for r in rows})
    full.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # a run stopped half way
    scored = teacher_scores(rows, str(teacher), full, device="cpu", dtype="float32")
    assert len(full.read_text().splitlines()) == len(lines)  # only the missing half was scored again
    reference = Reranker(teacher, device="cpu", dtype="float32").score_pairs([(r.query, r.document) for r in rows])
    np.testing.assert_allclose([r.score for r in scored], reference, atol=1e-4)
    with pytest.raises(ValueError, match="holds scores of teacher"):
        teacher_scores(rows, "another-teacher", full)


def test_cli_dry_run_and_train(groups, base, tmp_path, capsys):
    assert main(["train", str(groups), "--base", str(base), "--output", str(tmp_path / "o"), "--dry-run",
                 "--batch-size", "8", "--max-length", "64"]) == 0
    printed = capsys.readouterr().out
    assert "objective: bce" in printed and "s/step measured on this machine" in printed
    assert main(["train", str(groups), "--base", str(base), "--output", str(tmp_path / "o"), "--max-steps", "2",
                 "--batch-size", "8", "--max-length", "64", "--holdout", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "retrieval alone" in printed and "before" in printed and "after" in printed
    assert "the base model is untouched" in printed and ("BETTER" in printed or "SAME" in printed
                                                          or "WORSE" in printed)


def test_beir_data_is_mined_on_training_queries_only(base, tmp_path):
    from ettin_rerank.evaluation.retrieval import QdrantRetriever
    from ettin_rerank.training.mining import prepare_beir

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"{t}-{d}", "title": f"topic {t}", "text": f"word{t} " * (3 + d)}
              for t in range(12) for d in range(6)]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in corpus))
    (folder / "queries.jsonl").write_text("\n".join(json.dumps({"_id": f"q{t}", "text": f"about {t}"})
                                                   for t in range(12)))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(
        f"q{t}\t{t}-0\t1" for t in range(12)))
    data = prepare_beir(folder, QdrantRetriever(), candidates=8, negatives=3, random_negatives=1, holdout=0.25)
    held = {e.query for e in data.heldout}
    assert len(held) == 3 and held.isdisjoint({e.query for e in data.train})
    assert all(len([e for e in data.heldout if e.query == q]) == 8 for q in held)
    assert sum(e.label for e in data.train) >= 9 and any(e.label == 0 for e in data.train)
    assert data.notes["heldout_qrels"] and set(data.notes["heldout_retrieval"]) == held
    shutil.rmtree(folder)


@pytest.mark.manual
def test_distillation_raises_rank_agreement_with_the_teacher(checkpoint_factory, tmp_path, make_text):
    """Slow (minutes): set ETTIN_RUN_MANUAL=1. A student distilled from a teacher agrees with it more on held-out
    queries than the untrained student does."""
    from scipy.stats import spearmanr

    teacher = checkpoint_factory("17m", layers=4, seed=8)
    student = checkpoint_factory("17m", layers=2, seed=9)
    rng = random.Random(3)
    queries = [f"query {i} {make_text(4)}" for i in range(60)]
    rows = [{"query": query, "document": make_text(rng.randint(10, 60)), "label": 0}
            for query in queries for _ in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    report = train(TrainConfig(data=str(data), base=str(student), output=str(tmp_path / "s"), teacher=str(teacher),
                               teacher_cache=str(tmp_path / "t.jsonl"), epochs=3, batch_size=16, max_length=96,
                               learning_rate=3e-4, holdout=0.2))
    from ettin_rerank.training.data import load_examples, split_heldout

    _, heldout = split_heldout(load_examples(data)[1], 0.2, 12)  # the queries training never saw
    pairs = [(r.query, r.document) for r in heldout]
    target = Reranker(teacher, device="cpu", dtype="float32").score_pairs(pairs)
    before = spearmanr(target, Reranker(student, device="cpu", dtype="float32").score_pairs(pairs)).statistic
    after = spearmanr(target, Reranker(tmp_path / "s", device="cpu", dtype="float32").score_pairs(pairs)).statistic
    print(f"student-teacher Spearman on {len(pairs)} held-out pairs: {before:.3f} -> {after:.3f} "
          f"({report.steps} steps, {report.seconds_per_step:.2f} s/step); held-out verdict against the teacher's "
          f"ranking: {report.verdict}")
    assert report.relevance == "teacher"
    assert after > before + 0.1
