"""The README's main job (``ettin-rerank demo``) and the other CLI commands, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ettin_rerank.cli import main
from ettin_rerank.evaluation.demo import demo_corpus


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


@pytest.mark.parametrize("size", ["17m"])
def test_build_untrained_command(tmp_path, tokenizer_folder, size):
    assert main(["build-untrained", str(tmp_path / "ck"), "--tokenizer", str(tokenizer_folder), "--size", size]) == 0
    assert (tmp_path / "ck" / "UNTRAINED").exists() and (tmp_path / "ck" / "modules.json").exists()
