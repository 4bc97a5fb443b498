"""BEIR-layout data sets as they exist in the wild, read strictly: every problem is one error naming file, line
and field, found before any embedding starts.

Accepted: ``corpus.jsonl`` rows with ``_id`` (string or number), ``text`` and an optional ``title`` (may be absent
or null); ``queries.jsonl`` rows with ``_id`` and ``text``; ``qrels/<split>.tsv`` with or without the BEIR header,
with 3 columns (query, document, relevance) or TREC's 4 (query, iteration, document, relevance), relevance as an
integer or a whole number written ``1.0``; blank lines anywhere. Duplicate corpus ids are an error (or, with
``allow_duplicates``, the first copy is kept and the count is logged). Judged queries that ``queries.jsonl`` lacks
(public leaderboards ship qrels for more queries than they publish) are left out with a counted warning, as
those leaderboards' own evaluators do (or, with ``strict``, are an error).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ettin_rerank.inputs import InputError, jsonl_records, numbered_lines, read_text
from ettin_rerank.validation import has_text

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]


@dataclass
class BeirData:
    """A BEIR-layout data set: corpus, the queries of one split, and their relevance judgements."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: Qrels
    judged_without_text: int = 0
    """Queries the qrels judge that ``queries.jsonl`` does not hold (left out)."""

    def document_text(self, doc_id: str) -> str:
        doc = self.corpus[doc_id]
        return f"{doc['title']} {doc['text']}".strip()


@dataclass(frozen=True)
class JudgedQueries:
    """The judged queries of one split that have a text, their judgements, and how many judged ones had none."""

    queries: dict[str, str]
    qrels: Qrels
    without_text: int = 0


