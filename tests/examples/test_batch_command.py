"""`ettin-rerank batch` in this process (no cluster): every input row once, ids untouched, scores as the engine's,
ranks within each query; every input problem found before any scoring, named by file, row and column; nothing
half-done at the output's name, whatever stops a run (real SIGINT, SIGTERM and SIGKILL to a real process), and the
same command resumes to the rows an uninterrupted run gives; the input and outputs it did not write are never
replaced."""

from __future__ import annotations

import json
import logging
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ettin_rerank.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _model(checkpoint):
    return ["--model", str(checkpoint), "--dtype", "float32", "--device", "cpu"]


@pytest.fixture(scope="module")
def fast_checkpoint(checkpoint_factory):
    return checkpoint_factory("17m", layers=2, seed=5)


@pytest.fixture
def pairs_jsonl(tmp_path, make_text):
    rows = [{"qid": f"q{i // 5}", "doc_id": i, "query": f"query {i // 5} {make_text(3)}", "document": make_text(20 + i),
             "label": i % 2} for i in range(30)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, rows


def _check_ranks(table, group):
    for key in set(table[group]):
        members = [i for i, g in enumerate(table[group]) if g == key]
        expected = sorted(members, key=lambda i: (-table["score"][i], i))
        assert [table["rank"][i] for i in expected] == list(range(1, len(members) + 1))


def test_jsonl_in_parquet_out_with_ranks(pairs_jsonl, tmp_path, tiny_checkpoint, reranker, capsys):
    path, rows = pairs_jsonl
    out = tmp_path / "scored.parquet"
    assert main(["batch", str(path), str(out), *_model(tiny_checkpoint), "--rank", "--group-column", "qid"]) == 0
    assert "scored 30 pairs" in capsys.readouterr().out
    table = pq.read_table(out).to_pylist()
    assert [r["doc_id"] for r in table] == [r["doc_id"] for r in rows]  # input order, ids untouched
    assert all(t["label"] == r["label"] and t["qid"] == r["qid"] for t, r in zip(table, rows, strict=True))
    expected = reranker.score_pairs([(r["query"], r["document"]) for r in rows])
    np.testing.assert_allclose([t["score"] for t in table], expected, atol=1e-5)
    _check_ranks(pq.read_table(out).to_pydict(), "qid")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "scored.parquet"]  # nothing left beside


