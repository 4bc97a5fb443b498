"""OpenVINO as the CPU runtime (issue 25, items 3-4): converted once and cached on disk (a corrupt entry converted
again), the engine's windows, strategies, results and errors unchanged, int8 only when asked, and the default per
CPU kind from measurements (PyTorch, quietly, where OpenVINO is not installed)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from ettin_rerank import Reranker
from ettin_rerank.engine import device as engine_device
from ettin_rerank.engine import openvino_runtime
from ettin_rerank.engine import reranker as reranker_module
from ettin_rerank.engine.budget import stream_batches, token_budget_batches
from ettin_rerank.errors import CancelledError, ModelLoadError
from scipy.stats import spearmanr

needs_openvino = pytest.mark.skipif(not openvino_runtime.openvino_available(), reason="needs ettin-rerank[openvino]")

QUERY = "protein study"


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openvino-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("ETTIN_RERANK_CACHE", str(folder))
    yield folder
    patch.undo()


@pytest.fixture(scope="module")
def ov_engine(ov_cache, wide_checkpoint):
    return Reranker(wide_checkpoint, device="cpu", dtype="float32", runtime="openvino")


@pytest.fixture(scope="module")
def exact(wide_checkpoint):
    return Reranker(wide_checkpoint, device="cpu", dtype="float32", runtime="torch")


@needs_openvino
def test_scores_match_the_exact_path(ov_engine, exact, wide_texts, make_text):
    documents = [*wide_texts, make_text(400), "", "x"]
    assert np.allclose(ov_engine.score(QUERY, documents), exact.score(QUERY, documents), atol=1e-4, rtol=1e-5)
    assert ov_engine.runtime == "openvino" and "openvino" in repr(ov_engine)


@needs_openvino
def test_pytorch_copy_of_the_encoder_is_freed(ov_engine):
    """OpenVINO holds the encoder's weights: PyTorch's copy goes (a second copy of a 1B model is 4 GB); the head,
    run by PyTorch in float32, stays."""
    from ettin_rerank.engine.scorers import encoder_pooling_head

    encoder, _, _ = encoder_pooling_head(ov_engine._cross_encoder)
    assert all(p.is_meta for p in encoder.parameters())
    head = [p for module in list(ov_engine._cross_encoder)[2:] for p in module.parameters()]
    assert head and not any(p.is_meta for p in head)
    assert len(ov_engine.score(QUERY, ["a", "protein study"])) == 2


@needs_openvino
@pytest.mark.parametrize("strategy", ["max", "mean", "truncate"])
def test_windows_and_long_document_strategies_are_the_engines(ov_engine, exact, make_text, strategy):
    documents = [make_text(300), make_text(40), make_text(700)]
    options = {"max_length": 96, "long_document_strategy": strategy}
    got = ov_engine.rerank(QUERY, documents, **options)
    want = exact.rerank(QUERY, documents, **options)
    assert [r.index for r in got] == [r.index for r in want]
    for a, b in zip(got, want, strict=True):
        assert (a.num_windows, a.num_tokens, a.truncated, a.best_window) == (
            b.num_windows, b.num_tokens, b.truncated, b.best_window)
        assert a.score == pytest.approx(b.score, abs=1e-4)


@needs_openvino
def test_errors_are_the_engines(ov_engine):
    with pytest.raises(ValueError, match="query"):
        ov_engine.rerank("", ["a"])
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        ov_engine.rerank(QUERY, ["a", 3])
    assert ov_engine.rerank(QUERY, []) == []


@needs_openvino
def test_converted_once_then_read_from_the_cache(ov_engine, ov_cache, wide_checkpoint, monkeypatch, wide_texts):
    converted = list(ov_cache.glob("openvino/*/model.xml"))
    assert len(converted) == 1
    assert not list(ov_cache.glob("openvino/.partial-*")), "a conversion is written beside, then renamed"

    def refuse(*args, **kwargs):
        raise AssertionError("converted again although the cache holds this checkpoint")

    monkeypatch.setattr(openvino_runtime.OpenVINOScorer, "_convert", refuse)
    again = Reranker(wide_checkpoint, device="cpu", dtype="float32", runtime="openvino")
    assert again.score(QUERY, wide_texts[:3]) == pytest.approx(ov_engine.score(QUERY, wide_texts[:3]), abs=1e-6)


@needs_openvino
def test_a_corrupt_cache_entry_is_converted_again(ov_engine, ov_cache, wide_checkpoint, wide_texts, caplog):
    """Weights overwritten in place (same size: OpenVINO would read them and compute garbage) are found by the
    entry's checksums, logged, converted again, and score as before; no traceback."""
    weights = ov_engine._scorer.path.with_name("model.bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 4096] = bytes(4096)
    weights.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="ettin_rerank.engine.openvino_runtime"):
        rebuilt = Reranker(wide_checkpoint, device="cpu", dtype="float32", runtime="openvino")
    assert any("corrupt" in r.getMessage() and str(weights.parent) in r.getMessage() for r in caplog.records)
    assert rebuilt.score(QUERY, wide_texts[:4]) == pytest.approx(ov_engine.score(QUERY, wide_texts[:4]), abs=1e-6)
    assert openvino_runtime._entry_problem(weights.parent) is None
    assert not list(ov_cache.glob("openvino/.stale-*")) and not list(ov_cache.glob("openvino/.partial-*"))


