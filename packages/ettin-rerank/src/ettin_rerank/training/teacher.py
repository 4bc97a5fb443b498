"""Teacher scores for distillation: every (query, candidate) scored once by any model the engine loads, cached in
a JSONL file as it goes, so a stopped run resumes where it was."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ettin_rerank.args import EngineArgs
from ettin_rerank.training.data import Example

logger = logging.getLogger(__name__)

CHUNK = 256
"""Pairs scored between two writes of the cache."""


def pair_key(query: str, document: str) -> str:
    return hashlib.sha1(f"{query}\x00{document}".encode(), usedforsecurity=False).hexdigest()[:20]


def teacher_scores(rows: Sequence[Example], teacher: str | EngineArgs, cache: str | Path,
                   **engine_args: Any) -> list[Example]:
    """``rows`` with ``score`` set to the teacher's raw logit; pairs already in ``cache`` are not scored again.

    ``teacher`` is a model (with ``engine_args``, the other :class:`~ettin_rerank.args.EngineArgs` fields) or an
    ``EngineArgs``. The cache's first line names the teacher; a cache of another teacher is an error, not a silent
    mix.
    """
    teacher = teacher if isinstance(teacher, EngineArgs) else EngineArgs(model=teacher, **engine_args)
    cache = Path(cache)
    name = str(teacher.model)
    known: dict[str, float] = {}
    if cache.exists():
        lines = cache.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else {}
        if header.get("teacher") != name:
            msg = f"{cache} holds scores of teacher {header.get('teacher')!r}, not {name!r}; give another cache"
            raise ValueError(msg)
        for line in lines[1:]:
            record = json.loads(line)
            known[record["key"]] = record["score"]
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"teacher": name}) + "\n", encoding="utf-8")
    missing = list(dict.fromkeys(pair_key(r.query, r.document) for r in rows
                                 if pair_key(r.query, r.document) not in known))
    logger.info("teacher %s: %d pairs cached, %d to score", name, len(known), len(missing))
    if missing:
        from ettin_rerank.engine.reranker import Reranker

        pending = {pair_key(r.query, r.document): (r.query, r.document) for r in rows}
        with Reranker.from_args(teacher, show_progress_bar=False) as engine, \
                cache.open("a", encoding="utf-8") as out, tqdm(total=len(missing), desc="Teacher", unit="pair") as bar:
            for start in range(0, len(missing), CHUNK):
                keys = missing[start : start + CHUNK]
                scores = engine.score_pairs([pending[k] for k in keys])
                for key, score in zip(keys, scores, strict=True):
                    known[key] = score
                    out.write(json.dumps({"key": key, "score": score}) + "\n")
                out.flush()
                bar.update(len(keys))
    return [Example(r.query, r.document, r.label, known[pair_key(r.query, r.document)]) for r in rows]
