"""Latency suite: every model on every device against its budgets for that device's tags.

Percentile budgets are decided on confidence bounds (PASS / FAIL / INCONCLUSIVE, see hil.stats);
cold start and peak memory are single values against their limits. One latency run per device x
model serves all three tests (the `latency` fixture of hil.testing). A failure names the measurement and its bound,
the device (labelled when emulated), the model's name, version and sha256, and onnxruntime.
"""

from __future__ import annotations

import math

import pytest

from hil.testing import PERCENTILE_KEYS, BudgetSpec, Judge, Latency, check_max, record_metric

pytestmark = pytest.mark.perf


def _sane_latencies(latency: Latency) -> None:
    s = latency.summary
    # minimums_met: both min_iterations and min_duration were reached, nothing cut the run short.
    assert latency.run.stop.reason == "minimums_met", latency.run.stop
    assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms < math.inf, f"not a latency distribution: {s}"
    assert 0 < s.throughput_ips < math.inf, s


def test_latency_percentiles(latency: Latency, judge: Judge, request: pytest.FixtureRequest) -> None:
    """Each latency percentile budget (p50/p90/p95/p99) for the device's tags, decided statistically.

    The run is adaptive: it stops at the first pre-planned look where the highest budgeted
    percentile is decided, and an undecided run fails as INCONCLUSIVE with how many more samples
    would likely decide. Without a percentile budget for the device's tags the test still measures
    (a fixed run) and records the summary, but asserts only that the numbers are sane.
    """
    latency.attach()  # samples, histogram and CDF with the budgets: in the report whatever the verdict
    if not latency.percentiles:
        _sane_latencies(latency)
        for q in (50.0, 99.0):  # no budget, still compared run to run by `hil gate`
            raw = latency.raw.for_quantile(q) if latency.raw is not None else None
            record_metric(request.node, PERCENTILE_KEYS[q], getattr(latency.summary, f"p{q:g}_ms"), "ms", raw=raw,
                          samples=latency.summary.count)
        return
    judge(*latency.percentiles)


def test_cold_start(latency: Latency, budgets: BudgetSpec, judge: Judge, request: pytest.FixtureRequest) -> None:
    """Session creation plus first inference within cold_start_ms.

    Without a cold_start_ms budget for the device's tags: recorded, and only checked to be sane.
    """
    cold = latency.cold_start_ms
    if budgets.cold_start_ms is None:
        assert 0 < latency.run.session.create_ms < cold < math.inf, latency.run.summary()
        record_metric(request.node, "cold_start_ms", cold, "ms")
        return
    judge(check_max("cold_start_ms", cold, budgets.cold_start_ms, "ms"))


def test_peak_memory(latency: Latency, budgets: BudgetSpec, judge: Judge, request: pytest.FixtureRequest) -> None:
    """Peak resident memory of the inference process (runtime, session, timed loop) within memory_mib.

    Without a memory_mib budget for the device's tags: recorded, and only checked to be sane
    (above what the process held before the session existed).
    """
    memory = latency.run.memory
    if budgets.memory_mib is None:
        assert memory.peak_rss_bytes > (memory.baseline_rss_bytes or 0) > 0, memory
        record_metric(request.node, "memory_mib", memory.peak_rss_mib, "MiB")
        return
    judge(check_max("memory_mib", memory.peak_rss_mib, budgets.memory_mib, "MiB"))
