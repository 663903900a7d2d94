"""Leases on the device: one run at a time, freed when the holder ends, dies or loses its connection."""

from __future__ import annotations

import dataclasses
import itertools
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.cli import main as cli_main
from hil.config import load_inventory
from hil.device import Device
from hil.errors import DeviceBusy, InfraError, LeaseUnavailable
from hil.lab import EmulatedLab
from hil.lease import Lease, holder_of, lease_together
from tests.handbuilt import HandBuilt

pytestmark = pytest.mark.usefixtures("lab")

RECORDING_TEST = """
import time

def test_{n}(device):
    start = device.run("date +%s.%N", timeout=10).stdout.strip()
    time.sleep(0.4)
    end = device.run("date +%s.%N", timeout=10).stdout.strip()
    device.run(f"echo {{start}} {{end}} >> {{device.workdir}}/lease-intervals", timeout=10, check=True)
"""


def test_a_leased_device_is_busy_until_released(lab: EmulatedLab) -> None:
    first, second = (Device(lab.inventory.get("emu-a")) for _ in range(2))
    try:
        with Lease(first, "run-1", timeout=5):
            holder = holder_of(second)
            assert holder is not None and holder.run_id == "run-1" and "@" in holder.holder
            started = time.monotonic()
            with pytest.raises(DeviceBusy, match=r"leased by .*run-1"):
                Lease(second, "run-2", timeout=1).acquire()
            assert time.monotonic() - started < 4
        assert holder_of(second) is None
        with Lease(second, "run-2", timeout=1):
            # The holder's connection dies (a killed runner): the device frees itself.
            second.ssh.close()
            time.sleep(0.3)
            assert holder_of(first) is None
    finally:
        first.close()
        second.close()


def test_two_runs_at_once_never_overlap_on_a_device(lab: EmulatedLab, device_a: Device, device_b: Device,
                                                   tmp_path: Path) -> None:
    for d in (device_a, device_b):
        d.run(f"rm -f {d.workdir}/lease-intervals", timeout=10)
    (tmp_path / "test_rec.py").write_text("\n".join(RECORDING_TEST.format(n=n) for n in range(3)))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_rec.py"),
               "--hil-devices", str(lab.inventory.path), "--hil-lease-timeout", "120"]
    # One run leases for the whole run; the other is pytest-xdist, whose workers lease per run of tests.
    runs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
            for c in (command, [*command, "-n", "2"])]
    outputs = [r.communicate(timeout=180)[0] for r in runs]
    assert all(r.returncode == 0 for r in runs), outputs
    for d in (device_a, device_b):
        intervals = sorted(tuple(map(float, line.split())) for line in
                           d.run(f"cat {d.workdir}/lease-intervals", timeout=10).stdout.splitlines())
        assert len(intervals) == 6  # 3 tests x 2 runs
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end, f"{d.name}: two runs overlapped: {intervals}"


