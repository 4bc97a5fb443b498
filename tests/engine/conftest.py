"""The engine tests' CPU counters: ``/proc/stat`` as the thread governor reads it, written by the test."""

from __future__ import annotations

import math
import os
import time

import pytest
from ettin_rerank.engine import threads as engine_threads
from ettin_rerank.engine.threads import ThreadGovernor


def _write_stat(path, cpus, busy_ticks, idle_ticks) -> None:
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{cpu} {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0" for cpu in cpus]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def write_stat():
    """``write_stat(path, cpus, busy_ticks, idle_ticks)``: a ``/proc/stat`` whose CPUs have these counters."""
    return _write_stat


@pytest.fixture
def governor_under(tmp_path, monkeypatch):
    """``governor_under(busy_cpus)``: a governor of two threads that has read other processes keeping ``busy_cpus``
    CPUs busy, and keeps that reading for the test (later readings are ignored, as if too close together)."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")

    def make(busy_cpus: float) -> ThreadGovernor:
        stat = tmp_path / f"stat-{busy_cpus}"
        _write_stat(stat, cpus, 0, 0)
        governor = ThreadGovernor(2, stat_path=stat)
        governor.cpus = cpus
        governor._last = governor._read()
        time.sleep(0.3)
        _write_stat(stat, cpus, math.ceil(busy_cpus / len(cpus) * 0.3 * os.sysconf("SC_CLK_TCK")), 10_000)
        governor.choose()
        monkeypatch.setattr(engine_threads, "MIN_INTERVAL_S", math.inf)
        return governor

    return make


@pytest.fixture
def loaded_governor(governor_under) -> ThreadGovernor:
    """A governor of two threads under one CPU's worth of other processes' load (one thread free)."""
    governor = governor_under(1.0)
    assert governor.contended and governor.free_threads == 1
    return governor