def test_ranks_hold_across_chunks_and_for_scattered_queries(tmp_path, fast_checkpoint, make_text):
    """Groups that straddle chunk boundaries (ranked one group at a time) and groups whose rows are scattered
    (ranked by index): the same ranks as sorting each group by score."""
    rng = random.Random(3)
    together = [{"qid": i // 6, "query": f"query {i // 6}", "document": make_text(rng.randint(2, 9))}
                for i in range(36)]
    scattered = together[:]
    rng.shuffle(scattered)
    for name, rows in (("together", together), ("scattered", scattered)):
        source, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.parquet"
        source.write_text("\n".join(json.dumps(r) for r in rows))
        assert main(["batch", str(source), str(out), *_model(fast_checkpoint), "--rank", "--group-column", "qid",
                     "--chunk-rows", "7"]) == 0
        table = pq.read_table(out).to_pydict()
        assert table["document"] == [r["document"] for r in rows]
        _check_ranks(table, "qid")


def test_parquet_in_with_other_column_names(tmp_path, tiny_checkpoint, reranker):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"q": ["a question"] * 3, "passage": ["one", "two two", "three three three"],
                             "id": [7, 8, 9]}), source)
    out = tmp_path / "out.parquet"
    assert main(["batch", str(source), str(out), *_model(tiny_checkpoint), "--query-column", "q",
                 "--document-column", "passage", "--activation", "sigmoid"]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["id"] == [7, 8, 9]
    expected = reranker.score_pairs([("a question", p) for p in ["one", "two two", "three three three"]],
                                    activation="sigmoid")
    np.testing.assert_allclose(table["score"], expected, atol=1e-6)


def test_a_parquet_folder_streams_in_exact_chunks_from_any_row(tmp_path):
    """Chunks are cut by row number, not by the files' row groups, and start at any row (what a resume reads)."""
    from ettin_rerank.tables import Columns, chunks, scan

    root = tmp_path / "shards"
    root.mkdir()
    ids = list(range(23))
    pq.write_table(pa.table({"query": ["q"] * 10, "document": [f"d{i}" for i in ids[:10]], "id": ids[:10]}),
                   root / "a.parquet", row_group_size=4)
    pq.write_table(pa.table({"query": ["q"] * 13, "document": [f"d{i}" for i in ids[10:]], "id": ids[10:]}),
                   root / "b.parquet", row_group_size=3)
    scanned = scan(root, Columns())
    assert scanned.rows == 23
    for start in (0, 3, 5, 10, 14, 22):
        got = list(chunks(scanned, 5, start=start))
        assert [c.first_row for c in got] == list(range(start, 23, 5))
        assert all(c.table.num_rows == 5 for c in got[:-1])
        assert pa.concat_tables([c.table for c in got]).column("id").to_pylist() == ids[start:]
        last = got[-1]
        assert last.locate(last.table.num_rows - 1) == f"{root / 'b.parquet'}, row 12"
    assert next(chunks(scanned, 5, start=10)).locate(0) == f"{root / 'b.parquet'}, row 0"


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ('{"query": "q", "text": "x"}\n', [], "bad.jsonl:1: the row has no column 'document' (it has: query, text)"),
        ('{"query": "q", "document": "d"}\n{"query": "q", "document": null}\n', [],
         "bad.jsonl:2: column 'document' is null"),
        ('{"query": "q", "document": "d", "score": 1}\n', [], "already has a column 'score'"),
        ("not json\n", [], "bad.jsonl:1: not a JSON object"),
        ("", [], "holds no rows"),
        ('{"query": " \\u200b ", "document": "d"}\n', [], "bad.jsonl:1: column 'query' is empty"),
        ('{"query": "q", "document": "d", "label": 1}\n{"query": "q", "document": "e", "label": "x"}\n', [],
         "bad.jsonl:2: column 'label' is text here but a number on line 1"),
        ('{"query": "q", "document": "\\ud800 lone"}\n', [], "bad.jsonl:1: column 'document' cannot be stored"),
        ('{"query": "q", "document": "d"}\n{"query": "' + "long " * 40 + '", "document": "d"}\n',
         ["--max-length", "32"], "bad.jsonl:2: column 'query': query is"),
        ('{"query": "q", "document": "d", "qid": 1}\n{"query": "q", "document": "d", "qid": null}\n',
         ["--rank", "--group-column", "qid"], "bad.jsonl:2: column 'qid' is null"),
        ('{"query": "q", "document": "d", "meta": {}}\n', [],
         "bad.jsonl: column 'meta' is struct<>, which Parquet cannot store"),
        ('{"query": "q", "document": "d", "meta": {"tags": [{}]}}\n', [],
         "bad.jsonl: column 'meta' is struct<tags: list<item: struct<>>>, which Parquet cannot store"),
    ],
)
def test_bad_input_is_one_clear_line_before_any_work(tmp_path, tiny_checkpoint, capsys, content, extra, message):
    source = tmp_path / "bad.jsonl"
    source.write_text(content)
    out = tmp_path / "o.parquet"
    assert main(["batch", str(source), str(out), *_model(tiny_checkpoint), *extra]) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("ettin-rerank")]  # not the loaders' progress bars
    assert len(ours) == 1 and message in ours[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # no output, no partial


def test_a_bad_row_deep_in_the_file_is_named_by_its_file_row_before_any_scoring(tmp_path, tiny_checkpoint, capsys):
    rows = [{"query": f"query {i // 50}", "document": f"document {i}"} for i in range(9_500)]
    jsonl = tmp_path / "deep.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[8_999] = json.dumps({"query": "query", "document": 17})
    jsonl.write_text("\n".join(lines))
    assert main(["batch", str(jsonl), str(tmp_path / "o.parquet"), *_model(tiny_checkpoint)]) == 2
    assert "deep.jsonl:9000: column 'document' is a int, not text" in capsys.readouterr().err
    parquet = tmp_path / "deep.parquet"
    documents = [r["document"] for r in rows]
    documents[9_000] = None
    pq.write_table(pa.table({"query": [r["query"] for r in rows], "document": documents}), parquet)
    assert main(["batch", str(parquet), str(tmp_path / "o.parquet"), *_model(tiny_checkpoint)]) == 2
    assert "deep.parquet, row 9000: column 'document' is null" in capsys.readouterr().err
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"query": pa.array([], pa.string()), "document": pa.array([], pa.string())}), empty)
    assert main(["batch", str(empty), str(tmp_path / "o.parquet"), *_model(tiny_checkpoint)]) == 2
    assert "empty.parquet holds no rows" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "o.parquet.partial").exists()


def test_the_input_is_never_the_output(pairs_jsonl, tmp_path, tiny_checkpoint, capsys):
    path, _ = pairs_jsonl
    before = path.read_bytes()
    for flags in ([], ["--overwrite"]):
        assert main(["batch", str(path), str(path), *_model(tiny_checkpoint), *flags]) == 2
        assert "is the input" in capsys.readouterr().err
    assert path.read_bytes() == before
    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.table({"query": ["q"], "document": ["d"]}), folder / "part-0.parquet")
    assert main(["batch", str(folder), str(folder / "scored.parquet"), *_model(tiny_checkpoint)]) == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet"]


