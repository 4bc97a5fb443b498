"""Long documents: the whole 8K window is used, and longer documents follow an explicit, reported strategy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ettin_rerank import Reranker
from ettin_rerank.engine.windows import window_spans
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer

SINGLE_TOKEN_WORDS = "protein cell gene disease study results patients clinical treatment effect data risk".split()
QUERY = "protein study"


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def words(tokenizer):
    for word in SINGLE_TOKEN_WORDS:  # so that token boundaries are word boundaries in these tests
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    rng = np.random.default_rng(7)
    return [str(w) for w in rng.choice(SINGLE_TOKEN_WORDS, size=20_000)]


def test_marker_deep_in_the_window_changes_the_score(reranker, words):
    document = " ".join(words[:7000])
    marked = " ".join([*words[:6000], "cancer", *words[6001:7000]])
    plain_score, marked_score = reranker.score(QUERY, [document, marked])
    assert abs(plain_score - marked_score) > 1e-5, "token 6,000 did not reach the score: window not used"
    head_only = {"max_length": 512, "long_document_strategy": "truncate"}
    cut_plain, cut_marked = reranker.score(QUERY, [document, marked], **head_only)
    assert cut_plain == pytest.approx(cut_marked, abs=1e-6)


def test_max_strategy_windows_cover_every_token_and_take_the_best(reranker, tokenizer, words):
    document = " ".join(words)  # 20,000 tokens
    [result] = reranker.rerank(QUERY, [document], return_documents=True)
    query_tokens = len(tokenizer(QUERY, add_special_tokens=False)["input_ids"])
    budget = reranker.model_max_length - query_tokens - 3
    spans = window_spans(20_000, budget, "max", 128)
    assert result.num_tokens == 20_000 and result.num_windows == len(spans) and not result.truncated
    covered = np.zeros(20_000, dtype=bool)
    for start, end in spans:
        covered[start:end] = True
    assert covered.all()
    one_by_one = reranker.score(QUERY, [" ".join(words[s:e]) for s, e in spans])
    assert result.score == pytest.approx(max(one_by_one), abs=1e-5)
    best = int(np.argmax(one_by_one))
    assert (result.best_window.token_start, result.best_window.token_end) == spans[best]
    assert result.passage == " ".join(words[spans[best][0] : spans[best][1]])


def test_mean_strategy_averages_the_windows(reranker, words):
    document = " ".join(words[:1500])
    options = {"max_length": 512, "window_overlap": 64}
    [mean_row] = reranker.rerank(QUERY, [document], long_document_strategy="mean", **options)
    [max_row] = reranker.rerank(QUERY, [document], **options)
    assert mean_row.num_windows == max_row.num_windows > 1
    assert mean_row.score <= max_row.score + 1e-6


def test_token_counts_and_truncation_flags_match_the_tokenizer(reranker, tokenizer, make_text):
    documents = [make_text(n) for n in (3, 300, 900)]
    counts = [len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in documents]
    rows = sorted(reranker.rerank(QUERY, documents, max_length=256, long_document_strategy="truncate"),
                  key=lambda r: r.index)
    budget = 256 - len(tokenizer(QUERY, add_special_tokens=False)["input_ids"]) - 3
    assert [r.num_tokens for r in rows] == counts
    assert [r.truncated for r in rows] == [c > budget for c in counts]
    assert all(r.num_windows == 1 for r in rows)
    windowed = sorted(reranker.rerank(QUERY, documents, max_length=256), key=lambda r: r.index)
    assert not any(r.truncated for r in windowed)
    assert [r.num_windows > 1 for r in windowed] == [c > budget for c in counts]


def test_truncate_matches_sentence_transformers_at_the_same_max_length(tiny_checkpoint, make_text):
    documents = [make_text(n) for n in (20, 400, 1200)]
    model = CrossEncoder(str(tiny_checkpoint), device="cpu", max_length=256)
    expected = model.predict([(QUERY, d) for d in documents], activation_fn=torch.nn.Identity())
    engine = Reranker(tiny_checkpoint, device="cpu", dtype="float32", max_length=256,
                      long_document_strategy="truncate")
    np.testing.assert_allclose(engine.score(QUERY, documents), expected, atol=1e-4)


def test_an_oversized_query_is_an_error_not_a_silent_cut(reranker, make_text):
    with pytest.raises(ValueError, match=r"query is \d+ tokens long, but a query may use at most half"):
        reranker.score(make_text(400), ["document"], max_length=512)


def test_overlap_must_leave_room(reranker, tiny_checkpoint, words):
    message = r"window_overlap must be smaller than half of max_length \(64\), but got 200"
    with pytest.raises(ValueError, match=message):  # before any text is read
        reranker.score(QUERY, [], max_length=128, window_overlap=200)
    with pytest.raises(ValueError, match=message):  # at construction, not when a long document arrives
        Reranker(tiny_checkpoint, device="cpu", max_length=128, window_overlap=200)


def test_default_overlap_fits_a_small_window(tiny_checkpoint, words):
    """The default overlap (128) would not fit a 128-token window: it shrinks to a quarter of the window."""
    engine = Reranker(tiny_checkpoint, device="cpu", dtype="float32", max_length=128)
    [row] = engine.rerank(QUERY, [" ".join(words[:1000])])
    budget = 128 - 2 - 3  # two query tokens, three special tokens
    assert row.num_windows == len(window_spans(1000, budget, "max", 32)) and not row.truncated


@pytest.mark.parametrize("num_tokens", [101, 150, 1000, 4097, 20_000, 32_768])
@pytest.mark.parametrize(("budget", "overlap"), [(100, 0), (100, 20), (7990, 128)])
def test_window_layout_covers_everything_with_the_fewest_windows(num_tokens, budget, overlap):
    spans = window_spans(num_tokens, budget, "max", overlap)
    assert spans[0][0] == 0 and spans[-1][1] == num_tokens
    assert all(0 < end - start <= budget for start, end in spans)
    assert all(prev_end - start >= overlap for (_, prev_end), (start, _) in itertools.pairwise(spans))
    if num_tokens <= budget:
        assert spans == [(0, num_tokens)]
        return
    assert len(spans) == -(-(num_tokens - overlap) // (budget - overlap))
    assert window_spans(num_tokens, budget, "truncate", overlap) == [(0, budget)]
