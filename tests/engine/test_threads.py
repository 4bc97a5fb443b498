"""Threads that hold on shared cores (issue 25, item 2): never more threads than the CPUs the process may use
(affinity, cgroup quota), fewer while other processes keep some busy, and the caller's own setting left alone."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from ettin_rerank import Reranker
from ettin_rerank.engine import reranker as reranker_module
from ettin_rerank.engine import threads as engine_threads
from ettin_rerank.engine.threads import ThreadGovernor, cgroup_cpu_limit, torch_threads, usable_cpus


def _proc_cgroup(tmp_path, lines: str):
    path = tmp_path / "proc-self-cgroup"
    path.write_text(lines)
    return path


def test_cgroup_v2_quota_is_read_at_the_process_cgroup_and_its_parents(tmp_path):
    root = tmp_path / "cgroup"
    pod = root / "kubepods" / "pod1"
    pod.mkdir(parents=True)
    (root / "kubepods" / "cpu.max").write_text("max 100000\n")
    (pod / "cpu.max").write_text("200000 100000\n")  # 2 CPUs, as `docker run --cpus 2` writes it
    assert cgroup_cpu_limit(root, _proc_cgroup(tmp_path, "0::/kubepods/pod1\n")) == 2.0
    (root / "kubepods" / "cpu.max").write_text("150000 100000\n")  # a tighter parent wins
    assert cgroup_cpu_limit(root, _proc_cgroup(tmp_path, "0::/kubepods/pod1\n")) == 1.5


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    root = tmp_path / "cgroup"
    group = root / "cpu,cpuacct" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("300000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    cgroup = _proc_cgroup(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(root, cgroup) == 3.0
    (group / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(root, cgroup) is None
    assert cgroup_cpu_limit(tmp_path / "missing", cgroup) is None


@pytest.fixture
def one_cpu_quota(tmp_path, monkeypatch):
    """This process in a cgroup limited to one CPU (``docker run --cpus 1``); the caller runs two torch threads."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cpu.max").write_text("100000 100000\n")
    monkeypatch.setattr(engine_threads, "CGROUP_ROOT", root)
    monkeypatch.setattr(engine_threads, "PROC_CGROUP", _proc_cgroup(tmp_path, "0::/\n"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _threads_seen_by_the_encoder(engine, texts) -> list[int]:
    seen = []
    layer = engine._cross_encoder[0].model.layers[0]
    handle = layer.attn.Wqkv.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        engine.score("protein", texts)
    finally:
        handle.remove()
    return seen


def test_a_one_cpu_quota_caps_the_engine_at_one_thread(one_cpu_quota, monkeypatch, tiny_checkpoint, make_text):
    """A container limited to fewer CPUs than the host has must not start a thread per host CPU: not while the
    checkpoint loads, not while it scores; the caller's own count is left as it was."""
    assert usable_cpus() == 1
    loading = []
    load = reranker_module.load_cross_encoder

    def counting_load(*args, **kwargs):
        loading.append(torch.get_num_threads())
        return load(*args, **kwargs)

    monkeypatch.setattr(reranker_module, "load_cross_encoder", counting_load)
    engine = Reranker(tiny_checkpoint, device="cpu", dtype="float32")
    assert loading == [1]
    seen = _threads_seen_by_the_encoder(engine, [make_text(30) for _ in range(4)])
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_explicit_threads_above_the_quota_are_capped_and_said(one_cpu_quota, tiny_checkpoint, make_text, caplog):
    with caplog.at_level(logging.WARNING, logger="ettin_rerank.engine.reranker"):
        engine = Reranker(tiny_checkpoint, device="cpu", dtype="float32", threads=8)
    assert set(_threads_seen_by_the_encoder(engine, [make_text(30) for _ in range(2)])) == {1}
    assert any("threads=8" in r.getMessage() and "1 CPU" in r.getMessage() for r in caplog.records)


def test_torch_threads_sets_the_count_for_the_block_and_gives_the_callers_back():
    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            torch.set_num_threads(3)  # the block changes it: the caller's count still comes back
        assert torch.get_num_threads() == 2
        with pytest.raises(KeyError), torch_threads(1):
            raise KeyError
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(caller)


def test_explicit_threads_are_used_and_the_callers_setting_restored(tiny_checkpoint, make_text):
    before = torch.get_num_threads()
    engine = Reranker(tiny_checkpoint, device="cpu", dtype="float32", threads=1)
    assert set(_threads_seen_by_the_encoder(engine, [make_text(30) for _ in range(4)])) == {1}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_threads_are_named(tiny_checkpoint, threads):
    with pytest.raises(ValueError, match="threads"):
        Reranker(tiny_checkpoint, device="cpu", threads=threads)


def test_the_governor_follows_the_other_processes_load(tmp_path, write_stat):
    stat = tmp_path / "stat"
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    ticks = os.sysconf("SC_CLK_TCK")
    write_stat(stat, cpus, 0, 0)
    governor = ThreadGovernor(2, stat_path=stat)
    governor.cpus = cpus
    governor._last = governor._read()
    busy = 0
    for others_busy, expected in ((0.0, 2), (1.0, 1), (2.0, 1), (0.1, 2)):
        time.sleep(0.3)
        busy += int(others_busy / len(cpus) * 0.3 * ticks)  # per CPU, over 0.3 s
        write_stat(stat, cpus, busy, 10_000)
        assert governor.choose() == expected, (others_busy, governor.others_busy)


def test_a_tick_between_close_readings_is_not_a_neighbour(tmp_path, write_stat):
    """The kernel counts CPU time in ticks (10 ms): a neighbour at 5% of each CPU steps each counter by one tick
    now and then. Read 50 ms apart (the engine reads between batches), one step looked like 0.4 CPUs busy and took a
    thread away; the governor decides over longer intervals, and keeps both."""
    stat = tmp_path / "stat"
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    tick = 1 / os.sysconf("SC_CLK_TCK")
    write_stat(stat, cpus, 0, 0)
    governor = ThreadGovernor(2, stat_path=stat)
    governor.cpus = cpus
    governor._last = governor._read()
    start = time.monotonic()
    chosen = []
    while time.monotonic() - start < 1.5:
        time.sleep(0.05)
        ticks = int(0.05 * (time.monotonic() - start) / tick)  # each CPU: 5% busy, whole ticks
        write_stat(stat, cpus, ticks, 10_000)
        chosen.append(governor.choose())
    assert set(chosen) == {2}, chosen


@pytest.mark.parametrize("faster", [1, 2])
def test_under_a_load_the_governor_keeps_the_count_measured_faster(loaded_governor, faster):
    """Fewer threads wait less at each op's barrier but get a smaller share of the busy cores: which wins depends on
    the model (17m vs 150m, README). The governor tries both and keeps the faster, retrying the other now and then."""
    governor = loaded_governor
    chosen = []
    for _ in range(4 * engine_threads.RETRY_EVERY):
        threads = governor.choose()
        chosen.append(threads)
        governor.record(threads, 2_000, 0.5 if threads == faster else 1.0)
    trials = chosen[: 2 * engine_threads.TRIALS]
    assert trials.count(1) == trials.count(2) == engine_threads.TRIALS, trials
    settled = chosen[2 * engine_threads.TRIALS:]
    slower = 3 - faster
    assert 1 <= settled.count(slower) <= len(settled) // engine_threads.RETRY_EVERY + 1, chosen
    assert settled.count(faster) >= len(settled) - len(settled) // engine_threads.RETRY_EVERY - 1


def test_a_change_of_speed_under_the_same_load_is_followed(loaded_governor):
    governor = loaded_governor
    for _ in range(2 * engine_threads.RETRY_EVERY):  # two threads faster at first...
        threads = governor.choose()
        governor.record(threads, 2_000, 0.5 if threads == 2 else 1.0)
    for _ in range(4 * engine_threads.RETRY_EVERY):  # ...then one (a neighbour's load changed its kind)
        threads = governor.choose()
        governor.record(threads, 2_000, 0.5 if threads == 1 else 1.0)
    assert [governor.choose() for _ in range(engine_threads.RETRY_EVERY - 1)].count(1) >= engine_threads.RETRY_EVERY - 2


def test_on_free_cpus_every_pass_uses_all_threads_and_timings_are_not_kept(governor_under):
    governor = governor_under(0.0)
    for _ in range(10):
        threads = governor.choose()
        governor.record(threads, 2_000, 0.5)
        assert threads == 2
    assert not governor.contended and governor._rates == {}


def test_the_engine_reports_each_pass_to_the_governor(loaded_governor, tiny_checkpoint, make_text):
    """Every torch pass under a load is timed and reported with the thread count it ran on; the scores are the
    same whichever count ran."""
    texts = [make_text(60) for _ in range(24)]
    exact = Reranker(tiny_checkpoint, device="cpu", dtype="float32", threads=1).score("protein", texts)
    engine = Reranker(tiny_checkpoint, device="cpu", dtype="float32", batch_tokens=128)
    engine._threads = governor = loaded_governor
    reported = []
    record = governor.record
    governor.record = lambda threads, tokens, seconds: (reported.append((threads, tokens)), record(threads, tokens,
                                                                                                     seconds))
    seen = _threads_seen_by_the_encoder(engine, texts)
    assert len(reported) == len(seen) > 2 * engine_threads.TRIALS
    assert [threads for threads, _ in reported] == seen, "reported with the count the pass ran on"
    assert {threads for threads, _ in reported} == {1, 2}
    windows = engine.prepare(["protein"], [(0, text) for text in texts]).windows
    assert sum(tokens for _, tokens in reported) == sum(len(w.input_ids) for w in windows)
    assert governor._rates[(1, 1)][0] >= engine_threads.TRIALS and governor._rates[(1, 2)][0] >= engine_threads.TRIALS
    assert np.allclose(engine.score("protein", texts), exact, atol=1e-5)


SPIN = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end:\n    pass\n"


def test_real_busy_neighbours_take_the_engine_down_to_one_thread():
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    governor = ThreadGovernor(2)
    assert governor.adaptive
    neighbours = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in cpus]
    try:
        time.sleep(0.3)
        governor.choose()
        time.sleep(0.5)
        assert governor.choose() == 1, governor.others_busy
    finally:
        for process in neighbours:
            process.kill()
            process.wait()
