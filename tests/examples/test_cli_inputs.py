"""The command line reads the files users have without splitting, merging or misreading documents, and answers
every bad input with one line naming the file (and line), never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ettin_rerank.cli import main
from ettin_rerank.inputs import InputError, read_documents

ODD_SEPARATORS = ["form\x0cfeed", "line\u2028separator", "para\u2029graph", "file\x1cseparator", "next\x85line"]


def _cli(*args, stdin=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ettin_rerank.cli", *args], capture_output=True, text=True,
                          env=env, input=stdin, timeout=300, check=False)


def test_lines_split_on_newlines_only(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\r\n".join(ODD_SEPARATORS) + "\n\n", encoding="utf-8")
    assert read_documents(path) == ODD_SEPARATORS


def test_jsonl_records_keep_raw_line_separators(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in ODD_SEPARATORS) + "\n",
                    encoding="utf-8")
    assert read_documents(path) == ODD_SEPARATORS


def test_a_byte_order_mark_does_not_turn_jsonl_into_text(tmp_path):
    path = tmp_path / "docs"
    path.write_bytes("\ufeff".encode() + b'{"text": "first", "title": "T"}\n{"text": "second"}\n')
    assert read_documents(path) == ["T\nfirst", "second"]


def test_one_plain_line_in_jsonl_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n\nnot json at all\n{"text": "b"}\n')
    with pytest.raises(InputError, match=rf"{path}:3: not a JSON object"):
        read_documents(path)
    with pytest.raises(InputError, match=r"x.jsonl:1: needs a string field .text."):
        read_documents(_write(tmp_path / "x.jsonl", '{"body": "a"}\n'))
    assert read_documents(path, "lines") == ['{"text": "a"}', "not json at all", '{"text": "b"}']


def test_format_detection(tmp_path):
    looks_like_json = '{"text": "looks like json"}'
    assert read_documents(_write(tmp_path / "a.txt", looks_like_json + "\n")) == [looks_like_json]
    assert read_documents(_write(tmp_path / "b", '{"text": "json"}\n')) == ["json"]
    assert read_documents(_write(tmp_path / "c", "plain\n")) == ["plain"]


def test_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok line\ncaf\xe9 cr\xe8me\n".encode("latin-1"))
    with pytest.raises(InputError, match=rf"{path}:2: not UTF-8 text \(byte offset 11"):
        read_documents(path)


def test_a_lone_surrogate_in_jsonl_is_named(tmp_path):
    path = _write(tmp_path / "s.jsonl", '{"text": "fine"}\n{"text": "broken \\ud800 escape"}\n')
    with pytest.raises(InputError, match=rf"{path}:2: the document is not valid Unicode"):
        read_documents(path)


def test_cli_errors_are_one_line_without_traceback(tmp_path, tiny_checkpoint):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    cases = [
        (("rerank", "q", str(folder)), "is a folder; give a file"),
        (("rerank", "q", str(_write(tmp_path / "bad.jsonl", "{oops\n"))), "bad.jsonl:1: not a JSON object"),
        (("rerank", "q", "-", "--max-length", "64", "--window-overlap", "40"),
         "window_overlap must be smaller than half of max_length (32)"),
        (("rerank", "q", "-", "--top-k", "0"), "--top-k must be > 0"),
    ]
    for args, message in cases:
        result = _cli(*args, "--model", str(tiny_checkpoint), stdin="a document\n")
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_surrogate_in_the_query_is_named(tiny_checkpoint, tmp_path, capsys):
    docs = _write(tmp_path / "d.txt", "one\n")
    assert main(["rerank", "bad \udcff", str(docs), "--model", str(tiny_checkpoint)]) == 2
    assert "the query is not valid Unicode" in capsys.readouterr().err


def test_window_overlap_option_reaches_the_engine(tiny_checkpoint, tmp_path, capsys):
    text = " ".join(["protein study results"] * 100)
    docs = _write(tmp_path / "long.txt", text + "\n")
    rows = {}
    for overlap in ("0", "24"):
        assert main(["rerank", "protein", str(docs), "--model", str(tiny_checkpoint), "--max-length", "64",
                     "--window-overlap", overlap, "--dtype", "float32"]) == 0
        rows[overlap] = json.loads(capsys.readouterr().out)
    assert rows["24"]["num_windows"] > rows["0"]["num_windows"] > 1


def test_output_into_a_closed_pipe_stops_quietly(tiny_checkpoint, tmp_path):
    # 400 lines of output (~170 KB) are well past a pipe's 64 KiB buffer, so writes meet the closed pipe
    docs = _write(tmp_path / "many.txt", "\n".join(f"document {i} " + "text " * 60 for i in range(400)) + "\n")
    command = (f"{sys.executable} -m ettin_rerank.cli rerank 'which document' {docs} --model {tiny_checkpoint} "
               "--max-length 128 | head -n 1")
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert json.loads(result.stdout)["rank"] == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path
