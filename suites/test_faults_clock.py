"""Clock faults: the device's offset is measured and reported, and latency figures do not move (they come
from the monotonic clock)."""

from __future__ import annotations

import pytest

from hil.deploy import DeployedModel
from hil.faults.injector import FaultInjector
from hil.runner import run_latency

# One kind of model is enough to show the clock does not reach the timing: not the int8 ones (those whose eval
# contract names an fp32 parent).
pytestmark = [pytest.mark.faults, pytest.mark.hil_eval(without="parent")]
HOURS = 3 * 3600.0


def _p50(deployed: DeployedModel) -> float:
    run = run_latency(deployed, warmup=20, min_iterations=300, min_duration_s=0.5, threads=1)
    return float(sorted(run.latencies_ms)[len(run.latencies_ms) // 2])


def _p50_under(deployed: DeployedModel) -> float:
    """The better of two runs: a busy shared host can slow one run; a clock the runner timed with would
    slow both (by the drift's factor, 2x here)."""
    return min(_p50(deployed), _p50(deployed))


def test_clock_skew_is_measured_and_latency_is_unaffected(deployed_model: DeployedModel, faults: FaultInjector,
                                                         request: pytest.FixtureRequest) -> None:
    device = deployed_model.device
    before = _p50(deployed_model)
    with faults.clock_step(device, HOURS):
        offset = device.clock_offset()
        skewed = _p50_under(deployed_model)
    baseline = max(before, _p50(deployed_model))  # before and after: a busy host moves one run, not both
    request.node.user_properties += [("hil.clock.offset_s", f"{offset.offset:.3f}"),
                                     ("hil.clock.uncertainty_s", f"{offset.uncertainty:.4f}")]
    assert offset.offset == pytest.approx(HOURS, abs=1.0)
    assert skewed < 1.5 * baseline, f"p50 {skewed:.4f} ms under a 3 h skew vs {baseline:.4f} ms without"


def test_clock_drift_does_not_stretch_latencies(deployed_model: DeployedModel, faults: FaultInjector) -> None:
    before = _p50(deployed_model)
    # The wall clock runs twice as fast: a runner that timed with it would report doubled latencies.
    with faults.clock_drift(deployed_model.device, factor=2.0):
        drifting = _p50_under(deployed_model)
    baseline = max(before, _p50(deployed_model))  # before and after: a busy host moves one run, not both
    assert drifting < 1.5 * baseline, f"p50 {drifting:.4f} ms with the wall clock at 2x vs {baseline:.4f} ms"
