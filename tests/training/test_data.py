"""Every input layout normalises to the same rows; held-out queries never reach training; bad rows are named."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("datasets", reason="the train extra is not installed")

from ettin_rerank.inputs import InputError
from ettin_rerank.training.data import (
    Example,
    add_random_negatives,
    detect_layout,
    load_examples,
    split_heldout,
)


def _write(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


EXPECTED = [Example("q", "good", 1.0), Example("q", "bad one", 0.0), Example("q", "bad two", 0.0)]


@pytest.mark.parametrize(
    ("layout", "record"),
    [
        ("groups", {"query": "q", "positive": "good", "negatives": ["bad one", "bad two"]}),
        ("groups", {"query": "q", "positives": ["good"], "negatives": ["bad one", "bad two"]}),
        ("flag", {"query": "q", "pos": ["good"], "neg": ["bad one", "bad two"]}),
        ("cohere", {"query": "q", "relevant_passages": ["good"], "hard_negatives": ["bad one", "bad two"]}),
    ],
)
def test_group_layouts_become_labelled_pairs(tmp_path, layout, record):
    path = _write(tmp_path / "data.jsonl", [record])
    assert detect_layout(path) == layout
    assert load_examples(path) == (layout, EXPECTED)


def test_pairs_with_labels_and_with_teacher_scores(tmp_path):
    labelled = _write(tmp_path / "l.jsonl", [{"query": "q", "document": "d", "label": 2}])
    scored = _write(tmp_path / "s.jsonl", [{"query": "q", "document": "d", "score": 7.5}])
    assert load_examples(labelled) == ("pairs", [Example("q", "d", 2.0, None)])
    assert load_examples(scored) == ("pairs", [Example("q", "d", None, 7.5)])


def test_flag_teacher_scores_follow_their_documents(tmp_path):
    path = _write(tmp_path / "f.jsonl", [{"query": "q", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [9.0],
                                          "neg_scores": [-1.0, -3.0]}])
    _, rows = load_examples(path)
    assert [(r.document, r.label, r.score) for r in rows] == [("p", 1.0, 9.0), ("n1", 0.0, -1.0), ("n2", 0.0, -3.0)]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"query": "q", "document": "d"}], r"d\.jsonl:1: needs a number 'label'"),
        ([{"query": "q", "document": "d", "label": 1}, {"query": " ", "document": "d", "label": 1}],
         r"d\.jsonl:2: 'query' must be non-empty text \(blank\)"),
        ([{"query": "q", "pos": "not a list", "neg": []}], r"d\.jsonl:1: 'pos' must be a non-empty list of strings"),
        ([{"query": "q", "pos": ["p"], "neg": ["n"], "neg_scores": [1, 2]}], r"'neg_scores' must be a list of 1"),
        ([{"text": "what is this"}], r"d\.jsonl:1: cannot tell the layout"),
        ([{"query": "q", "document": "d", "label": 10**400}], r"d\.jsonl:1: 'label' must be a finite number"),
        ([{"query": "q", "pos": ["p"], "neg": ["n"], "neg_scores": [-(10**400)]}],
         r"d\.jsonl:1: 'neg_scores' must be a list of 1 finite numbers"),
    ],
)
def test_bad_rows_are_named(tmp_path, records, message):
    with pytest.raises(InputError, match=message):
        load_examples(_write(tmp_path / "d.jsonl", records))


def test_heldout_is_query_disjoint_and_random_negatives_are_new(tmp_path):
    rows = [Example(f"q{i}", f"doc {i} {j}", float(j == 0)) for i in range(10) for j in range(3)]
    train, heldout = split_heldout(rows, 0.2, seed=1)
    assert {r.query for r in train}.isdisjoint({r.query for r in heldout})
    assert len({r.query for r in heldout}) == 2 and len(train) + len(heldout) == len(rows)
    pool = [r.document for r in rows]
    extended = add_random_negatives(train, pool, 2, seed=1)
    added = extended[len(train):]
    assert len(added) == 2 * len({r.query for r in train}) and all(r.label == 0.0 for r in added)
    for row in added:
        assert row.document not in {r.document for r in train if r.query == row.query}
    with pytest.raises(InputError, match="at least 2 are needed"):
        split_heldout([Example("q", "d", 1.0)], 0.1, seed=1)
