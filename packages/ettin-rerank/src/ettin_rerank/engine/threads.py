"""How many threads a CPU forward pass may use: the CPUs this process may run on, and how many of them are free.

Two causes made the engine collapse on shared cores (profiled in ``benchmarks/bench.py --suites contention``), and
a third decides how far to step back:

- **Oversubscription**: PyTorch starts one thread per CPU it sees. A container limited by a cgroup quota (2 CPUs
  on a 64-core host) sees all 64, and each of its 64 threads then waits for the quota's time slices.
  :func:`usable_cpus` takes the smallest of the affinity mask and the quota (cgroup v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us``).
- **Fork-join barriers on busy cores**: every op of a forward pass is a parallel region that ends when its slowest
  thread does. When a neighbour takes one of two cores, half of each op waits for a time slice: the engine's many
  small ops per layer (packed tokens, 2,048-token batches) lose far more than their work. :class:`ThreadGovernor`
  reads how busy the process's CPUs are (``/proc/stat``) less what this process used itself, between batches, and
  runs the next batch on the CPUs that are free (at least one), so a busy neighbour costs its share, not a collapse.
- **But fewer threads also get a smaller share**: the kernel shares a busy core fairly between its threads, so
  two threads beside two busy neighbours get one CPU in all where one thread gets two thirds of one. Which wins
  depends on the op sizes (AVX2, two busy neighbours, ``cpu-x86-64-avx2-17m-natural-contention2.json`` and
  ``-150m-``: the free CPUs 1.10x ST fp32, both threads 0.79x on 17m; 1.13x and 1.38x on 150m). So under a load
  the governor times both counts on the batches it runs (tokens per second, :meth:`ThreadGovernor.record`) and
  keeps the faster, trying the other again now and then.

The thread count is set per calling thread (``torch.set_num_threads`` sets the caller's OpenMP team size) while the
engine loads and scores (:meth:`ThreadGovernor.capped`), then restored, so an engine never changes the threads of
other code in the process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
PROC_CGROUP = Path("/proc/self/cgroup")
MIN_INTERVAL_S = 0.25
"""Readings closer together than this say nothing reliable (the kernel counts CPU time in ticks of 10 ms: over
20 ms one tick of each of two CPUs reads as a neighbour using a whole CPU); the previous choice stands until the
interval is this long (a tick of each of two CPUs is then 0.08 CPUs, under :data:`MARGIN`)."""
MARGIN = 0.25
"""A CPU counts as free when at least this much of it is not used by others (so a neighbour at 80% takes it)."""
TRIALS = 2
"""Batches each thread count runs under a load before the faster one is kept."""
RETRY_EVERY = 16
"""Under a load, one batch in this many runs on the count measured slower (loads and batch shapes change)."""
SMOOTHING = 0.3
"""Weight of a batch's tokens per second in its thread count's running rate."""


def affinity_cpus() -> set[int]:
    """The CPUs this process may run on (all of them where the OS does not say)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def cgroup_cpu_limit(root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``cpu.max`` "200000 100000" -> 2.0), or ``None`` if none.

    Reads cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), at the process's own
    cgroup and every parent up to ``root`` (the tightest limit wins, as the kernel enforces).
    """
    limits = []
    for folder in _cgroup_folders(root or CGROUP_ROOT, proc_cgroup or PROC_CGROUP):
        limit = _read_limit(folder)
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    relative: list[str] = []
    try:
        for line in proc_cgroup.read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and (parts[1] == "" or "cpu" in parts[1].split(",")):
                relative.append(parts[2].lstrip("/"))
    except OSError:
        pass
    bases = [root, root / "cpu", root / "cpu,cpuacct"]
    folders = []
    for base in bases:
        for rel in relative or [""]:
            path = base / rel if rel else base
            while True:
                folders.append(path)
                if path == base:
                    break
                path = path.parent
    return [f for f in dict.fromkeys(folders) if f.is_dir()]


def _read_limit(folder: Path) -> float | None:
    try:
        if (folder / "cpu.max").is_file():
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100000)
        if (folder / "cpu.cfs_quota_us").is_file():
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
            return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None
    return None


def usable_cpus() -> int:
    """CPUs this process can keep busy: the affinity mask, capped by the cgroup quota (rounded up, at least 1)."""
    count = len(affinity_cpus())
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(1, math.ceil(limit - 0.01)))
    return max(1, count)


@dataclass
class _Reading:
    wall: float
    busy: float  # CPU-seconds the process's CPUs were busy (everyone)
    own: float  # CPU-seconds this process used


class ThreadGovernor:
    """Picks the thread count of each CPU forward pass: ``max_threads`` when the CPUs are free; while other
    processes keep some of them busy (``adaptive``), the free CPUs' count or ``max_threads``, whichever the passes
    reported to :meth:`record` ran faster at that load; never more than :func:`usable_cpus`.

    Args:
        max_threads: The most threads a pass may use (``None``: :func:`usable_cpus`).
        adaptive: Follow the other processes' load between batches; ``False`` always uses ``max_threads``.
        stat_path: Where the kernel's CPU counters are (``/proc/stat``; tests write their own).
    """

    def __init__(self, max_threads: int | None = None, *, adaptive: bool = True,
                 stat_path: Path | None = None) -> None:
        stat_path = stat_path or PROC_STAT
        self.max_threads = max(1, max_threads or usable_cpus())
        self.cpus = sorted(affinity_cpus())
        self.adaptive = adaptive and self.max_threads > 1 and stat_path.is_file()
        self._stat_path = stat_path
        self._lock = threading.Lock()
        self._last: _Reading | None = None
        self.threads = self.max_threads
        self.free_threads = self.max_threads
        """Threads on the CPUs the other processes left free over the last interval (at least one)."""
        self.others_busy = 0.0
        """CPUs the other processes kept busy over the last interval (what the last choice was based on)."""
        self._rates: dict[tuple[int, int], tuple[int, float]] = {}  # (free_threads, threads) -> (batches, tokens/s)
        self._choices = 0
        if self.adaptive:
            self._last = self._read()

    def __repr__(self) -> str:
        return f"ThreadGovernor(max_threads={self.max_threads}, adaptive={self.adaptive}, threads={self.threads})"

    def _read(self) -> _Reading | None:
        try:
            lines = self._stat_path.read_text().splitlines()
        except OSError:
            return None
        wanted = {f"cpu{i}" for i in self.cpus}
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy = 0
        for line in lines:
            name, *values = line.split()
            if name in wanted and len(values) >= 4:
                numbers = [int(v) for v in values[:8]]
                idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)  # idle + iowait
                busy += sum(numbers) - idle
        times = os.times()
        return _Reading(wall=time.monotonic(), busy=busy / ticks, own=times.user + times.system)

    def choose(self) -> int:
        """The thread count for the next pass: all of them while the CPUs are free; under a load, the free CPUs'
        count or all of them, whichever :meth:`record` measured faster at this load (each tried first)."""
        if not self.adaptive:
            return self.max_threads
        with self._lock:
            self._read_load()
            free = self.free_threads
            if not self.contended:
                self.threads = self.max_threads
                return self.threads
            candidates = (free, self.max_threads)
            trials = [self._rates.get((free, count), (0, 0.0)) for count in candidates]
            untried = [count for count, (batches, _) in zip(candidates, trials, strict=True) if batches < TRIALS]
            self._choices += 1
            if untried:
                threads = untried[0]
            else:
                ranked = sorted(zip(candidates, trials, strict=True), key=lambda item: item[1][1], reverse=True)
                threads = ranked[1 if self._choices % RETRY_EVERY == 0 else 0][0]
            if threads != self.threads:
                logger.debug("threads %d -> %d (other processes keep %.2f CPUs busy)", self.threads, threads,
                             self.others_busy)
            self.threads = threads
            return threads

    @property
    def contended(self) -> bool:
        """Whether other processes kept some of the CPUs busy over the last interval."""
        return self.free_threads < self.max_threads

    def _read_load(self) -> None:
        """Update :attr:`free_threads` from the CPU counters, once the interval since the last reading is long
        enough to say something (:data:`MIN_INTERVAL_S`)."""
        now = self._read()
        last = self._last
        if now is None or last is None or now.wall - last.wall < MIN_INTERVAL_S:
            return
        self._last = now
        interval = now.wall - last.wall
        others = max(0.0, (now.busy - last.busy) - (now.own - last.own)) / interval
        self.others_busy = others
        self.free_threads = max(1, min(self.max_threads, math.floor(len(self.cpus) - others + MARGIN)))

    def record(self, threads: int, tokens: int, seconds: float) -> None:
        """A pass of ``tokens`` tokens ran ``seconds`` on ``threads`` threads: what :meth:`choose` compares under
        the current load (ignored while the CPUs are free)."""
        if not self.adaptive or tokens <= 0 or seconds <= 0:
            return
        with self._lock:
            if not self.contended or threads not in (self.free_threads, self.max_threads):
                return
            key = (self.free_threads, threads)
            batches, rate = self._rates.get(key, (0, 0.0))
            sample = tokens / seconds
            self._rates[key] = (batches + 1, sample if batches == 0 else (1 - SMOOTHING) * rate + SMOOTHING * sample)

    @contextmanager
    def timed(self, threads: int, tokens: int) -> Iterator[None]:
        """Time the block as one pass of ``tokens`` tokens on ``threads`` threads (:meth:`record`)."""
        start = time.perf_counter()
        yield
        self.record(threads, tokens, time.perf_counter() - start)

    def apply(self) -> int:
        """:meth:`choose`, then set it for the calling thread's next forward pass; returns it."""
        threads = self.choose()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    def capped(self) -> contextlib.AbstractContextManager[None]:
        """Run the block with at most :attr:`max_threads` torch threads in the calling thread (loading a checkpoint
        runs parallel ops too), then give the caller back its own count (also after :meth:`apply` inside)."""
        return torch_threads(min(torch.get_num_threads(), self.max_threads))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads in the calling thread, then give it back its own count (also
    when the block changed it)."""
    caller = torch.get_num_threads()
    if caller != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != caller:
            torch.set_num_threads(caller)
