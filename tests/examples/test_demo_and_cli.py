"""The README's main job (``ettin-rerank demo``) and the other CLI commands, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from ettin_rerank.cli import main
from ettin_rerank.evaluation.demo import demo_corpus

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _cli(*args, env_extra=None, stdin=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "ettin_rerank.cli", *args], capture_output=True, text=True, env=env, input=stdin,
        timeout=300, check=False,
    )


def test_demo_corpus_has_a_few_dozen_documents_and_some_long_ones():
    corpus = demo_corpus()
    assert 25 <= len(corpus) <= 60
    assert len({d["_id"] for d in corpus}) == len(corpus)
    assert sum(len(d["text"].split()) > 500 for d in corpus) >= 3


def test_demo_falls_back_to_an_untrained_model_and_says_so(untrained_cache):
    result = _cli("demo", "--top-k", "8", "--show", "3", env_extra={"ETTIN_RERANK_CACHE": str(untrained_cache)})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Falling back to an untrained 17m-shaped checkpoint" in out
    assert "UNTRAINED model" in out
    assert out.count("Query: ") == 3 and "rerank 8 documents" in out
    assert "new  was" in out and "retrieve top-8" in out
    assert "Traceback" not in result.stderr


def test_demo_with_a_model_folder_and_a_query(tiny_checkpoint, untrained_cache, tmp_path):
    result = _cli("demo", "--model", str(tiny_checkpoint), "--query", "how do bees talk", "--qdrant-path",
                  str(tmp_path / "qdrant"), env_extra={"ETTIN_RERANK_CACHE": str(untrained_cache)})
    assert result.returncode == 0, result.stderr
    assert "Falling back" not in result.stdout and "Query: how do bees talk" in result.stdout
    assert "UNTRAINED" in result.stdout  # the test checkpoint is an untrained one, and is labelled as such
    assert "embedded, " in result.stdout and str(tmp_path / "qdrant") in result.stdout


def test_the_readme_demo_example_runs_offline_and_times_warm_passes(untrained_cache, monkeypatch, capsys):
    """``make demo ARGS=...`` as the README writes it runs offline (a named model would not: see below), prints no
    loading bar, and every timed rerank comes after one untimed warm-up pass."""
    from ettin_rerank.engine.reranker import Reranker

    [example] = re.findall(r'make demo ARGS="([^"]+)"', README)
    monkeypatch.setenv("ETTIN_RERANK_CACHE", str(untrained_cache))
    queries_printed_at_each_call = []
    rerank = Reranker.rerank

    def counting(self, *args, **kwargs):
        queries_printed_at_each_call.append(sys.stdout.getvalue().count("Query: "))
        return rerank(self, *args, **kwargs)

    monkeypatch.setattr(Reranker, "rerank", counting)
    assert main(["demo", *shlex.split(example)]) == 0
    captured = capsys.readouterr()
    assert "Falling back to an untrained 17m-shaped checkpoint" in captured.out and "UNTRAINED model" in captured.out
    assert captured.out.count("Query: ") == len(re.findall("--query", example)) == 1
    assert queries_printed_at_each_call == [0, 0], "the first timed query paid the model's cold first pass"
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err


def test_a_named_ettin_size_that_is_not_here_says_what_to_do(untrained_cache, monkeypatch, capsys):
    monkeypatch.setenv("ETTIN_RERANK_CACHE", str(untrained_cache))
    assert main(["demo", "--model", "150m"]) == 2
    err = capsys.readouterr().err
    assert "model '150m' was not found" in err and "drop --model to use the default 17m" in err
    assert "`ettin-rerank build-untrained untrained-150m --size 150m` and pass --model untrained-150m" in err
    promise = README.split("A model you name is never\nreplaced")[1][:300]
    assert "is an error that says what\nto do" in promise and "falls back" not in promise


def test_a_named_model_that_is_missing_is_an_error_not_a_fallback(untrained_cache, tmp_path):
    result = _cli("demo", "--model", str(tmp_path / "no-such-model"),
                  env_extra={"ETTIN_RERANK_CACHE": str(untrained_cache)})
    assert result.returncode == 2
    assert "not an Ettin size" in result.stderr and "Falling back" not in result.stdout
    assert "Traceback" not in result.stderr


def test_rerank_command_reads_jsonl_and_text(tiny_checkpoint, tmp_path, reranker):
    docs = ["bees dance to show food", "pasta needs salted water", "the tide follows the moon"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    result = _cli("rerank", "where is the food", str(jsonl), "--model", str(tiny_checkpoint), "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = reranker.rerank("where is the food", docs)
    assert [r["index"] for r in rows] == [e.index for e in expected]
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["text"] == docs[rows[0]["index"]]
    piped = _cli("rerank", "where is the food", "-", "--model", str(tiny_checkpoint), "--dtype", "float32",
                 "--top-k", "2", stdin="\n".join(docs))
    assert [json.loads(line)["index"] for line in piped.stdout.splitlines()] == [e.index for e in expected[:2]]


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["rerank", "query", str(tmp_path / "missing.txt"), "--model", "17m"]) == 2
    assert "error:" in capsys.readouterr().err
    empty_query = _cli("rerank", "", "-", "--model", "no-such-model", stdin="a doc")
    assert empty_query.returncode == 2  # the input is checked before any model is looked for
    assert "query must not be empty" in empty_query.stderr and "Traceback" not in empty_query.stderr
    missing_model = _cli("rerank", "a query", "-", "--model", "no-such-model", stdin="a doc")
    assert missing_model.returncode == 2
    assert "not an Ettin size" in missing_model.stderr and "Traceback" not in missing_model.stderr


def test_models_command_lists_the_six_sizes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for size in ("17m", "32m", "68m", "150m", "400m", "1b"):
        assert f"cross-encoder/ettin-reranker-{size}-v1" in out


def test_build_untrained_command_needs_no_tokenizer_argument_and_draws_no_bar(tmp_path, tokenizer_folder, capsys):
    assert main(["build-untrained", str(tmp_path / "ck"), "--size", "17m"]) == 0  # the offline package's tokenizer
    assert (tmp_path / "ck" / "UNTRAINED").exists() and (tmp_path / "ck" / "modules.json").exists()
    vocab = [json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
             for folder in (tmp_path / "ck", tokenizer_folder)]
    assert vocab[0] == vocab[1]
    assert "Writing model shards" not in capsys.readouterr().err


def test_loading_a_model_draws_no_bar_unless_verbose(tiny_checkpoint, tmp_path, capsys):
    documents = tmp_path / "docs.txt"
    documents.write_text("bees dance to show food\npasta needs salted water\n")
    assert main(["rerank", "where is the food", str(documents), "--model", str(tiny_checkpoint)]) == 0
    quiet = capsys.readouterr()
    assert len(quiet.out.splitlines()) == 2 and quiet.err == ""
    assert main(["-v", "rerank", "where is the food", str(documents), "--model", str(tiny_checkpoint)]) == 0
    assert "Loading weights" in capsys.readouterr().err  # transformers' own bar, on request


def test_build_untrained_takes_the_default_tokenizers_hub_id_when_given(tmp_path, monkeypatch):
    """Only a missing --tokenizer needs the offline package; naming the hub id itself is a choice, not a mistake."""
    import ettin_rerank.checkpoints

    seen = {}

    def build(folder, *, tokenizer, shape):
        seen["tokenizer"] = tokenizer
        return folder

    monkeypatch.setattr(ettin_rerank.checkpoints, "build_untrained_checkpoint", build)
    hub_id = ettin_rerank.checkpoints.DEFAULT_EMBEDDING_MODEL
    assert main(["build-untrained", str(tmp_path / "ck"), "--tokenizer", hub_id]) == 0
    assert seen == {"tokenizer": hub_id}
