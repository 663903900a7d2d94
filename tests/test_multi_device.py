"""Tests that need several devices at once: `@pytest.mark.hil_devices(count, tags)` and the `devices` fixture."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.device import Device
from hil.errors import DeviceBusy
from hil.lab import EmulatedLab
from hil.lease import Lease, holder_of, lease_together

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("lab")

PAIR_TESTS = """
import pytest

@pytest.mark.hil_devices(count=2)
def test_pair(devices):
    assert [d.name for d in devices] == ["emu-a", "emu-b"]
    for d in devices:
        assert d.run("true").ok

@pytest.mark.hil_devices(count=1, tags=["rpi"])
def test_one_rpi(devices):
    assert [d.name for d in devices] == ["emu-b"]

@pytest.mark.hil_devices(count=2, tags=["jetson"])
def test_two_jetsons(devices):
    raise AssertionError("the test lab has one jetson: this must not run")
"""

# Each run first holds one device for the run (its single-device test), then needs both: with
# hold-and-wait, run 1 (holding emu-a) and run 2 (holding emu-b) would wait for each other forever.
CROSSING = """
import time
import pytest

@pytest.mark.hil_devices(count=1, tags=["{first}"])
def test_1_hold_one(devices):
    time.sleep(2)  # both runs now hold their first device

@pytest.mark.hil_devices(count=2)
def test_2_need_both(devices):
    start = devices[0].run("date +%s.%N", timeout=10).stdout.strip()
    time.sleep(0.5)
    end = devices[0].run("date +%s.%N", timeout=10).stdout.strip()
    devices[0].run(f"echo {{start}} {{end}} >> {{devices[0].workdir}}/pair-intervals", timeout=10, check=True)
"""


def test_marker_picks_devices_by_count_and_tags(pytester: pytest.Pytester, lab: EmulatedLab) -> None:
    pytester.makepyfile(test_pairs=PAIR_TESTS)
    result = pytester.runpytest("-rs", "-p", "no:randomly", "--hil-devices", str(lab.inventory.path))
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*needs 2 devices tagged jetson; this run has 1 usable (emu-a)*"])


def test_lease_together_gives_back_what_it_took_when_one_is_busy(lab: EmulatedLab) -> None:
    a, b, other_b = (Device(lab.inventory.get(n)) for n in ("emu-a", "emu-b", "emu-b"))
    try:
        with Lease(other_b, "someone-else", timeout=5):
            started = time.monotonic()
            with pytest.raises(DeviceBusy, match="could not be leased together"):
                lease_together([b, a], "me", timeout=3)
            assert time.monotonic() - started < 12
            assert holder_of(a) is None, "emu-a stayed leased while waiting for emu-b"
        leases = lease_together([b, a], "me", timeout=10)
        assert [lease.device.name for lease in leases] == ["emu-a", "emu-b"]  # name order
        assert {holder_of(a).run_id, holder_of(b).run_id} == {"me"}  # type: ignore[union-attr]
        for lease in leases:
            lease.release()
    finally:
        for d in (a, b, other_b):
            d.close()


def test_two_runs_crossing_over_two_devices_do_not_deadlock(lab: EmulatedLab, device_a: Device,
                                                            tmp_path: Path) -> None:
    device_a.run(f"rm -f {device_a.workdir}/pair-intervals", timeout=10)
    runs = []
    for first in ("jetson", "rpi"):
        directory = tmp_path / first
        directory.mkdir()
        (directory / "test_cross.py").write_text(CROSSING.format(first=first))
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "test_cross.py",
             "--hil-devices", str(lab.inventory.path), "--hil-lease-timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=directory))
    outputs = [run.communicate(timeout=150)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
    intervals = sorted(tuple(map(float, line.split()))
                       for line in device_a.run(f"cat {device_a.workdir}/pair-intervals", timeout=10).stdout.split("\n")
                       if line.strip())
    assert len(intervals) == 2
    (_, first_end), (second_start, _) = intervals
    assert first_end <= second_start, f"the two pair tests overlapped on the devices: {intervals}"
