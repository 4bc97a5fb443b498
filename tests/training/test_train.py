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
    with pytest.raises(ValueError, match="is the base model"):
        train(TrainConfig(data=str(groups), base=str(base), output=str(base), max_steps=1))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty"):
        train(TrainConfig(data=str(groups), base=str(base), output=str(taken), max_steps=1))


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_output_around_or_inside_the_base_or_the_data_is_refused_before_any_work(groups, base, tmp_path):
    """`--output` that is the base or the data, holds them, or lies inside them: refused, with --overwrite too,
    and nothing is touched (before: `--output WORK --overwrite` deleted WORK with the base and the data in it)."""
    work = tmp_path / "work"
    shutil.copytree(base, work / "base")
    shutil.copy(groups, work / "data.jsonl")
    before = _snapshot(tmp_path)
    for output, message in ((work, "contains the base model"), (tmp_path, "contains the base model"),
                            (work / "base", "is the base model"), (work / "base" / "tuned", "lies inside the base"),
                            (work / "data.jsonl", "is the training data")):
        with pytest.raises(ValueError, match=message):
            train(TrainConfig(data=str(work / "data.jsonl"), base=str(work / "base"), output=str(output),
                              overwrite=True, max_steps=1))
    assert _snapshot(tmp_path) == before


def test_a_nan_label_is_named_by_file_line_and_field_before_training(base, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"query": "q1", "document": "a", "label": 1}\n{"query": "q2", "document": "b", "label": NaN}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: 'label' must be a finite number, got nan"):
        train(TrainConfig(data=str(data), base=str(base), output=str(tmp_path / "out"), max_steps=1))
    assert not (tmp_path / "out").exists()


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


def test_cli_dry_run_and_train_and_overwrite_only_a_complete_model_of_its_own(groups, base, tmp_path, capsys,
                                                                              monkeypatch):
    output = tmp_path / "o"
    flags = ["--base", str(base), "--output", str(output), "--batch-size", "8", "--max-length", "64"]
    assert main(["train", str(groups), *flags, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "objective: bce" in printed and "s/step measured on this machine" in printed
    assert not output.exists()
    flags += ["--max-steps", "2", "--holdout", "0.25"]
    assert main(["train", str(groups), *flags]) == 0
    printed = capsys.readouterr().out
    assert "retrieval alone" in printed and "before" in printed and "after" in printed
    assert "the base model is untouched" in printed and ("BETTER" in printed or "SAME" in printed
                                                          or "WORSE" in printed)
    first = _snapshot(output)
    assert main(["train", str(groups), *flags]) == 2
    assert "exists and is not empty (pass --overwrite" in capsys.readouterr().err
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "model.safetensors").write_bytes(b"someone else's model")
    assert main(["train", str(groups), *flags[:2], "--output", str(theirs), *flags[4:], "--overwrite"]) == 2
    assert "was not written by ettin-rerank train (no ettin_training.json" in capsys.readouterr().err
    assert _snapshot(theirs) == {"model.safetensors": b"someone else's model"}
    real_save = CrossEncoder.save_pretrained

    def save_then_fail(self, path, *args, **kwargs):  # the disk fills up while the new model is being written
        real_save(self, path, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CrossEncoder, "save_pretrained", save_then_fail)
    assert main(["train", str(groups), *flags, "--overwrite"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _snapshot(output) == first, "a failed run must leave the previous model whole"
    monkeypatch.undo()
    assert main(["train", str(groups), *flags, "--overwrite", "--seed", "3"]) == 0
    assert json.loads((output / "ettin_training.json").read_text())["config"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "theirs"]  # nothing half-written beside


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