def test_an_existing_output_is_replaced_only_when_asked_and_only_if_batch_wrote_it(pairs_jsonl, tmp_path,
                                                                                   tiny_checkpoint, capsys):
    path, _ = pairs_jsonl
    out = tmp_path / "scored.parquet"
    out.write_bytes(b"someone's results")
    assert main(["batch", str(path), str(out), *_model(tiny_checkpoint)]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert main(["batch", str(path), str(out), *_model(tiny_checkpoint), "--overwrite"]) == 2
    assert "was not written by ettin-rerank batch" in capsys.readouterr().err
    assert out.read_bytes() == b"someone's results"
    out.unlink()
    assert main(["batch", str(path), str(out), *_model(tiny_checkpoint)]) == 0
    first = pq.read_table(out)
    assert main(["batch", str(path), str(out), *_model(tiny_checkpoint), "--activation", "sigmoid",
                 "--overwrite"]) == 0
    second = pq.read_table(out)
    assert second.num_rows == first.num_rows == 30
    assert all(0 < s < 1 for s in second["score"].to_pylist())
    assert second["score"].to_pylist() != first["score"].to_pylist()


class _StopsAfterOneChunk:
    """``engine`` (its identity, its checks), that stops the run as Ctrl-C would after scoring one chunk."""

    def __init__(self, engine):
        self.engine, self.calls = engine, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def score_pairs(self, pairs, options=None):
        self.calls += 1
        if self.calls > 1:
            raise KeyboardInterrupt
        return self.engine.score_pairs(pairs, options=options)


def test_the_hub_token_is_written_into_no_output(pairs_jsonl, tmp_path, tiny_checkpoint, reranker):
    """A token in engine_options reaches the engine, never a part, the output or a resume's error; parts that an
    older version wrote with the token in them still resume."""
    from ettin_rerank.batch import METADATA_KEY, BatchConfig, partial_path, rerank_file

    token = "hf_NotARealToken4817"
    path, _ = pairs_jsonl
    out = tmp_path / "scored.parquet"
    config = BatchConfig(model=str(tiny_checkpoint), engine_options={"device": "cpu", "dtype": "float32",
                                                                     "token": token, "local_files_only": True})
    assert token not in json.dumps(config.settings())
    assert token not in repr(config) and "'token': '***'" in repr(config) and "local_files_only" in repr(config)
    with pytest.raises(KeyboardInterrupt):
        rerank_file(path, out, config, chunk_rows=10, save_every=0, engine=_StopsAfterOneChunk(reranker),
                    show_progress_bar=False)
    part = partial_path(out) / "part-000000.parquet"
    assert token.encode() not in part.read_bytes()
    table = pq.read_table(part)  # as an older version wrote it: the token in the stored settings
    record = json.loads(table.schema.metadata[METADATA_KEY])
    record["settings"]["engine_options"]["token"] = token
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(record).encode()}), part)
    with pytest.raises(ValueError, match="other settings") as refused:
        rerank_file(path, out, BatchConfig(**{**config.__dict__, "activation": "sigmoid"}), chunk_rows=10,
                    engine=reranker, show_progress_bar=False)
    assert token not in str(refused.value)
    assert rerank_file(path, out, config, chunk_rows=10, show_progress_bar=False) == 30
    assert token.encode() not in out.read_bytes()
    assert "token" not in json.loads(pq.read_schema(out).metadata[METADATA_KEY])["settings"]["engine_options"]


# ----------------------------------------------------------------------------------------------------- signals

