"""Parity: the engine computes the same function as Sentence Transformers' CrossEncoder on the same folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ettin_rerank import Reranker
from sentence_transformers import CrossEncoder


def _reference(folder, pairs, max_length=None):
    model = CrossEncoder(str(folder), device="cpu", max_length=max_length)
    return model.predict(pairs, batch_size=4, activation_fn=torch.nn.Identity())


@pytest.mark.parametrize(
    ("size", "layers"),
    [("17m", 4), ("17m", None), ("32m", 4), ("68m", 3)],
    ids=["17m-4layers", "17m-full", "32m-4layers", "68m-3layers"],
)
def test_ettin_scores_match_sentence_transformers(checkpoint_factory, make_text, size, layers):
    folder = checkpoint_factory(size, layers=layers)
    query = "which protein drives the immune response"
    # mixed lengths, one very long document (about 2,500 tokens: several local-attention blocks)
    documents = [make_text(n) for n in (1, 5, 40, 63, 64, 65, 130, 200, 500, 2500, 17)]
    expected = _reference(folder, [(query, d) for d in documents])
    engine = Reranker(folder, device="cpu", dtype="float32", batch_tokens=2048)
    got = np.array(engine.score(query, documents))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert list(np.argsort(-got)) == list(np.argsort(-expected))
    assert np.ptp(expected) > 1e-3, "scores too close together for the ranking check to mean anything"


def test_classic_sequence_classification_matches(classic_checkpoint, make_text):
    query = "what causes the disease"
    documents = [make_text(n) for n in (3, 30, 100, 300, 12)]
    expected = _reference(classic_checkpoint, [(query, d) for d in documents])
    got = np.array(Reranker(classic_checkpoint, device="cpu", dtype="float32").score(query, documents))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert list(np.argsort(-got)) == list(np.argsort(-expected))


def test_parity_at_a_shorter_max_length(tiny_checkpoint, make_text):
    query = "gene expression in mouse brain"
    documents = [make_text(n) for n in (10, 100, 200)]
    expected = _reference(tiny_checkpoint, [(query, d) for d in documents], max_length=256)
    got = Reranker(tiny_checkpoint, device="cpu", dtype="float32", max_length=256).score(query, documents)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_score_pairs_with_many_queries_equals_per_query_calls(reranker, make_text):
    queries = ["first query about genes", "second query on clinical trials", "third"]
    documents = [make_text(n) for n in (20, 80, 150, 7)]
    pairs = [(q, d) for q in queries for d in documents]
    together = reranker.score_pairs(pairs)
    separate = [s for q in queries for s in reranker.score(q, documents)]
    np.testing.assert_allclose(together, separate, atol=1e-5)
    batched = reranker.rerank_many(queries, [documents] * 3)
    for q, rows in zip(queries, batched, strict=True):
        assert [r.index for r in rows] == [r.index for r in reranker.rerank(q, documents)]


def test_batch_budget_does_not_change_scores(tiny_checkpoint, make_text):
    documents = [make_text(n) for n in range(5, 400, 37)]
    small = Reranker(tiny_checkpoint, device="cpu", dtype="float32", batch_tokens=300).score("q x", documents)
    large = Reranker(tiny_checkpoint, device="cpu", dtype="float32", batch_tokens=100_000).score("q x", documents)
    np.testing.assert_allclose(small, large, atol=1e-5)


def test_bfloat16_scores_stay_close_and_keep_the_ranking_mostly(tiny_checkpoint, make_text):
    documents = [make_text(n) for n in (10, 50, 120, 300, 600)]
    exact = np.array(Reranker(tiny_checkpoint, device="cpu", dtype="float32").score("immune therapy", documents))
    fast_engine = Reranker(tiny_checkpoint, device="cpu", dtype="bfloat16")
    assert fast_engine.dtype == torch.bfloat16
    fast = np.array(fast_engine.score("immune therapy", documents))
    assert np.abs(fast - exact).max() < 0.1
    assert fast.dtype == np.float64 or fast.dtype == np.float32


def test_sigmoid_activation(reranker, make_text):
    documents = [make_text(n) for n in (10, 40)]
    raw = np.array(reranker.score("q", documents))
    squashed = np.array(reranker.score("q", documents, activation="sigmoid"))
    np.testing.assert_allclose(squashed, 1 / (1 + np.exp(-raw)), atol=1e-6)


def test_rerank_is_sorted_and_indexes_inputs(reranker, make_text):
    documents = [make_text(n) for n in (10, 200, 40, 90, 3)]
    scores = reranker.score("a query", documents)
    rows = reranker.rerank("a query", documents, return_documents=True)
    assert [r.index for r in rows] == sorted(range(5), key=lambda i: -scores[i])
    assert all(r.document == documents[r.index] for r in rows)
    # the thread governor may run two calls on different thread counts: sums in another order, ~1e-7 apart
    np.testing.assert_allclose([r.score for r in rows], sorted(scores, reverse=True), rtol=0, atol=1e-5)
    top = reranker.rerank("a query", documents, top_k=2)
    assert [r.index for r in top] == [r.index for r in rows[:2]]
    assert len(reranker.rerank("a query", documents, top_k=50)) == 5


@pytest.fixture(scope="module", params=["cls", "mean"])
def modernbert_classifier(request, tmp_path_factory, tokenizer_folder):
    """A ModernBertForSequenceClassification checkpoint (the gte-reranker-modernbert / granite-reranker layout),
    random weights, pooling by ``cls`` or ``mean``."""
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForSequenceClassification

    folder = tmp_path_factory.mktemp(f"modernbert-cls-{request.param}")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    tokenizer.model_max_length = 8192
    torch.manual_seed(3)
    config = ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=192, num_hidden_layers=4,
        num_attention_heads=4, global_attn_every_n_layers=3, local_attention=128, max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id, num_labels=1,
        classifier_pooling=request.param, initializer_range=0.1,
    )
    ModernBertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_modernbert_sequence_classifiers_run_packed_with_the_same_scores(modernbert_classifier, make_text):
    from ettin_rerank.engine.scorers import PackedModernBertScorer

    query = "which gene drives the immune response"
    documents = [make_text(n) for n in (2, 30, 64, 65, 129, 300, 900)]
    expected = _reference(modernbert_classifier, [(query, d) for d in documents])
    engine = Reranker(modernbert_classifier, device="cpu", dtype="float32")
    assert isinstance(engine._scorer, PackedModernBertScorer), "this layout should run on packed tokens"
    got = np.array(engine.score(query, documents))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert list(np.argsort(-got)) == list(np.argsort(-expected)) and np.ptp(expected) > 1e-3
