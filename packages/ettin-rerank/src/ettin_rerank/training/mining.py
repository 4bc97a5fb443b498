"""Training rows from a BEIR folder: candidates from the user's retriever, hard negatives mined with Sentence
Transformers' ``mine_hard_negatives`` (training queries only), random negatives beside them."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

from ettin_rerank.evaluation.beir import BeirData, Qrels, load_beir, load_judged_queries
from ettin_rerank.evaluation.compare import search_corpus
from ettin_rerank.training.data import Example, TrainingData, add_random_negatives

if TYPE_CHECKING:
    from ettin_rerank.evaluation.retrieval import QdrantRetriever

logger = logging.getLogger(__name__)


def prepare_beir(
    folder: str | Path,
    retriever: QdrantRetriever,
    *,
    split: str = "train",
    heldout_split: str | None = None,
    holdout: float = 0.1,
    candidates: int = 20,
    negatives: int = 5,
    random_negatives: int = 1,
    mine: bool = True,
    seed: int = 12,
) -> TrainingData:
    """Rows for training and held-out evaluation from a BEIR folder.

    Held-out queries are ``heldout_split``'s (``dev``, say; any query also in ``split`` is dropped from training),
    else a ``holdout`` fraction of ``split``'s queries. Every query gets the retriever's top ``candidates``
    (labelled from the qrels, unjudged = 0). With ``mine``, training rows are the positives plus
    ``mine_hard_negatives`` (``relative_margin=0.05``: candidates scoring too close to the positive are likely
    unjudged positives) plus ``random_negatives`` per query; without it (distillation), the candidates themselves.
    """
    folder = Path(folder)
    data = load_beir(folder, split)
    heldout_qrels: Qrels
    if heldout_split is not None:
        held = load_judged_queries(folder, heldout_split)  # the corpus is read once, with the training split
        heldout_qrels = held.qrels
        train_ids = [q for q in data.queries if q not in held.qrels]
        queries = {**data.queries, **held.queries}
    else:
        ids = sorted(data.queries)
        random.Random(seed).shuffle(ids)
        cut = max(1, round(len(ids) * holdout))
        heldout_qrels = {q: data.qrels[q] for q in ids[:cut]}
        train_ids = ids[cut:]
        queries = data.queries
    if not train_ids:
        msg = f"{folder}: no training queries are left after holding out {len(heldout_qrels)} for evaluation"
        raise ValueError(msg)
    heldout_ids = list(heldout_qrels)
    by_query, _ = search_corpus(data, retriever, {q: queries[q] for q in [*heldout_ids, *train_ids]}, candidates)
    doc_ids = list(data.corpus)

    def labelled(qid: str, qrels: Qrels) -> list[Example]:
        return [Example(queries[qid], data.document_text(h.doc_id), float(qrels.get(qid, {}).get(h.doc_id, 0)))
                for h in by_query[qid]]

    heldout = [row for qid in heldout_ids for row in labelled(qid, heldout_qrels)]
    pool = [data.document_text(d) for d in doc_ids]
    if mine:
        train = _mined(data, train_ids, retriever, candidates, negatives)
        notes = {"objective_hint": "labels", "mined_rows": len(train)}
    else:
        train = [row for qid in train_ids for row in labelled(qid, data.qrels)]
        notes = {"objective_hint": "candidates"}
    train = add_random_negatives(train, pool, random_negatives, seed)
    notes |= {"heldout_qrels": {queries[q]: {data.document_text(d): g for d, g in judged.items() if d in data.corpus}
                                for q, judged in heldout_qrels.items()},
              "heldout_retrieval": {queries[q]: [(data.document_text(h.doc_id), h.score) for h in by_query[q]]
                                    for q in heldout_ids}}
    return TrainingData(layout="beir", train=train, heldout=heldout, documents=pool, notes=notes)


def _mined(data: BeirData, train_ids: list[str], retriever: QdrantRetriever, candidates: int,
           negatives: int) -> list[Example]:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    pairs = [(data.queries[q], data.document_text(d)) for q in train_ids for d, grade in data.qrels[q].items()
             if grade > 0 and d in data.corpus]
    if not pairs:
        msg = "the training queries have no judged positive that is in the corpus"
        raise ValueError(msg)
    dataset = Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [d for _, d in pairs]})
    mined = mine_hard_negatives(
        dataset, retriever.embedder, corpus=[data.document_text(d) for d in data.corpus], num_negatives=negatives,
        range_min=0, range_max=candidates, relative_margin=0.05, sampling_strategy="top",
        output_format="labeled-pair", batch_size=64, verbose=False,
    )
    logger.info("mined %d labelled pairs for %d (query, positive) pairs", len(mined), len(pairs))
    columns = mined.column_names  # query, passage/answer, label
    return [Example(row[columns[0]], row[columns[1]], float(row["label"])) for row in mined]
