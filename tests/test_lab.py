"""The emulated lab: idempotent up, real limits, its own clock, recovery from a stale lab, a clean down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.config import load_inventory
from hil.device import Device
from hil.errors import LabError
from hil.lab import EmulatedLab, cgroup, host, network
from tests.conftest import needs_root, write_devices

DOWN_LAB_TOML = """
[lab]
name = "hildown"
subnet = "10.77.2.0/24"

[[devices]]
name = "emu-down"
emulated = true
cpus = 0.5
memory = "128MiB"
disk = "16MiB"
workdir = "/var/lib/hil-down"
"""


def _init_pids(lab: EmulatedLab) -> dict[str, int | None]:
    return {d.name: host.read_pid(lab.config.dir / d.name / "init.pid") for d in lab.devices}


def test_up_is_idempotent(lab: EmulatedLab) -> None:
    before = _init_pids(lab)
    statuses = lab.up()
    assert all(s.up for s in statuses)
    assert _init_pids(lab) == before  # nothing was rebuilt


def test_limits_are_enforced(lab: EmulatedLab, device_b: Device) -> None:
    status = {s.name: s for s in lab.status()}["emu-b"]
    assert status.limits in ({"cpu.cfs_quota_us": "5000", "memory.limit_in_bytes": str(256 * 2**20)},
                             {"cpu.max": "5000 10000", "memory.max": str(256 * 2**20)})
    # The disk is really full at its size.
    full = device_b.run(f"dd if=/dev/zero of={device_b.workdir}/fill bs=1M count=64", timeout=30)
    try:
        assert full.exit_status != 0 and "No space left on device" in full.stderr
    finally:
        device_b.run(f"rm -f {device_b.workdir}/fill", timeout=10)
    # Memory past the limit gets the process killed, on the device only.
    hog = device_b.run("python3 -c 'x = bytearray(400 * 2**20); x[::4096] = b\"y\" * len(x[::4096])'", timeout=60)
    assert hog.exit_status in (137, -9, 9) or "MemoryError" in hog.stderr


def test_device_clock_moves_alone(lab: EmulatedLab, device_a: Device) -> None:
    host_before = time.time()
    lab.set_clock("emu-a", "+3600")
    try:
        offset = device_a.clock_offset()
        assert offset.offset == pytest.approx(3600, abs=1)
        # Python's timeouts keep working on a shifted clock (they use the true monotonic clock).
        code = "import time,threading,subprocess; time.sleep(0.2); threading.Lock().acquire(timeout=0.2); " \
               "subprocess.run(['sleep','5'], timeout=0.3)"
        result = device_a.run(f'python3 -c "{code}"', timeout=20)
        assert "TimeoutExpired" in result.stderr
    finally:
        lab.set_clock("emu-a", "+0")
    assert abs(time.time() - host_before) < 60  # the host clock did not move
    assert abs(device_a.clock_offset().offset) < 1


def test_console_lives_in_the_device_and_survives_network_loss(lab: EmulatedLab, device_a: Device) -> None:
    result = device_a.console(f"hostname; df -k {device_a.workdir} | tail -1", timeout=10)
    hostname, df_line = result.stdout.strip().splitlines()
    assert hostname == "emu-a"
    assert df_line.split()[1] == str(64 * 1024)  # the device's own 64 MiB disk, not the host's
    lab.set_link("emu-a", up=False)
    try:
        assert device_a.console("ip -br link show eth0", timeout=10).stdout.split()[1] in ("DOWN", "LOWERLAYERDOWN")
        assert device_a.console("echo out-of-band", timeout=10).stdout == "out-of-band\n"
    finally:
        lab.set_link("emu-a", up=True)


def test_device_has_its_own_process_table(device_a: Device) -> None:
    # A `kill -9 -1` or `pkill python` on the device (a fault, a careless test) must not reach the host.
    pid1 = device_a.run("cat /proc/1/cmdline | tr '\\0' ' '", timeout=10).stdout
    assert "import os, signal" in pid1 and "sshd" in pid1  # the device's own init, with sshd under it
    assert device_a.run(f"kill -0 {os.getpid()}", timeout=10).exit_status != 0
    assert str(os.getpid()) not in device_a.run("ps -eo pid", timeout=10).stdout.split()


def test_up_recovers_a_stale_device(lab: EmulatedLab, device_b: Device) -> None:
    # What CI finds after a killed session: kernel state still there, processes gone.
    pid = host.read_pid(lab.config.dir / "emu-b" / "init.pid")
    assert pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    assert not lab.is_up(["emu-b"])
    lab.up()
    assert lab.is_up()
    assert device_b.run("hostname", timeout=10).stdout == "emu-b\n"


def test_lab_host_checks_name_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        host.require_lab_host()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = host.shutil.which
    monkeypatch.setattr(host.shutil, "which",
                        lambda name, path=None: None if name == "socat" else real_which(name, path=path))
    with pytest.raises(LabError, match="apt-get install socat"):
        host.require_lab_host()


# -- down, and Ctrl-C during up ----------------------------------------------------------------


def _traces(lab_name: str, device: str) -> list[str]:
    """Everything of a lab that could outlive it: namespaces, links, cgroups, processes, mounts, state."""
    found = [f"netns {n}" for n in network.list_netns(lab_name)]
    found += [f"link {n}" for n in network.list_links(lab_name)]
    found += [f"cgroup {g.name}" for g in cgroup.find(f"{lab_name}-")]
    state = f"/run/hil/{lab_name}"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            mounts = (proc / "mountinfo").read_text()
        except OSError:
            continue
        if state in cmdline:
            found.append(f"process {proc.name}: {cmdline[:80]}")
        if f"hil-{device} " in mounts:
            found.append(f"mount hil-{device} in process {proc.name}")
    if Path(state).exists():
        found.append(f"state dir {state}")
    return found


@needs_root  # a lab of its own, up and down
def test_down_leaves_nothing(tmp_path: Path) -> None:
    lab = EmulatedLab(load_inventory(write_devices(tmp_path, DOWN_LAB_TOML)))
    lab.up()
    device = Device(lab.inventory.get("emu-down"))
    try:
        assert device.run("hostname", timeout=10).stdout == "emu-down\n"
        assert device.console("echo console", timeout=10).stdout == "console\n"
        assert _traces("hildown", "emu-down")  # the check sees a running lab
    finally:
        device.close()
        started = time.monotonic()
        lab.down()
    assert time.monotonic() - started < 5
    assert _traces("hildown", "emu-down") == []


@needs_root  # a lab of its own, up and down
@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3])
def test_ctrl_c_during_up_leaves_nothing_down_cannot_remove(tmp_path: Path, delay: float) -> None:
    devices = write_devices(tmp_path, DOWN_LAB_TOML)
    hil = [sys.executable, "-m", "hil.cli", "--devices", str(devices), "lab"]
    proc = subprocess.Popen([*hil, "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    down = subprocess.run([*hil, "down"], capture_output=True, text=True, timeout=30)
    assert down.returncode == 0, down.stderr
    assert _traces("hildown", "emu-down") == []


def test_reboot_restarts_the_device_and_keeps_its_disk(lab: EmulatedLab, device_b: Device) -> None:
    device_b.run(f"echo survives > {device_b.workdir}/marker", timeout=10, check=True)
    old_pid1_start = device_b.run("cut -d' ' -f22 /proc/1/stat", timeout=10).stdout
    assert device_b.console("echo before", timeout=10).stdout == "before\n"
    result = device_b.reboot(timeout=60)
    assert result.down_after is not None and result.down_after < result.seconds < 30
    assert device_b.run("cut -d' ' -f22 /proc/1/stat", timeout=10).stdout != old_pid1_start  # a new boot
    assert device_b.run(f"cat {device_b.workdir}/marker", timeout=10).stdout == "survives\n"  # disk kept
    assert device_b.console("hostname", timeout=10).stdout == "emu-b\n"  # the console came back too
    assert lab.is_up(["emu-b"])
    device_b.run(f"rm -f {device_b.workdir}/marker", timeout=10)


def test_each_device_has_its_own_dev_shm(device_a: Device, device_b: Device) -> None:
    """libfaketime names its shared memory after the PID, and each device numbers PIDs from 1: one
    /dev/shm for all would let two devices' processes collide (shm_open: File exists)."""
    def shm_of(device: Device) -> list[str]:
        return device.run("stat -c %d /dev/shm && df --output=source /dev/shm | tail -n 1", timeout=10,
                          check=True).stdout.split()

    a, b = shm_of(device_a), shm_of(device_b)
    host = [str(os.stat("/dev/shm").st_dev)]
    assert a[0] != b[0] and host[0] not in (a[0], b[0]), (a, b, host)
    assert a[1] == "hil-shm-emu-a" and b[1] == "hil-shm-emu-b"
