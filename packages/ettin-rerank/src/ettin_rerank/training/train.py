"""``train(config)``: adapt a reranker to the user's data with Sentence Transformers' ``CrossEncoderTrainer``.

The published Ettin recipe by default when scores are present or a teacher is given (pointwise ``MSELoss`` on raw
teacher logits, Identity activation), ``BinaryCrossEntropyLoss`` for binary labels (``pos_weight`` = negatives per
positive), ``LambdaLoss`` for graded lists. Always measured: the base and the result are evaluated on held-out,
query-disjoint data with the eval harness; the best checkpoint is kept (early stopping); the verdict comes with a
paired confidence interval; the original model is never overwritten.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ettin_rerank.args import EngineArgs
from ettin_rerank.outputs import check_apart, check_output_folder, staged
from ettin_rerank.training.data import Example, TrainingData
from ettin_rerank.training.report import Heldout, Verdict, doc_key, evaluate, heldout_from_scores, heldout_of, verdict

logger = logging.getLogger(__name__)

OBJECTIVES = ("auto", "distill", "bce", "lambda")
LEARNING_RATES = {"17m": 3e-5, "32m": 2e-5, "68m": 1e-5, "150m": 5e-6, "400m": 3e-6, "1b": 1e-6}
"""Continued training from the released rerankers: about a fifth to a tenth of the recipe's pre-training rates."""
DEFAULT_LEARNING_RATE = 2e-5
RECORD_FILE = "ettin_training.json"


@dataclass
class TrainConfig:
    """A training run (the ``ettin-rerank train`` options).

    Attributes:
        data: BEIR folder or JSONL file (pairs, groups, FlagEmbedding or Cohere layouts).
        base: The reranker to start from (Ettin size, folder or hub id); never modified.
        output: Folder for the trained model: never the base, a data file, nor around or inside one; new or empty,
            or (with ``overwrite``) a folder ``train`` wrote before (its ``ettin_training.json``), replaced only
            once the new model is complete.
        objective: ``auto`` (scores or teacher: ``distill``; binary labels: ``bce``; graded: ``lambda``).
        teacher: A model the engine loads, to score every (query, candidate) once (cached in ``teacher_cache``).
        retriever: Embedding model for candidates and mining on BEIR data (default: the eval harness's).
        split, heldout_split, holdout: Training qrels split; held-out split (else a fraction of the queries).
        candidates, negatives, random_negatives: Retrieved candidates per query, mined hard negatives per
            positive, random negatives per query.
        epochs, max_steps, learning_rate, batch_size, max_length: Trainer settings (``learning_rate=None``: by size).
        early_stopping: Evaluations without improvement before stopping (the best checkpoint is kept anyway).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32`` or ``bf16``.
        dry_run: Count the data and time two steps, then stop.
    """

    data: str
    base: str = "17m"
    output: str = "ettin-reranker-finetuned"
    objective: str = "auto"
    teacher: str | None = None
    teacher_cache: str | None = None
    retriever: str | None = None
    split: str = "train"
    heldout_split: str | None = None
    holdout: float = 0.1
    candidates: int = 20
    negatives: int = 5
    random_negatives: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float | None = None
    batch_size: int = 16
    max_length: int = 512
    early_stopping: int = 3
    precision: str = "auto"
    seed: int = 12
    device: str | None = None
    overwrite: bool = False
    dry_run: bool = False
    layout: str = "auto"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            msg = f"objective must be one of {', '.join(OBJECTIVES)}, but got {self.objective!r}"
            raise ValueError(msg)
        if self.precision not in ("auto", "fp32", "bf16"):
            msg = f"precision must be auto, fp32 or bf16, but got {self.precision!r}"
            raise ValueError(msg)
        if not 0 < self.holdout < 1:
            msg = f"holdout must be between 0 and 1, but got {self.holdout}"
            raise ValueError(msg)
        for name in ("batch_size", "max_length", "candidates"):
            if getattr(self, name) <= 0:
                msg = f"{name} must be > 0, but got {getattr(self, name)}"
                raise ValueError(msg)

    @property
    def engine_args(self) -> EngineArgs:
        """How the base model (and the teacher, with its ``model`` replaced) are loaded to score pairs."""
        return EngineArgs(model=self.base, device=self.device)


@dataclass
class TrainReport:
    """What a run did and measured."""

    output: str | None
    objective: str
    counts: dict[str, int]
    before: dict[str, Any]
    after: dict[str, Any] | None = None
    verdict: Verdict | None = None
    steps: int = 0
    seconds_per_step: float | None = None
    estimated_seconds: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    relevance: str = "labels"
    """Where held-out relevance came from: ``labels``, or ``teacher`` (its top documents, for unlabelled data)."""

    @property
    def best_step(self) -> int | None:
        """The step whose checkpoint was kept (best held-out NDCG@10 during training; the earliest on ties)."""
        best = max(self.evaluations, key=lambda e: e[1], default=None)
        return best[0] if best else None


