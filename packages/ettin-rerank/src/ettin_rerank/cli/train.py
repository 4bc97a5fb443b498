"""``ettin-rerank train`` and ``calibrate``: adapt a reranker to your data."""

from __future__ import annotations

import argparse

from ettin_rerank.args import EngineArgs


def _cmd_train(args: argparse.Namespace) -> int:
    from ettin_rerank.training.train import TrainConfig, train

    config = TrainConfig(
        data=args.data, base=args.base, output=args.output, objective=args.objective, teacher=args.teacher,
        teacher_cache=args.teacher_cache, retriever=args.retriever, split=args.split, heldout_split=args.eval_split,
        holdout=args.holdout, candidates=args.candidates, negatives=args.negatives,
        random_negatives=args.random_negatives, epochs=args.epochs, max_steps=args.max_steps,
        learning_rate=args.lr, batch_size=args.batch_size, max_length=args.max_length,
        early_stopping=args.early_stopping, precision=args.precision, seed=args.seed, device=args.device,
        overwrite=args.overwrite, dry_run=args.dry_run, layout=args.format,
    )
    report = train(config)
    print(f"objective: {report.objective}; data: " + ", ".join(f"{k} {v}" for k, v in report.counts.items()))
    if config.dry_run:
        print(f"{report.steps} steps at {report.seconds_per_step:.2f} s/step measured on this machine: about "
              f"{report.estimated_seconds / 60:.1f} minutes (plus evaluation before and after)")
        return 0
    names = list(report.before["reranked"])
    print(f"{'held-out queries':<22}" + "".join(f"{n:>11}" for n in names))
    for label, values in (("retrieval alone", report.before["retrieval"]), ("before", report.before["reranked"]),
                          ("after", report.after["reranked"])):
        print(f"{label:<22}" + "".join(f"{values[n]:>11.4f}" for n in names))
    print(f"{report.steps} steps, {report.seconds_per_step:.2f} s/step; {report.verdict}")
    print(f"wrote {report.output} (the base model is untouched)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="adapt a reranker to your data, measured before and after "
                                "(needs ettin-rerank[train])")
    train.add_argument("data", help="BEIR folder, or JSONL pairs / groups / FlagEmbedding / Cohere layout")
    train.add_argument("--base", default="17m", help="the reranker to start from (never modified)")
    train.add_argument("--output", required=True, help="folder for the trained model: new or empty (never the base "
                       "or a data file, nor around or inside one)")
    train.add_argument("--format", default="auto", choices=("auto", "pairs", "groups", "flag", "cohere", "beir"))
    train.add_argument("--objective", default="auto", choices=("auto", "distill", "bce", "lambda"))
    train.add_argument("--teacher", default=None, help="model that scores every (query, candidate) to distil from")
    train.add_argument("--teacher-cache", default=None, help="JSONL cache of teacher scores (resumable)")
    train.add_argument("--retriever", default=None, help="embedding model for candidates and mining (BEIR data)")
    train.add_argument("--split", default="train", help="BEIR qrels split to train on")
    train.add_argument("--eval-split", default=None, help="BEIR qrels split held out for before/after evaluation "
                       "(default: a fraction of the training queries)")
    train.add_argument("--holdout", type=float, default=0.1, help="fraction of queries held out (query-disjoint)")
    train.add_argument("--candidates", type=int, default=20, help="retrieved candidates per query (BEIR)")
    train.add_argument("--negatives", type=int, default=5, help="mined hard negatives per positive (BEIR, bce)")
    train.add_argument("--random-negatives", type=int, default=1, help="random negatives per query")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: by size, for fine-tuning)")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--max-length", type=int, default=512, help="tokens per pair while training")
    train.add_argument("--early-stopping", type=int, default=3, help="evaluations without improvement to stop")
    train.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="auto: bf16 autocast on CUDA, fp32 on CPU (bf16 training on CPU is a trap)")
    train.add_argument("--seed", type=int, default=12)
    train.add_argument("--device", default=None)
    train.add_argument("--overwrite", action="store_true", help="replace an --output that train wrote before (once "
                       "the new model is complete)")
    train.add_argument("--dry-run", action="store_true", help="count the data and time two steps, then stop")
    train.set_defaults(func=_cmd_train)

    calibrate = commands.add_parser("calibrate", help="fit logits -> probability of relevance on labelled data; "
                                    "activation='calibrated' then uses it")
    calibrate.add_argument("data", help="JSONL pairs/groups with labels, or a BEIR folder")
    calibrate.add_argument("--model", default="17m")
    calibrate.add_argument("--output", default=None, help="write a calibrated copy of the model here instead of "
                           "adding calibration.json to the model folder (needed for hub models)")
    calibrate.add_argument("--overwrite", action="store_true", help="replace a calibration.json, or an --output "
                           "copy, that calibrate wrote before")
    calibrate.add_argument("--split", default="train", help="BEIR qrels split to calibrate on")
    calibrate.add_argument("--candidates", type=int, default=20, help="retrieved candidates per query (BEIR)")
    calibrate.add_argument("--holdout", type=float, default=0.3, help="fraction of queries to measure ECE on")
    calibrate.add_argument("--device", default=None)
    calibrate.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from ettin_rerank.training.calibration import calibrate

    report = calibrate(EngineArgs(model=args.model, device=args.device), args.data, output=args.output,
                       overwrite=args.overwrite, holdout=args.holdout, split=args.split, candidates=args.candidates)
    print(f"p(relevant) = sigmoid({report.calibration.slope:.4f} * logit + {report.calibration.intercept:.4f}), "
          f"fitted on {report.fit_pairs} pairs")
    print(f"expected calibration error on {report.heldout_pairs} held-out pairs: {report.ece_before:.4f} "
          f"(plain sigmoid) -> {report.ece_after:.4f} (calibrated)")
    print(f"wrote {report.path}; use activation='calibrated'")
    return 0