@needs_openvino
def test_a_cut_short_or_unreadable_entry_is_not_read(ov_engine, tmp_path, caplog):
    """Weights cut short fail the checksums; an entry whose files match its manifest but that OpenVINO cannot read
    is refused by OpenVINO: either way the entry is logged and removed (to be converted again), not a traceback."""
    import openvino as ov

    source = ov_engine._scorer.path.parent
    core = ov.Core()
    for case in ("cut short", "unreadable"):
        entry = tmp_path / case.replace(" ", "-")
        entry.mkdir()
        for name in ("model.xml", "model.bin", openvino_runtime.MANIFEST):
            (entry / name).write_bytes((source / name).read_bytes())
        weights = entry / "model.bin"
        weights.write_bytes(weights.read_bytes()[:1000])
        if case == "unreadable":  # a manifest that matches the damaged files: only OpenVINO can tell
            manifest = json.dumps(openvino_runtime._checksums(entry))
            (entry / openvino_runtime.MANIFEST).write_text(manifest)
            assert openvino_runtime._entry_problem(entry) is None
        else:
            assert "truncated or overwritten" in openvino_runtime._entry_problem(entry)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ettin_rerank.engine.openvino_runtime"):
            assert openvino_runtime._read_entry(core, entry) is None
        assert not entry.exists() and not list(tmp_path.glob(".stale-*"))
        [record] = caplog.records
        assert "corrupt" in record.getMessage() and str(entry) in record.getMessage()
        assert case == "cut short" or "OpenVINO cannot read it" in record.getMessage()


@needs_openvino
def test_leftovers_of_killed_conversions_are_removed_and_live_ones_kept(ov_engine, tmp_path):
    """A conversion killed while writing (``.partial-*``) or while removing a corrupt entry (``.stale-*``) leaves a
    folder as big as the model: the next conversion removes those older than an hour, not one being written."""
    import openvino as ov

    killed, removing, live = tmp_path / ".partial-killed", tmp_path / ".stale-killed", tmp_path / ".partial-live"
    for folder in (killed, removing, live):
        folder.mkdir()
        (folder / "model.bin").write_bytes(bytes(1000))
    two_hours_ago = time.time() - 2 * 3600
    for folder in (killed, removing):
        os.utime(folder, (two_hours_ago, two_hours_ago))
    entry = tmp_path / "entry"
    openvino_runtime._write_entry(ov, ov.Core().read_model(ov_engine._scorer.path), entry)
    assert not killed.exists() and not removing.exists()
    assert live.exists(), "a folder another process is writing now is left alone"
    assert openvino_runtime._entry_problem(entry) is None


def test_a_changed_checkpoint_is_converted_again(ov_cache, wide_checkpoint, tiny_checkpoint):
    first = openvino_runtime._cache_key(wide_checkpoint, int8=False)
    assert openvino_runtime._cache_key(tiny_checkpoint, int8=False) != first
    assert openvino_runtime._cache_key(wide_checkpoint, int8=True) != first


