"""Working memory of one piece of work: peak RSS growth on CPU (sampled every 2 ms), peak allocation on CUDA."""

from __future__ import annotations

import ctypes
import gc
import os
import threading

import torch


class PeakMemory:
    """Peak resident memory (CPU) or peak allocated memory (CUDA) above the level at entry, in MiB: the working
    memory of the work inside ``with``, with any model already loaded.

    Example:
        ::

            with PeakMemory("cpu") as memory:
                reranker.rerank(query, documents)
            print(memory.peak_mib)
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.peak_mib = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            release_freed_memory()
            self._base = rss_bytes()
            self._peak = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = (max(self._peak, rss_bytes()) - self._base) / 2**20


def release_freed_memory() -> None:
    """Hand memory freed earlier back to the OS (glibc), so that what follows measures its own growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    """Resident memory of this process (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