def resolve_objective(config: TrainConfig, data: TrainingData) -> str:
    """``distill`` with scores or a teacher, ``lambda`` for graded labels, else ``bce``."""
    if config.objective != "auto":
        if config.objective == "distill" and not (data.has_scores or config.teacher):
            msg = "objective 'distill' needs teacher scores in the data or a --teacher"
            raise ValueError(msg)
        return config.objective
    if data.has_scores or config.teacher:
        return "distill"
    if any(e.label is None for e in data.train):
        msg = "some rows have neither a label nor a score: give labels, scores, or a --teacher"
        raise ValueError(msg)
    return "lambda" if data.graded else "bce"


def load_data(config: TrainConfig) -> TrainingData:
    """The training data of ``config``, held-out queries split off, teacher scores added when asked."""
    from ettin_rerank.training.data import add_random_negatives, detect_layout, load_examples, split_heldout

    layout = detect_layout(config.data) if config.layout == "auto" else config.layout
    if layout == "beir":
        from ettin_rerank.evaluation.retrieval import QdrantRetriever
        from ettin_rerank.training.mining import prepare_beir

        mine = config.teacher is None and config.objective in ("auto", "bce")
        data = prepare_beir(config.data, QdrantRetriever(config.retriever, collection="ettin-train"),
                            split=config.split, heldout_split=config.heldout_split, holdout=config.holdout,
                            candidates=config.candidates, negatives=config.negatives,
                            random_negatives=config.random_negatives, mine=mine, seed=config.seed)
    else:
        layout, rows = load_examples(config.data, layout)
        train, heldout = split_heldout(rows, config.holdout, config.seed)
        pool = sorted({r.document for r in rows})
        if all(r.score is None for r in train):
            train = add_random_negatives(train, pool, config.random_negatives, config.seed)
        data = TrainingData(layout=layout, train=train, heldout=heldout, documents=pool)
    if config.teacher is not None:
        from ettin_rerank.training.teacher import teacher_scores

        # Without held-out labels the teacher's ranking is what training is measured against: score those rows too,
        # in the same pass (one teacher load).
        unlabelled = not _has_relevant(heldout_of(data))
        rows = [*data.train, *data.heldout] if unlabelled else data.train
        cache = config.teacher_cache or str(Path(config.output).with_suffix(".teacher-scores.jsonl"))
        scored = teacher_scores(rows, replace(config.engine_args, model=config.teacher), cache)
        data.train = scored[: len(data.train)]
        if unlabelled:
            data.heldout = scored[len(data.train) :]
    return data


def _has_relevant(heldout: Heldout) -> bool:
    return any(grade > 0 for judged in heldout.qrels.values() for grade in judged.values())


def _heldout_teacher_scores(data: TrainingData) -> dict[tuple[str, str], float]:
    """The teacher's logit of every held-out pair (from the data, or scored with the training rows)."""
    if any(row.score is None for row in data.heldout):
        msg = "held-out rows have neither labels nor teacher scores: there is nothing to measure the training against"
        raise ValueError(msg)
    return {(row.query, row.document): float(row.score) for row in data.heldout}


def _loss(objective: str, model: Any, train: list[Example]) -> Any:
    import torch
    from sentence_transformers.cross_encoder import losses

    if objective == "distill":
        return losses.MSELoss(model, activation_fn=torch.nn.Identity())
    if objective == "lambda":
        return losses.LambdaLoss(model)
    positives = sum(1 for e in train if (e.label or 0) > 0)
    negatives = len(train) - positives
    weight = torch.tensor(negatives / positives) if positives else None
    return losses.BinaryCrossEntropyLoss(model, pos_weight=weight)


def _dataset(objective: str, train: list[Example]) -> Any:
    from datasets import Dataset

    if objective == "distill":
        return Dataset.from_dict({"query": [e.query for e in train], "document": [e.document for e in train],
                                  "score": [float(e.score) for e in train]})
    if objective == "bce":
        return Dataset.from_dict({"query": [e.query for e in train], "document": [e.document for e in train],
                                  "label": [float(e.label or 0) for e in train]})
    groups: dict[str, list[Example]] = {}
    for example in train:
        groups.setdefault(example.query, []).append(example)
    return Dataset.from_dict({"query": list(groups), "docs": [[e.document for e in g] for g in groups.values()],
                              "labels": [[float(e.label or 0) for e in g] for g in groups.values()]})