@needs_openvino
def test_int8_is_an_opt_in_with_its_agreement_measured(ov_engine, wide_checkpoint, exact, wide_texts, make_text,
                                                        monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("int8 converted the checkpoint again instead of quantizing the cached float32 model")

    monkeypatch.setattr(openvino_runtime.OpenVINOScorer, "_convert", refuse)
    int8 = Reranker(wide_checkpoint, device="cpu", runtime="openvino", precision="int8")
    documents = [*wide_texts, *(make_text(20 + 9 * i) for i in range(16))]
    quantized, reference = np.array(int8.score(QUERY, documents)), np.array(exact.score(QUERY, documents))
    assert not np.allclose(quantized, reference, atol=1e-4), "int8 is not exact: if it is, it did not quantize"
    assert spearmanr(quantized, reference).statistic > 0.9
    xml = int8._scorer.path.read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml or 'element_type="i8"' in xml or 'element_type="u8"' in xml


def test_bad_runtime_and_precision_are_named(tiny_checkpoint):
    with pytest.raises(ValueError, match="runtime"):
        Reranker(tiny_checkpoint, device="cpu", runtime="tensorrt")
    with pytest.raises(ValueError, match="precision"):
        Reranker(tiny_checkpoint, device="cpu", precision="int4")
    with pytest.raises(ValueError, match="int8"):
        Reranker(tiny_checkpoint, device="cpu", runtime="torch", precision="int8")
    with pytest.raises(ValueError, match="attention"):
        Reranker(tiny_checkpoint, device="cpu", runtime="openvino", attention="flash_attn")


def test_a_missing_openvino_says_what_to_install(tiny_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ModelLoadError, match=r"runtime=\"openvino\" needs OpenVINO: .*ettin-rerank\[openvino\]"):
        Reranker(tiny_checkpoint, device="cpu", runtime="openvino")
    with pytest.raises(ModelLoadError, match=r"precision=\"int8\" needs .*ettin-rerank\[openvino\]"):
        Reranker(tiny_checkpoint, device="cpu", precision="int8")


def test_without_openvino_the_default_runs_pytorch_quietly(tiny_checkpoint, monkeypatch, caplog):
    """Where OpenVINO is the measured default but not installed, ``Reranker(model)`` runs PyTorch: no error, no
    warning, the same scores as ``runtime="torch"``."""
    monkeypatch.delenv("ETTIN_RERANK_RUNTIME", raising=False)
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr(engine_device, "cpu_kind", lambda: "avx2")
    assert engine_device.KIND_DEFAULTS["avx2"].runtime == "openvino"
    with caplog.at_level(logging.INFO, logger="ettin_rerank"):
        engine = Reranker(tiny_checkpoint, device="cpu", dtype="float32")
    assert engine.runtime == "torch" and "runtime='torch'" in repr(engine)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("not installed" in r.getMessage() for r in caplog.records), "said at INFO, for who looks"
    torch_engine = Reranker(tiny_checkpoint, device="cpu", dtype="float32", runtime="torch")
    pair = ["a gene", "pasta"]
    assert engine.score(QUERY, pair) == pytest.approx(torch_engine.score(QUERY, pair), abs=1e-6)


@needs_openvino
def test_classic_cross_encoders_say_they_run_on_torch(classic_checkpoint):
    with pytest.raises(ValueError, match="runtime='torch'"):
        Reranker(classic_checkpoint, device="cpu", runtime="openvino")


def test_the_default_runtime_comes_from_the_measurements_of_this_cpu_kind(monkeypatch):
    cpu = engine_device.torch.device("cpu")
    monkeypatch.delenv("ETTIN_RERANK_RUNTIME", raising=False)
    for kind, default in engine_device.KIND_DEFAULTS.items():
        monkeypatch.setattr(engine_device, "cpu_kind", lambda kind=kind: kind)
        assert engine_device.resolve_runtime(None, None, cpu) == default.runtime
        assert "benchmarks/results/" in default.source
    monkeypatch.setattr(engine_device, "cpu_kind", lambda: "amx")
    monkeypatch.setattr(openvino_runtime, "openvino_available", lambda: False)
    assert engine_device.resolve_runtime(None, None, cpu) == "torch", "not installed: PyTorch"
    monkeypatch.setattr(engine_device, "cpu_kind", lambda: "other")
    assert engine_device.resolve_runtime(None, None, cpu) == "torch", "no measurement: PyTorch"
    monkeypatch.setenv("ETTIN_RERANK_RUNTIME", "openvino")
    assert engine_device.resolve_runtime(None, None, cpu) == "openvino"
    assert engine_device.resolve_runtime("torch", None, cpu) == "torch", "an explicit runtime wins"
    assert engine_device.resolve_runtime(None, "int8", cpu) == "openvino"


@needs_openvino
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_where_openvino_is_only_the_default_a_classic_cross_encoder_runs_pytorch(classic_checkpoint, monkeypatch,
                                                                                 caplog, dtype):
    """README: "other cross-encoders say so and run on PyTorch". On a CPU whose measured default is OpenVINO,
    ``Reranker(classic)`` runs PyTorch (said at INFO), with ``runtime="torch"``'s scores; asking for OpenVINO by
    name still raises (see above)."""
    monkeypatch.delenv("ETTIN_RERANK_RUNTIME", raising=False)
    monkeypatch.setattr(engine_device, "cpu_kind", lambda: "avx2")
    with caplog.at_level(logging.INFO, logger="ettin_rerank"):
        engine = Reranker(classic_checkpoint, device="cpu", dtype=dtype)
    assert engine.runtime == "torch" and engine.attention == "sdpa"
    assert any("ModernBERT" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    torch_engine = Reranker(classic_checkpoint, device="cpu", dtype=dtype, runtime="torch")
    pair = ["a gene", "pasta"]
    assert engine.score(QUERY, pair) == torch_engine.score(QUERY, pair)
    assert engine._cross_encoder[0].model.dtype == torch_engine._cross_encoder[0].model.dtype


@needs_openvino
def test_where_openvino_is_only_the_default_a_torch_attention_runs_pytorch(tiny_checkpoint, monkeypatch):
    """A torch attention backend asked for with the default runtime is PyTorch's to accept or refuse (on a CPU only
    ``sdpa`` is usable), not an OpenVINO error; ``runtime="openvino"`` by name still refuses it."""
    monkeypatch.delenv("ETTIN_RERANK_RUNTIME", raising=False)
    monkeypatch.setattr(engine_device, "cpu_kind", lambda: "avx2")
    with pytest.raises(ValueError, match=r"attention='varlen' is not usable with device=cpu.*\['sdpa'\]"):
        Reranker(tiny_checkpoint, device="cpu", attention="varlen")
    with pytest.raises(ValueError, match="runtime='openvino' has its own attention"):
        Reranker(tiny_checkpoint, device="cpu", runtime="openvino", attention="varlen")


@needs_openvino
def test_a_bfloat16_load_does_not_leave_bfloat16_weights_in_the_float32_entry(wide_checkpoint, exact, wide_texts,
                                                                              tmp_path, monkeypatch):
    """dtype is OpenVINO's inference precision; the converted entry (one per checkpoint) holds the float32 weights
    whichever dtype converted it, so a later float32 load scores as PyTorch does in float32."""
    monkeypatch.setenv("ETTIN_RERANK_CACHE", str(tmp_path))
    first = Reranker(wide_checkpoint, device="cpu", dtype="bfloat16", runtime="openvino")
    assert first.dtype == torch.bfloat16 and "dtype='bfloat16'" in repr(first)
    second = Reranker(wide_checkpoint, device="cpu", dtype="float32", runtime="openvino")
    assert second._scorer.path == first._scorer.path, "one entry: read, not converted again"
    assert np.allclose(second.score(QUERY, wide_texts), exact.score(QUERY, wide_texts), atol=1e-4, rtol=1e-5)


def test_avx512_without_native_bfloat16_is_its_own_kind_and_runs_pytorch(monkeypatch):
    """Skylake-SP to Ice Lake (AVX-512, no BF16, no AMX) have no measurement: PyTorch, not AVX2's OpenVINO."""
    cpu = engine_device.torch.device("cpu")
    monkeypatch.delenv("ETTIN_RERANK_RUNTIME", raising=False)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    kinds = {"AVX512": "avx512", "AVX2": "avx2", "DEFAULT": "other"}
    for capability, kind in kinds.items():
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda capability=capability: capability)
        assert engine_device.cpu_kind() == kind
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert "avx512" not in engine_device.KIND_DEFAULTS
    assert engine_device.resolve_runtime(None, None, cpu) == "torch"


@needs_openvino
def test_a_first_conversion_prints_nothing(tiny_checkpoint, tmp_path):
    """A newcomer's first load converts the model: tracing reads every attribute of transformers' modules, which
    warned about a deprecated property and logged '`loss_type=None` was set in the config' on stderr. Run in a
    fresh process: transformers says each only once per process."""
    code = ("import sys; from ettin_rerank import Reranker; "
            "print(Reranker(sys.argv[1], dtype='float32', runtime='openvino').score('bees', ['honey'])[0])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ETTIN_RERANK_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code, str(tiny_checkpoint)], capture_output=True, text=True,
                            env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.glob("openvino/*/model.xml")), "the model was converted in this run"
    assert result.stderr == ""
    float(result.stdout)


def test_calibrating_a_model_does_not_convert_it_again(tiny_checkpoint, tmp_path):
    """``ettin-rerank calibrate`` writes calibration.json into the model folder: the encoder is unchanged, so is
    its cache key; any other file changed is a new key."""
    import shutil

    from ettin_rerank.engine.activation import CALIBRATION_FILE

    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, folder)
    before = openvino_runtime._cache_key(folder, int8=False)
    (folder / CALIBRATION_FILE).write_text('{"factor": 1.0}')
    assert openvino_runtime._cache_key(folder, int8=False) == before
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")
    assert openvino_runtime._cache_key(folder, int8=False) != before


