"""Bad input gets a clear error naming the argument, or a documented result; nothing is dropped silently."""

from __future__ import annotations

import pytest
from ettin_rerank import Reranker


@pytest.mark.parametrize("query", ["", "   \n"])
def test_empty_query_is_rejected(reranker, query):
    with pytest.raises(ValueError, match="query must not be empty or only whitespace"):
        reranker.rerank(query, ["a document"])


@pytest.mark.parametrize("query", [None, 3, b"bytes", ["list"]])
def test_non_string_query_is_rejected(reranker, query):
    with pytest.raises(TypeError, match="query must be a string"):
        reranker.score(query, ["a document"])


def test_single_string_documents_is_rejected(reranker):
    with pytest.raises(TypeError, match=r"documents must be a list of strings, not a single string"):
        reranker.rerank("query", "just one document")


@pytest.mark.parametrize("documents", [None, 42, {"a": 1}])
def test_documents_of_wrong_type_are_rejected(reranker, documents):
    with pytest.raises(TypeError, match="documents must be a list of strings"):
        reranker.rerank("query", documents)


@pytest.mark.parametrize("bad", [None, 7, ("tuple",)])
def test_a_non_string_document_is_named_by_position(reranker, bad):
    with pytest.raises(TypeError, match=r"documents\[1\] must be a string"):
        reranker.rerank("query", ["fine", bad, "also fine"])


def test_no_documents_gives_an_empty_result(reranker):
    assert reranker.rerank("query", []) == []
    assert reranker.score("query", []) == []
    assert reranker.score_pairs([]) == []


def test_empty_document_is_scored_not_dropped(reranker):
    rows = reranker.rerank("query", ["", "some text", ""])
    assert sorted(r.index for r in rows) == [0, 1, 2]
    assert all(r.num_tokens == 0 for r in rows if r.index != 1)


@pytest.mark.parametrize("top_k", [0, -3])
def test_top_k_must_be_positive(reranker, top_k):
    with pytest.raises(ValueError, match=f"top_k must be > 0, but got {top_k}"):
        reranker.rerank("query", ["a", "b"], top_k=top_k)


@pytest.mark.parametrize("top_k", [1.5, "2", True])
def test_top_k_must_be_an_integer(reranker, top_k):
    with pytest.raises(TypeError, match="top_k must be a positive integer or None"):
        reranker.rerank("query", ["a", "b"], top_k=top_k)


def test_top_k_larger_than_the_list_keeps_everything(reranker):
    assert len(reranker.rerank("query", ["a", "b", "c"], top_k=10)) == 3


def test_bad_pairs_are_named(reranker):
    with pytest.raises(TypeError, match=r"pairs\[1\] must be a \(query, document\) pair"):
        reranker.score_pairs([("q", "d"), ("only one",)])
    with pytest.raises(TypeError, match="pairs must be a list"):
        reranker.score_pairs("q")
    with pytest.raises(ValueError, match=r"pairs\[0\]\[0\] must not be empty"):
        reranker.score_pairs([("", "d")])
    with pytest.raises(TypeError, match=r"pairs\[1\]\[1\] must be a string, but got NoneType"):
        reranker.score_pairs([("q", "d"), ("q", None)])


def test_unknown_call_option_is_rejected(reranker):
    with pytest.raises(TypeError, match="unknown option"):
        reranker.score("query", ["d"], batch_sise=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_length": 0}, "max_length must be > 0, but got 0"),
        ({"max_length": 10**6}, "max_length must be <= the model's limit"),
        ({"long_document_strategy": "chunk"}, "long_document_strategy must be one of"),
        ({"window_overlap": -1}, "window_overlap must be an integer >= 0"),
        ({"activation": "softmax"}, "activation must be one of none, sigmoid, calibrated"),
    ],
)
def test_bad_options_name_the_argument(reranker, options, message):
    with pytest.raises(ValueError, match=message):
        reranker.score("query", ["d"], **options)


def test_odd_text_is_scored(reranker):
    documents = ["\x00\x01 control", "emoji 🧬🧪 and accents éàü", "中文文本", "a" * 20_000, "\n\n\t"]
    rows = reranker.rerank("query ✓", documents)
    assert sorted(r.index for r in rows) == list(range(len(documents)))
    assert all(r.score == r.score for r in rows)  # no NaN


def test_bad_engine_arguments(tiny_checkpoint):
    with pytest.raises(ValueError, match="dtype must be one of"):
        Reranker(tiny_checkpoint, device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="device must be a torch device"):
        Reranker(tiny_checkpoint, device="toaster")
    with pytest.raises(ValueError, match="batch_tokens must be a positive integer"):
        Reranker(tiny_checkpoint, device="cpu", batch_tokens=0)
    with pytest.raises(ValueError, match="attention must be one of"):
        Reranker(tiny_checkpoint, device="cpu", attention="magic")


@pytest.mark.parametrize("query", ["\u200b\u200b", "\x01\x02\x03", "\u200b \ufeff\n"])
def test_a_query_of_invisible_characters_is_an_empty_query(reranker, query):
    with pytest.raises(ValueError, match="query must not be empty or only whitespace, control or zero-width"):
        reranker.rerank(query, ["a document"])


def test_lone_surrogates_are_named_by_argument_and_position(reranker):
    with pytest.raises(ValueError, match=r"documents\[2\] is not valid Unicode: .* at character 4"):
        reranker.rerank("query", ["fine", "also fine", "bad \ud800 text"])
    with pytest.raises(ValueError, match=r"^query is not valid Unicode"):
        reranker.rerank("bad \udcff query", ["fine"])
    with pytest.raises(ValueError, match=r"pairs\[1\]\[1\] is not valid Unicode"):
        reranker.score_pairs([("q", "ok"), ("q", "\udc80")])
    with pytest.raises(ValueError, match=r"documents\[1\]\[0\] is not valid Unicode"):
        reranker.rerank_many(["q1", "q2"], [["ok"], ["\ud83d"]])


def test_none_engine_options_mean_the_defaults(tiny_checkpoint):
    engine = Reranker(tiny_checkpoint, device="cpu", long_document_strategy=None, window_overlap=None,
                      activation=None)
    assert (engine.defaults.long_document_strategy, engine.defaults.activation) == ("max", "none")
    assert len(engine.score("q", ["d"])) == 1


def test_a_max_length_too_small_for_any_document_fails_at_construction(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"max_length must be at least 8 \(room for the special tokens"):
        Reranker(tiny_checkpoint, device="cpu", max_length=5)
    assert len(Reranker(tiny_checkpoint, device="cpu", max_length=8).score("q", ["a document"])) == 1


def test_numbers_are_accepted_as_numbers(reranker):
    import numpy as np

    assert len(reranker.rerank("query", ["a", "b", "c"], top_k=np.int64(2))) == 2
    assert reranker.rerank("query", ["a"], score_threshold=np.float32(-1e9))
    with pytest.raises(TypeError, match="top_k must be a positive integer or None"):
        reranker.rerank("query", ["a"], top_k=np.float64(2.0))


def test_bfloat16_is_never_picked_on_a_cpu_without_native_bfloat16(monkeypatch):
    import torch
    from ettin_rerank.engine.device import cpu_has_native_bf16, resolve_dtype

    flags = open("/proc/cpuinfo").read().split() if __import__("os").path.exists("/proc/cpuinfo") else []
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert cpu_has_native_bf16() == native  # this machine, as its CPU flags say
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_dtype(None, torch.device("cpu")) == torch.bfloat16