def test_killing_a_run_frees_its_leases(lab: EmulatedLab, device_a: Device, tmp_path: Path) -> None:
    (tmp_path / "test_hold.py").write_text("import time\n\ndef test_hold(device):\n    time.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(tmp_path / "test_hold.py"), "--hil-devices", str(lab.inventory.path),
                            "--hil-device", "emu-a"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        for _ in range(100):
            if holder_of(device_a) is not None:
                break
            time.sleep(0.2)
        assert holder_of(device_a) is not None
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    started = time.monotonic()
    with Lease(device_a, "next-run", timeout=10):
        waited = time.monotonic() - started
    assert waited < device_a.config.ssh.connect_timeout


def test_hil_lease_holds_a_device_around_a_command(lab: EmulatedLab) -> None:
    hil = [sys.executable, "-m", "hil.cli", "--devices", str(lab.inventory.path)]
    inner = " ".join([*hil, "devices", "list", "--leases"])
    out = subprocess.run([*hil, "lease", "emu-a", "--", "sh", "-c", inner], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("emu-a"))
    assert "manual-" in row  # the command ran while hil held emu-a
    assert "free" in next(line for line in out.stdout.splitlines() if line.startswith("emu-b"))


def test_a_lease_lost_with_the_connection_is_taken_again(tmp_path: Path, lab: EmulatedLab) -> None:
    """The run's connection drops (and reconnects): the device was free meanwhile, so the run leases it again
    before its next test instead of testing a device it no longer holds."""
    (tmp_path / "test_drop.py").write_text(
        "from hil.lease import holder_of\n\n"
        "def test_1_drop(device):\n"
        "    assert holder_of(device) is not None\n"
        "    device.ssh.close()  # as a network blip would: the lease's holder dies with the connection\n\n"
        "def test_2_held_again(device):\n"
        "    holder = holder_of(device)\n"
        "    assert holder is not None, 'the device is not leased any more'\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:randomly",
                          "test_drop.py", "--hil-devices", str(lab.inventory.path), "--hil-device", "emu-a"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "lease was lost with its connection" in run.stdout + run.stderr



def test_devices_check_leaves_a_leased_devices_console_alone(lab: EmulatedLab,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    holder = Device(lab.inventory.get("emu-b"))
    try:
        with Lease(holder, "someone-else", timeout=5):
            holder.console("true", timeout=15)  # the holder has the console open, as a run's test would
            assert cli_main(["--devices", str(lab.inventory.path), "devices", "check", "emu-b"]) == 0
    finally:
        holder.close()
    out = capsys.readouterr().out
    assert "leased by" in out and "run someone-else" in out and "serial console not checked" in out
    assert "port busy" not in out


def _waited(message: str) -> float:
    found = re.search(r"after (\d+\.\d) s", message)
    assert found, message
    return float(found.group(1))


def test_busy_says_the_time_really_waited(lab: EmulatedLab) -> None:
    first, second = (Device(lab.inventory.get("emu-a")) for _ in range(2))
    try:
        with Lease(first, "run-1", timeout=5):
            started = time.monotonic()
            with pytest.raises(DeviceBusy, match=r"leased by .*run-1.*still busy after") as info:
                Lease(second, "run-2", timeout=1.5).acquire()
            waited = time.monotonic() - started
            assert 1.4 <= _waited(str(info.value)) <= waited + 0.05
            assert "--hil-lease-timeout 1.5 s" in str(info.value)
            with pytest.raises(DeviceBusy, match="could not be leased together") as together:
                lease_together([second], "run-2", timeout=1.0)
            assert 1.0 <= _waited(str(together.value)) < 4.0
    finally:
        first.close()
        second.close()


def test_a_lease_lock_that_cannot_be_made_says_so_at_once(lab: EmulatedLab) -> None:
    # /proc takes no new directory, not even from root: mkdir fails, nobody holds anything.
    config = dataclasses.replace(lab.inventory.get("emu-a"), workdir="/proc/hil-no-such-dir")
    device = Device(config)
    try:
        started = time.monotonic()
        with pytest.raises(LeaseUnavailable) as info:
            Lease(device, "run-1", timeout=60).acquire()
        assert time.monotonic() - started < 5  # at once, not after the 60 s a busy lock would get
        message = str(info.value)
        assert "/proc/hil-no-such-dir/.hil/lease.lock" in message and "as user 'root'" in message
        assert re.search(r"\[Errno \d+\] E[A-Z]+: mkdir", message), message
        assert "busy" not in message and not isinstance(info.value, DeviceBusy)
        assert isinstance(info.value, InfraError)
    finally:
        device.close()


def test_a_non_root_user_who_cannot_write_the_workdir_is_told_so(handbuilt: HandBuilt) -> None:
    config = dataclasses.replace(load_inventory(handbuilt.devices_toml).get("edge-01"), workdir="/root/hil")
    device = Device(config)
    try:
        started = time.monotonic()
        with pytest.raises(LeaseUnavailable) as info:
            Lease(device, "run-1", timeout=300).acquire()
        assert time.monotonic() - started < 10
        message = str(info.value)
        assert "/root/hil/.hil/lease.lock" in message and f"as user '{handbuilt.user}'" in message
        assert "[Errno 13] EACCES" in message and "Permission denied" in message, message
        assert f"writable by '{handbuilt.user}'" in message
    finally:
        device.close()