def test_openvino_compiles_a_few_thread_counts_not_one_per_count():
    """Each count the governor picks is one OpenVINO compile: rounded down to max, max/2, max/4, ..., 1."""
    assert [openvino_runtime.compiled_threads(t, 2) for t in (1, 2)] == [1, 2], "2 cores: as the governor says"
    assert {openvino_runtime.compiled_threads(t, 64) for t in range(1, 65)} == {64, 32, 16, 8, 4, 2, 1}
    assert [openvino_runtime.compiled_threads(t, 6) for t in range(1, 7)] == [1, 1, 3, 3, 3, 6]


@needs_openvino
def test_openvino_threads_are_not_pinned_to_cores(two_streams):
    """OpenVINO pins its threads by default on Linux; a pinned thread cannot leave a core that a neighbour keeps
    busy (150m f32 on AMX with two busy neighbours: 1.11x ST pinned, 1.40x not). Every compiled model, streams and
    the counts compiled under contention, leaves them free."""
    engine, _ = two_streams
    scorer = engine._scorer
    scorer._compiled_for(1)
    compiled = [*scorer._compiled.values(), scorer._split]
    assert len({id(model) for model in compiled}) >= 2
    assert all(model.get_property("ENABLE_CPU_PINNING") is False for model in compiled)