def _evaluator(data: TrainingData) -> Any:
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    samples: dict[str, dict[str, list[str]]] = {}
    for example in data.heldout:
        sample = samples.setdefault(example.query, {"query": example.query, "positive": [], "documents": []})
        sample["documents"].append(example.document)
        if (example.label or 0) > 0:
            sample["positive"].append(example.document)
    usable = [s for s in samples.values() if s["positive"]]
    return CrossEncoderRerankingEvaluator(usable, at_k=10, always_rerank_positives=False, name="heldout",
                                          batch_size=32, write_csv=False)


def train(config: TrainConfig) -> TrainReport:
    """Run ``config``: data, before-evaluation, training (best checkpoint kept), after-evaluation, output folder.

    Raises:
        ValueError: bad configuration or data (named); an output that is, holds or lies inside the base or a data
            file, or that exists and was not written by ``train`` (or without ``overwrite``). Checked before any
            work.
    """
    from ettin_rerank.engine.loading import HubOptions, resolve_model_path

    _require_extra()
    started = time.perf_counter()
    base_path = resolve_model_path(config.base, HubOptions())
    output = Path(config.output)
    if config.dry_run:
        check_apart(output, _inputs(config, base_path))
    else:
        check_output_folder(output, _inputs(config, base_path), command="train", marker=RECORD_FILE,
                            overwrite=config.overwrite)
    data = load_data(config)
    objective = resolve_objective(config, data)
    heldout = heldout_of(data)
    relevance = "labels"
    if not _has_relevant(heldout):
        if objective != "distill":
            msg = "no held-out query has a relevant document: there is nothing to measure the training against"
            raise ValueError(msg)
        heldout = heldout_from_scores(data, _heldout_teacher_scores(data))
        data.heldout = [Example(e.query, e.document, float(heldout.qrels[e.query].get(doc_key(e.document), 0)),
                                e.score) for e in data.heldout]
        relevance = "teacher"
    seconds = {"data": time.perf_counter() - started}
    report = TrainReport(output=None, objective=objective, counts=data.counts(), before={}, relevance=relevance)
    logger.info("objective %s; %s", objective, report.counts)
    if config.dry_run:
        report.seconds_per_step, report.steps = _time_steps(config, objective, data, base_path)
        report.estimated_seconds = report.seconds_per_step * report.steps
        report.seconds = seconds
        return report
    start = time.perf_counter()
    report.before = evaluate(replace(config.engine_args, model=base_path), data, heldout)
    seconds["evaluate_before"] = time.perf_counter() - start
    with staged(output) as staging:  # the new model is complete before it takes the output's place
        start = time.perf_counter()
        report.steps, report.evaluations = _fit(config, objective, data, base_path, staging)
        seconds["train"] = time.perf_counter() - start
        report.seconds_per_step = seconds["train"] / max(1, report.steps)
        start = time.perf_counter()
        report.after = evaluate(replace(config.engine_args, model=staging), data, heldout)
        seconds["evaluate_after"] = time.perf_counter() - start
        report.verdict = verdict(report.before["ndcg_per_query"], report.after["ndcg_per_query"])
        report.output = str(output)
        report.seconds = seconds
        _write_record(config, report, staging)
    return report


def _inputs(config: TrainConfig, base: Path) -> dict[str, str | Path | None]:
    """Everything a run reads (or resumes from): the output may be none of them, nor around or inside one (those not
    on this machine, a hub id say, are skipped by :func:`~ettin_rerank.outputs.check_apart`)."""
    return {"base model": base, "training data": config.data, "teacher cache": config.teacher_cache,
            "teacher": config.teacher, "retriever": config.retriever}


