"""Throughput suite: a batch-size sweep per model and device; the best batch size is reported."""

from __future__ import annotations

import math

import pytest

from hil.deploy import DeployedModel
from hil.runner import SweepRun, run_sweep
from hil.testing import BudgetSpec, Judge, Record, check_min, latency_inputs

pytestmark = pytest.mark.perf

BATCHES = (1, 4, 16, 64)
# Each point is a short timed loop: enough for items/s (a mean), not for tail latencies.
MIN_ITERATIONS = 20
MIN_DURATION_S = 0.25
# Without a throughput budget: batching must not cost throughput. Per-call overhead makes larger
# batches cheaper per item on any sane runtime; a model or provider that serialises the batch
# (or thrashes memory) falls below batch 1. 0.9 leaves room for timing noise.
MIN_BATCHING_RATIO = 0.9


def _record(sweep: SweepRun, record: Record) -> None:
    for point in sweep.points:
        record(f"hil.throughput.batch_{point.batch}_ips", point.error or point.items_per_s)
    record("hil.throughput.best_batch", sweep.best_batch)
    record("hil.throughput.best_ips", sweep.best.items_per_s)


def test_throughput(deployed_model: DeployedModel, budgets: BudgetSpec, intra_op_threads: int, judge: Judge,
                    report_property: Record) -> None:
    """Items/s per batch size; the best batch's throughput >= throughput_ips when the manifest sets one.

    Without a throughput_ips budget for the device's tags: every batch size must run, and the
    largest must keep at least 90% of batch 1's items/s.
    """
    sweep = run_sweep(deployed_model, BATCHES, min_iterations=MIN_ITERATIONS, min_duration_s=MIN_DURATION_S,
                      threads=intra_op_threads, **latency_inputs(deployed_model.artifact))
    _record(sweep, report_property)
    if budgets.throughput_ips is not None:
        judge(check_min("throughput_ips", sweep.best.items_per_s, budgets.throughput_ips, "ips"))
        return
    failed = [p for p in sweep.points if p.error]
    assert not failed and [p.batch for p in sweep.points] == list(BATCHES), f"the sweep did not run through: {failed}"
    single, largest = sweep.points[0], sweep.points[-1]
    assert 0 < single.items_per_s < math.inf, single
    assert largest.items_per_s >= MIN_BATCHING_RATIO * single.items_per_s, (
        f"batch {largest.batch}: {largest.items_per_s:.0f} items/s, below {MIN_BATCHING_RATIO:g} x batch 1's "
        f"{single.items_per_s:.0f}: batching costs throughput")