def load_beir(folder: str | Path, split: str = "test", max_queries: int | None = None, *,
              allow_duplicates: bool = False, strict: bool = False) -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``; keep the judged queries that have a
    text (the first ``max_queries`` of them, in qrels order).

    Judged queries missing from ``queries.jsonl`` are left out and counted (a warning, and
    :attr:`BeirData.judged_without_text`); with ``strict`` they are an error.

    Raises:
        FileNotFoundError: the folder is not a BEIR-layout folder (names the missing file).
        InputError: a row cannot be read (names file, line and field), a duplicate corpus id, a judged query
            whose text is blank, judged queries without text under ``strict``, an empty corpus, or no judged
            query with a text.
    """
    folder = Path(folder)
    _check_layout(folder, ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"), max_queries)
    corpus = _read_corpus(folder / "corpus.jsonl", allow_duplicates)
    judged = _judged_queries(folder, split, max_queries, strict)
    return BeirData(corpus=corpus, queries=judged.queries, qrels=judged.qrels,
                    judged_without_text=judged.without_text)


def load_judged_queries(folder: str | Path, split: str = "test", max_queries: int | None = None, *,
                        strict: bool = False) -> JudgedQueries:
    """:func:`load_beir` without the corpus: the judged queries of ``split`` that have a text, read and checked
    the same way (for a second split of a folder whose corpus is already loaded).

    Raises:
        FileNotFoundError: ``queries.jsonl`` or ``qrels/<split>.tsv`` is missing.
        InputError: as :func:`load_beir`, for the queries and judgements.
    """
    folder = Path(folder)
    _check_layout(folder, ("queries.jsonl", f"qrels/{split}.tsv"), max_queries)
    return _judged_queries(folder, split, max_queries, strict)


def _check_layout(folder: Path, names: tuple[str, ...], max_queries: int | None) -> None:
    for name in names:
        if not (folder / name).is_file():
            msg = f"{folder} is not a BEIR-layout folder: {name} is missing"
            raise FileNotFoundError(msg)
    if max_queries is not None and max_queries <= 0:
        msg = f"max_queries must be > 0, but got {max_queries}"
        raise ValueError(msg)


def _judged_queries(folder: Path, split: str, max_queries: int | None, strict: bool) -> JudgedQueries:
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = _read_qrels(qrels_path)
    queries = _read_queries(folder / "queries.jsonl", set(qrels))
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        some = f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        if len(missing) == len(qrels):
            msg = (f"{qrels_path} judges {len(qrels)} quer(ies), none of which queries.jsonl holds ({some}); do the "
                   "two files belong to the same data set?")
            raise InputError(msg)
        if strict:
            msg = (f"{qrels_path} judges {len(missing)} quer(ies) that queries.jsonl does not hold ({some}); "
                   f"without --strict they are left out and the other {len(qrels) - len(missing)} evaluated")
            raise InputError(msg)
        logger.warning("%s judges %d quer(ies) that queries.jsonl does not hold (%s): left out, %d evaluated "
                       "(--strict refuses such a folder)", qrels_path, len(missing), some, len(qrels) - len(missing))
    kept = [qid for qid in qrels if qid in queries][:max_queries]
    return JudgedQueries({qid: queries[qid] for qid in kept}, {qid: qrels[qid] for qid in kept}, len(missing))


def _read_corpus(path: Path, allow_duplicates: bool) -> dict[str, dict[str, str]]:
    corpus: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    duplicates = 0
    for number, row in jsonl_records(read_text(path), str(path)):
        doc_id = _identifier(row, path, number)
        text = _string(row, "text", path, number)
        title = row.get("title")
        if title is not None and not isinstance(title, str):
            msg = f"{path}:{number}: 'title' must be a string or null, got {type(title).__name__}"
            raise InputError(msg)
        if doc_id in corpus:
            if not allow_duplicates:
                msg = (f"{path}:{number}: duplicate _id {doc_id!r} (first on line {first_line[doc_id]}); "
                       "remove the copies, or pass --allow-duplicates to keep the first")
                raise InputError(msg)
            duplicates += 1
            continue
        first_line[doc_id] = number
        corpus[doc_id] = {"title": title or "", "text": text}
    if duplicates:
        logger.warning("%s: %d duplicate corpus id(s) skipped (the first copy of each was kept)", path, duplicates)
    if not corpus:
        msg = f"{path} holds no documents"
        raise InputError(msg)
    return corpus


def _read_queries(path: Path, wanted: set[str]) -> dict[str, str]:
    queries = {}
    for number, row in jsonl_records(read_text(path), str(path)):
        query_id = _identifier(row, path, number)
        if query_id not in wanted:
            continue
        text = _string(row, "text", path, number)
        if not has_text(text):
            msg = f"{path}:{number}: query {query_id!r} is judged but its 'text' is blank"
            raise InputError(msg)
        queries[query_id] = text
    return queries


def _read_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    for number, line in numbered_lines(read_text(path)):
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) not in (3, 4):
            msg = (f"{path}:{number}: expected 3 columns (query, document, relevance) or 4 (query, iteration, "
                   f"document, relevance), got {len(fields)}")
            raise InputError(msg)
        query_id, doc_id, grade = fields[0], fields[-2], fields[-1]
        relevance = _relevance(grade.strip())
        if relevance is None:
            if number == 1 and not qrels:  # the BEIR header: query-id corpus-id score
                continue
            msg = f"{path}:{number}: relevance must be a whole number such as 1 or 1.0, got {grade.strip()!r}"
            raise InputError(msg)
        qrels.setdefault(query_id.strip(), {})[doc_id.strip()] = relevance
    if not qrels:
        msg = f"{path} holds no judgements"
        raise InputError(msg)
    return qrels


def _relevance(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _identifier(row: dict[str, Any], path: Path, number: int) -> str:
    value = row.get("_id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        got = "it is missing" if value is None else f"got {type(value).__name__}"
        msg = f"{path}:{number}: '_id' must be a string or an integer ({got})"
        raise InputError(msg)
    return str(value)


def _string(row: dict[str, Any], field: str, path: Path, number: int) -> str:
    value = row.get(field)
    if not isinstance(value, str):
        got = "it is missing" if value is None else f"got {type(value).__name__}"
        msg = f"{path}:{number}: '{field}' must be a string ({got})"
        raise InputError(msg)
    return value
