"""Score fusion: alpha tuned on dev queries only (never on the evaluated ones), reported beside retrieval and
reranking, and accepted by the adapters."""

from __future__ import annotations

import json
import random

import pytest
from ettin_rerank.cli import main
from ettin_rerank.evaluation.fusion import FusionQuery, tune_alpha
from ettin_rerank.results import fuse, minmax


def test_minmax_and_fuse():
    assert minmax([2.0, 4.0, 3.0]) == [0.0, 1.0, 0.5]
    assert minmax([5.0, 5.0]) == [0.5, 0.5]
    assert minmax([1.0, float("nan"), 3.0]) == [0.0, 0.0, 1.0]
    assert fuse([0.0, 10.0], [5.0, 0.0], 0.75) == [0.25, 0.75]
    with pytest.raises(ValueError, match="between 0 and 1"):
        fuse([1.0], [1.0], 1.5)


def test_tune_alpha_finds_the_useful_mix():
    """The relevant document is second by the retriever and by the reranker, first by their sum."""
    queries = {}
    for q in range(20):
        retrieval = {"a": 1.0, "rel": 0.83, "b": 0.0}
        rerank = {"a": 0.0, "rel": 0.83, "b": 1.0}
        queries[f"q{q}"] = FusionQuery({"rel": 1}, retrieval, rerank)
    alpha, ndcg = tune_alpha(queries)  # "rel" is first exactly when 0.17 < alpha < 0.83
    assert 0.2 <= alpha <= 0.8 and ndcg == pytest.approx(1.0)
    assert tune_alpha({"q": FusionQuery({"a": 1}, {"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0})})[0] == 1.0


def _beir(folder, test_grade):
    rng = random.Random(0)
    (folder / "qrels").mkdir(parents=True)
    topics = [f"topic{t}" for t in range(10)]
    corpus = [{"_id": f"{t}-{d}", "title": topic, "text": f"{topic} " * rng.randint(2, 12)}
              for t, topic in enumerate(topics) for d in range(4)]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in corpus))
    (folder / "queries.jsonl").write_text("\n".join(json.dumps({"_id": f"q{t}", "text": f"about {topic}"})
                                                   for t, topic in enumerate(topics)))
    (folder / "qrels" / "train.tsv").write_text("\n".join(f"q{t}\t{t}-1\t1" for t in range(5)))
    (folder / "qrels" / "test.tsv").write_text("\n".join(f"q{t}\t{t}-{test_grade}\t1" for t in range(5, 10)))
    return folder


def _alpha(folder, checkpoint, out, capsys):
    assert main(["eval", str(folder), "--model", str(checkpoint), "--top-k", "4", "--fusion", "--output",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fused, alpha=" in printed and "tuned on 5 train queries" in printed
    [model] = json.loads((out / "eval.json").read_text())["models"]
    return model["fusion"]


def test_eval_fusion_tunes_on_dev_queries_only(tmp_path, tiny_checkpoint, capsys):
    first = _alpha(_beir(tmp_path / "a", test_grade=0), tiny_checkpoint, tmp_path / "oa", capsys)
    second = _alpha(_beir(tmp_path / "b", test_grade=3), tiny_checkpoint, tmp_path / "ob", capsys)
    assert first["alpha"] == second["alpha"], "alpha moved when only the evaluated queries' judgements changed"
    assert first["dev_split"] == "train" and set(first["metrics"]) == {"NDCG@10", "Recall@4", "MRR@10"}
    assert first["metrics"] != second["metrics"]
    assert main(["eval", str(tmp_path / "a"), "--model", str(tiny_checkpoint), "--fusion", "--fusion-split", "test",
                 "--output", str(tmp_path / "oc")]) == 2
    assert "would leak the test queries" in capsys.readouterr().err


def test_adapters_accept_the_tuned_weight(engine_options, reranker):
    from haystack import Document
    from haystack_integrations.components.rankers.ettin import EttinRanker
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.ettin_rerank import EttinRerank

    texts = ["gene study results", "protein cell", "pasta water", "clinical trial"]
    retrieval = [0.9, 0.1, 0.5, 0.3]
    expected = fuse(retrieval, reranker.score("gene study", texts), 0.6)
    order = sorted(range(4), key=lambda i: -expected[i])
    nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i)), score=s)
             for i, (t, s) in enumerate(zip(texts, retrieval, strict=True))]
    out = EttinRerank(top_n=4, fusion_weight=0.6, **engine_options).postprocess_nodes(nodes, query_str="gene study")
    assert [int(n.node.node_id) for n in out] == order
    assert [n.score for n in out] == pytest.approx([expected[i] for i in order])
    documents = [Document(id=str(i), content=t, score=s) for i, (t, s) in enumerate(zip(texts, retrieval, strict=True))]
    ranker = EttinRanker(model=engine_options["model"], dtype="float32", fusion_weight=0.6, top_k=4)
    assert [int(d.id) for d in ranker.run(query="gene study", documents=documents)["documents"]] == order
    with pytest.raises(ValueError, match=r"documents\[0\] has none"):
        ranker.run(query="gene study", documents=[Document(content="no score")])
    with pytest.raises(ValueError, match="fusion_weight must be a number between 0 and 1"):
        EttinRanker(fusion_weight=2)