def _trainer(config: TrainConfig, objective: str, data: TrainingData, base: Path, work: Path, *,
             dry: bool = False) -> tuple[Any, Any]:
    """The model and its trainer; ``dry``: two steps, no evaluation and no checkpoints (to time a step)."""
    import torch
    from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from transformers import EarlyStoppingCallback

    cuda = torch.cuda.is_available() and (config.device is None or str(config.device).startswith("cuda"))
    bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda)
    model = CrossEncoder(str(base), device=config.device or ("cuda" if cuda else "cpu"), num_labels=1,
                         activation_fn=torch.nn.Identity(), local_files_only=True)
    model.max_seq_length = config.max_length
    dataset = _dataset(objective, data.train)
    rows_per_step = config.batch_size
    total = 2 if dry else config.max_steps or max(1, math.ceil(len(dataset) / rows_per_step * config.epochs))
    every = max(1, total // 10)
    evaluation = {} if dry else {
        "eval_strategy": "steps", "eval_steps": every, "save_strategy": "steps", "save_steps": every,
        "save_total_limit": 2, "load_best_model_at_end": True, "metric_for_best_model": "eval_heldout_ndcg@10",
        "greater_is_better": True}
    learning_rate = config.learning_rate or LEARNING_RATES.get(str(config.base).lower(), DEFAULT_LEARNING_RATE)
    args = CrossEncoderTrainingArguments(
        output_dir=str(work), num_train_epochs=config.epochs, max_steps=total,
        per_device_train_batch_size=rows_per_step, per_device_eval_batch_size=rows_per_step,
        learning_rate=learning_rate, warmup_steps=0.1, lr_scheduler_type="linear", bf16=bf16,
        use_cpu=not cuda, logging_steps=every, seed=config.seed, report_to="none", dataloader_num_workers=0,
        **({"save_strategy": "no"} if dry else evaluation),
    )
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=dataset, loss=_loss(objective, model, data.train),
        evaluator=None if dry else _evaluator(data),
        callbacks=[] if dry else [EarlyStoppingCallback(early_stopping_patience=config.early_stopping)])
    return model, trainer


def _fit(config: TrainConfig, objective: str, data: TrainingData, base: Path,
         output: Path) -> tuple[int, list[tuple[int, float]]]:
    tokenizer_file = base / "tokenizer_config.json"
    original_length = json.loads(tokenizer_file.read_text()).get("model_max_length") if tokenizer_file.exists() \
        else None
    with tempfile.TemporaryDirectory(prefix="ettin-train-") as work:
        model, trainer = _trainer(config, objective, data, base, Path(work))
        trainer.train()  # load_best_model_at_end: the model now holds the best checkpoint's weights
        steps = trainer.state.global_step
        evaluations = [(e["step"], e["eval_heldout_ndcg@10"]) for e in trainer.state.log_history
                       if "eval_heldout_ndcg@10" in e]
        best = max(evaluations, key=lambda e: e[1], default=(None, None))
        logger.info("kept the checkpoint of step %s (held-out NDCG@10 %s) of %d steps", best[0], best[1], steps)
        if original_length is not None:  # training truncation must not leak into the shipped model
            model.max_seq_length = original_length
        model.save_pretrained(str(output))
    if original_length is not None:
        tokenizer_config = output / "tokenizer_config.json"
        settings = json.loads(tokenizer_config.read_text())
        settings["model_max_length"] = original_length
        tokenizer_config.write_text(json.dumps(settings, indent=2))
    from ettin_rerank.checkpoints import UNTRAINED_MARKER

    if (base / UNTRAINED_MARKER).exists():
        shutil.copy(base / UNTRAINED_MARKER, output / UNTRAINED_MARKER)
        logger.warning("the base %s is an UNTRAINED checkpoint (random weights); so is %s", base, output)
    return steps, evaluations


def _time_steps(config: TrainConfig, objective: str, data: TrainingData, base: Path) -> tuple[float, int]:
    """Seconds per step, measured on this machine (the second of two steps), and the steps a full run takes."""
    from transformers import TrainerCallback

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="ettin-dry-") as work:
        _, trainer = _trainer(config, objective, data, base, Path(work), dry=True)
        trainer.add_callback(Clock())
        start = time.perf_counter()
        trainer.train()
    per_step = (marks[-1] - marks[0]) if len(marks) > 1 else marks[-1] - start
    steps = config.max_steps or max(1, math.ceil(len(_dataset(objective, data.train)) / config.batch_size
                                                 * config.epochs))
    return per_step, steps


def _require_extra() -> None:
    import importlib.util

    from ettin_rerank.errors import MissingExtraError

    missing = [name for name in ("datasets", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(extra="train", missing=missing[0])


def _write_record(config: TrainConfig, report: TrainReport, output: Path) -> None:
    import sentence_transformers
    import torch
    import transformers

    from ettin_rerank import __version__

    record = {
        "config": asdict(config),
        "objective": report.objective, "counts": report.counts, "steps": report.steps,
        "heldout_relevance": report.relevance,
        "kept_step": report.best_step, "evaluations": report.evaluations,
        "seconds": report.seconds, "seconds_per_step": report.seconds_per_step,
        "before": {k: v for k, v in report.before.items() if k != "ndcg_per_query"},
        "after": {k: v for k, v in (report.after or {}).items() if k != "ndcg_per_query"},
        "verdict": {**asdict(report.verdict), "label": report.verdict.label} if report.verdict else None,
        "versions": {"ettin_rerank": __version__, "sentence_transformers": sentence_transformers.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
    }
    (output / RECORD_FILE).write_text(json.dumps(record, indent=2))