def test_batches_share_the_budget_only_when_there_are_enough_to_keep_the_streams_busy():
    """Two streams: batches under half the budget each, if there are at least two per stream; a few batches run
    one at a time under the whole budget (on all the threads)."""
    many, streams = stream_batches([100] * 40, 1000, None, 2)
    assert streams == 2 and len(many) == 8 and all(len(b) * 100 <= 500 for b in many)
    assert sorted(i for b in many for i in b) == list(range(40))
    few, streams = stream_batches([300, 200], 1000, None, 2)
    assert (few, streams) == ([[0, 1]], 1), "2 x 300 tokens fit the whole budget: one batch"
    assert stream_batches([100] * 40, 1000, None, 1) == (token_budget_batches([100] * 40, 1000), 1)


@pytest.fixture
def two_streams(ov_cache, wide_checkpoint, monkeypatch):
    """An OpenVINO engine that runs batches two at a time (AVX2's measured default) on two fixed threads, with a
    record of the batches run alone (on all the threads) rather than in flight."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    monkeypatch.setattr(reranker_module, "openvino_streams", lambda kind: 2)
    engine = Reranker(wide_checkpoint, device="cpu", dtype="float32", runtime="openvino", threads=2,
                      batch_tokens=512)
    assert engine._scorer.streams == 2
    alone: list[int] = []
    run_alone = openvino_runtime.OpenVINOScorer._run_alone

    def recorded(scorer, windows, threads):
        alone.append(len(windows))
        return run_alone(scorer, windows, threads)

    monkeypatch.setattr(openvino_runtime.OpenVINOScorer, "_run_alone", recorded)
    return engine, alone


@needs_openvino
def test_batches_in_flight_keep_each_score_with_its_document(two_streams, exact, wide_texts, make_text):
    """Batches finish in any order on two streams: every score still lands on its own document; a window over
    its share of the budget (256 tokens) runs alone on both threads, the others in flight."""
    engine, alone = two_streams
    documents = [*wide_texts, make_text(300)]
    options = {"max_length": 512}
    assert np.allclose(engine.score(QUERY, documents, **options), exact.score(QUERY, documents, **options),
                       atol=1e-4, rtol=1e-5)
    assert alone == [1], "only the long document's window ran alone"


@needs_openvino
def test_under_contention_batches_run_one_at_a_time_on_one_stream(two_streams, exact, wide_texts):
    """With one thread free, every batch runs alone on one stream of the two-stream model (no third compile)."""
    engine, alone = two_streams
    engine._threads.choose = lambda: 1
    assert np.allclose(engine.score(QUERY, wide_texts), exact.score(QUERY, wide_texts), atol=1e-4, rtol=1e-5)
    scorer = engine._scorer
    assert len(alone) > 4 and set(scorer._compiled) == {1, 2} and scorer._compiled[1] is scorer._split


@needs_openvino
def test_under_a_load_each_batch_runs_alone_timed_for_the_governor(two_streams, exact, wide_texts, loaded_governor):
    """Under a load the governor compares the free CPUs' count with all of them: every batch then runs alone (not
    in flight, where its time is not its own), on the count chosen, and is reported with it."""
    engine, alone = two_streams
    engine._threads = engine._scorer._threads = governor = loaded_governor
    reported = []
    record = governor.record
    governor.record = lambda threads, tokens, seconds: (reported.append(threads), record(threads, tokens, seconds))
    assert np.allclose(engine.score(QUERY, wide_texts), exact.score(QUERY, wide_texts), atol=1e-4, rtol=1e-5)
    assert len(reported) == len(alone) > 4 and set(reported) == {1, 2}


@needs_openvino
def test_the_head_runs_on_one_torch_thread_beside_the_streams(two_streams, exact, wide_texts, make_text):
    """OpenVINO's threads hold the cores while batches are in flight: the float32 head runs on one torch thread
    (two torch threads spin beside them), for batches in flight and alone; the caller's count is theirs after."""
    engine, alone = two_streams
    scorer = engine._scorer
    head, seen = scorer._head, []
    scorer._head = lambda pooled: (seen.append(torch.get_num_threads()), head(pooled))[1]
    documents = [*wide_texts, make_text(300)]
    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert np.allclose(engine.score(QUERY, documents, max_length=512),
                           exact.score(QUERY, documents, max_length=512), atol=1e-4, rtol=1e-5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(caller)
    assert alone == [1] and len(seen) > 2 and set(seen) == {1}


@needs_openvino
def test_a_call_cancelled_with_batches_in_flight_leaves_the_engine_usable(two_streams, exact, wide_texts):
    class CancelledAfterThreeBatches(threading.Event):
        checks = 0

        def is_set(self) -> bool:
            self.checks += 1
            return self.checks > 3

    engine, _ = two_streams
    prepared = engine.prepare([QUERY], [(0, text) for text in wide_texts])
    with pytest.raises(CancelledError):
        engine.score_windows(prepared.windows, CancelledAfterThreeBatches())
    assert np.allclose(engine.score(QUERY, wide_texts), exact.score(QUERY, wide_texts), atol=1e-4, rtol=1e-5)


@needs_openvino
def test_a_large_encoder_runs_one_stream_not_a_second_copy_of_its_weights(ov_cache, wide_checkpoint, monkeypatch):
    monkeypatch.setattr(reranker_module, "openvino_streams", lambda kind: 2)
    monkeypatch.setattr(openvino_runtime, "STREAMS_MAX_WEIGHT_BYTES", 1)
    engine = Reranker(wide_checkpoint, device="cpu", dtype="float32", runtime="openvino", threads=2)
    assert engine._scorer.streams == 1 and engine._scorer._split is None