SIGNAL_FLAGS = ["--chunk-rows", "12", "--save-every", "0", "--rank", "--group-column", "qid"]
STOPS = {"SIGINT": (signal.SIGINT, "jsonl", 130), "SIGTERM": (signal.SIGTERM, "jsonl", 143),
         "SIGKILL": (signal.SIGKILL, "parquet", -signal.SIGKILL)}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, fast_checkpoint):
    """Three real runs (the same 192 rows as JSON Lines or Parquet), started together as real processes, each
    sent its signal once two parts are saved; and an uninterrupted run's output to compare with."""
    rng = random.Random(9)
    words = "bees dance tides moon pasta water yeast magma reef wind".split()
    rows = [{"qid": f"q{i // 8}", "id": i, "query": f"about {words[(i // 8) % 10]}",
             "document": " ".join(rng.choices(words, k=rng.randint(3, 9)))} for i in range(192)]
    folder = tmp_path_factory.mktemp("stopped")
    inputs = {"jsonl": folder / "rows.jsonl", "parquet": folder / "rows.parquet"}
    inputs["jsonl"].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), inputs["parquet"], row_group_size=50)
    runs = {}
    for name, (sig, kind, _) in STOPS.items():
        out = folder / name / "scored.parquet"
        out.parent.mkdir()
        command = ["batch", str(inputs[kind]), str(out), *_model(fast_checkpoint), *SIGNAL_FLAGS]
        log = out.parent / "stderr.txt"
        with log.open("w") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "ettin_rerank.cli", *command],
                                       stdout=subprocess.DEVNULL, stderr=stderr)
        runs[name] = {"command": command, "out": out, "partial": out.with_name("scored.parquet.partial"),
                      "log": log, "process": process, "signal": sig}
    deadline = time.monotonic() + 180
    waiting = dict(runs)
    while waiting and time.monotonic() < deadline:
        for name, run in list(waiting.items()):
            if run["process"].poll() is not None:
                pytest.fail(f"{name}: the run ended before it could be stopped: {run['log'].read_text()[-2000:]}")
            if run["partial"].is_dir() and len(list(run["partial"].glob("part-*.parquet"))) >= 2:
                run["process"].send_signal(run["signal"])
                del waiting[name]
        time.sleep(0.02)
    for run in waiting.values():
        run["process"].kill()
    for run in runs.values():
        run["code"] = run["process"].wait(timeout=60)
    assert not waiting, f"never saved two parts: {sorted(waiting)}"
    reference = folder / "uninterrupted.parquet"
    assert main(["batch", str(inputs["jsonl"]), str(reference), *_model(fast_checkpoint), *SIGNAL_FLAGS]) == 0
    return runs, pq.read_table(reference)


@pytest.mark.parametrize("name", list(STOPS))
def test_a_stopped_run_leaves_nothing_at_the_output_and_resumes_to_the_same_rows(stopped, tmp_path, caplog, capsys,
                                                                                 name):
    runs, reference = stopped
    run = runs[name]
    command, out, partial = run["command"], run["out"], run["partial"]
    assert run["code"] == STOPS[name][2]
    assert not out.exists(), "a stopped run must leave nothing at the output's name"
    kept = sum(pq.ParquetFile(p).metadata.num_rows for p in partial.glob("part-*.parquet"))
    assert 24 <= kept < 192
    if name != "SIGKILL":  # a kill gives no chance to say anything
        assert f"they are kept in {partial}; run the same command again to resume" in run["log"].read_text()
    if name == "SIGINT":  # other settings never mix into these rows; --restart starts over
        with caplog.at_level(logging.WARNING, logger="ettin_rerank"):
            assert main([*command, "--activation", "sigmoid"]) == 2
        assert "other settings: activation 'none' (now 'sigmoid')" in capsys.readouterr().err
        assert "stopped after" not in caplog.text, "a refused resume is not a stopped run to resume"
        restarted = tmp_path / "restarted.parquet"
        shutil.copytree(partial, tmp_path / "restarted.parquet.partial")
        assert main([*command[:2], str(restarted), *command[3:], "--restart"]) == 0
        assert pq.read_table(restarted).equals(reference)
    with caplog.at_level(logging.WARNING, logger="ettin_rerank"):
        caplog.clear()
        assert main([*command, *(["--resume"] if name == "SIGTERM" else [])]) == 0
    assert f"{kept} of 192 rows were scored before and are kept" in caplog.text
    assert pq.read_table(out).equals(reference), "the resumed output differs from an uninterrupted run's"
    assert not partial.exists()


def test_resume_refuses_what_it_cannot_continue(pairs_jsonl, tmp_path, tiny_checkpoint, capsys):
    path, _ = pairs_jsonl
    out = tmp_path / "scored.parquet"
    assert main(["batch", str(path), str(out), *_model(tiny_checkpoint), "--resume"]) == 2
    assert "there is no" in capsys.readouterr().err
    stranger = tmp_path / "scored.parquet.partial"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert main(["batch", str(path), str(out), *_model(tiny_checkpoint)]) == 2
    assert "was not written by ettin-rerank batch (notes.txt)" in capsys.readouterr().err
    assert (stranger / "notes.txt").read_text() == "mine" and not out.exists()
    shutil.rmtree(stranger)
    stranger.mkdir()  # what a run killed before its first part leaves: its lock, a part in flight
    (stranger / ".lock").touch()
    (stranger / "part-000000.parquet.tmp").write_bytes(b"PAR1 half")
    assert main(["batch", str(path), str(out), *_model(tiny_checkpoint), "--resume"]) == 2
    assert "holds no scored rows to resume" in capsys.readouterr().err
    assert not stranger.exists() and not out.exists(), "a folder with nothing to resume is not left behind"
