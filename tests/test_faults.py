"""Faults on the emulated test lab: applied for real, always undone, and never touching anything else."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fixtures.synthetic import DEMO_SIGNING_KEY, make_artifact
from hil import faults
from hil.artifacts import load_artifact, load_public_key
from hil.config import BecomeConfig
from hil.deploy import deploy
from hil.device import Device
from hil.errors import CapabilityMissing, InfraError
from hil.lab import EmulatedLab

pytest_plugins = ["pytester"]  # also when this module runs alone
pytestmark = pytest.mark.usefixtures("lab")
TRUSTED = [load_public_key(DEMO_SIGNING_KEY.with_suffix(".pub"))]


def _host_rules() -> str:
    return subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout


def _device_rules(device: Device) -> str:
    return device.run("iptables -S; tc qdisc show", timeout=15, root=True).stdout


def _clean(device: Device) -> None:
    rules = _device_rules(device)
    assert "hil-fault" not in rules and "tbf" not in rules, rules
    assert faults.pending(device) == []


def test_network_drop_cuts_the_device_off_and_comes_back(device_a: Device, device_b: Device) -> None:
    host_before, b_before = _host_rules(), _device_rules(device_b)
    with faults.network_drop(device_a, max_seconds=60) as fault:
        started = time.monotonic()
        with pytest.raises(InfraError):
            device_a.run("true", timeout=1)
        assert time.monotonic() - started < 5  # fails fast, never hangs
        assert "hil-fault" in device_a.console("iptables -S", timeout=10).stdout  # the console still works
        assert device_b.run("hostname", timeout=10).stdout == "emu-b\n"  # the other device is untouched
        assert _host_rules() == host_before and _device_rules(device_b) == b_before  # and so is the host
    assert fault.event.reverted_by == "serial" and fault.event.reverted_at
    assert device_a.run("hostname", timeout=15).stdout == "emu-a\n"
    _clean(device_a)


def test_partition_heals_itself_after_its_duration(device_a: Device) -> None:
    with faults.partition(device_a, seconds=2):
        time.sleep(4)  # the device's own dead-man undid it meanwhile
        assert device_a.run("echo back", timeout=10).stdout == "back\n"
    _clean(device_a)


def test_packet_loss_during_deploy_still_completes_and_verifies(device_a: Device, tmp_path: Path) -> None:
    artifact = load_artifact(make_artifact(tmp_path / "lossy", name="lossy", padding_floats=2**19))  # 2 MiB
    device_a.run(f"rm -rf {device_a.workdir}/models/lossy", timeout=30, check=True)
    with faults.packet_loss(device_a, 0.2, max_seconds=120) as fault:
        assert "statistic" in device_a.console("iptables -S", timeout=10).stdout
        result = deploy(device_a, artifact, TRUSTED, timeout=90)
    assert result.sha256 == artifact.manifest.sha256 and fault.event.params == {"rate": 0.2}
    assert device_a.run(f"sha256sum {result.model_path}", timeout=30).stdout.split()[0] == artifact.manifest.sha256
    _clean(device_a)


def test_bandwidth_cap_slows_an_upload(device_a: Device, tmp_path: Path) -> None:
    artifact = load_artifact(make_artifact(tmp_path / "slow", name="slow", padding_floats=2**18))  # 1 MiB
    device_a.run(f"rm -rf {device_a.workdir}/models/slow", timeout=30, check=True)
    with faults.bandwidth_cap(device_a, kbit=2000, max_seconds=120):
        result = deploy(device_a, artifact, TRUSTED, timeout=90)
    # Unthrottled, 1 MiB takes ~10 ms here. Ingress is capped by dropping packets over the rate (no netem or
    # ingress shaping on this kernel), which TCP turns into roughly the cap, not exactly it: ~1.5 s for 1 MiB.
    assert result.upload_seconds > 0.8, f"{result.upload_seconds:.2f} s: the cap did not bite"
    _clean(device_a)


def test_clock_step_and_drift_move_only_the_wall_clock(device_a: Device) -> None:
    with faults.clock_step(device_a, 3600):
        assert device_a.clock_offset().offset == pytest.approx(3600, abs=1)
        assert device_a.facts().clock.offset == pytest.approx(3600, abs=1)  # facts see it too
    assert abs(device_a.clock_offset().offset) < 1
    code = ("import time; w, m = time.time(), time.monotonic(); time.sleep(1.0); "
            "print(time.time() - w, time.monotonic() - m)")
    with faults.clock_drift(device_a, factor=2.0):
        wall, mono = (float(x) for x in device_a.run(f'python3 -c "{code}"', timeout=20).stdout.split())
    assert wall == pytest.approx(2.0, rel=0.15) and mono == pytest.approx(1.0, rel=0.15)
    _clean(device_a)


def test_disk_fill_leaves_exactly_what_was_asked(device_b: Device) -> None:
    def free() -> int:
        return int(device_b.run(f"df -B1 --output=avail {device_b.workdir} | tail -1", timeout=15).stdout)

    before = free()
    with faults.disk_fill(device_b, leave_bytes=2**20):
        assert abs(free() - 2**20) <= 64 * 1024
        assert device_b.run(f"head -c 4194304 /dev/zero > {device_b.workdir}/big", timeout=30).exit_status != 0
    device_b.run(f"rm -f {device_b.workdir}/big", timeout=15)
    assert abs(free() - before) <= 64 * 1024
    _clean(device_b)


def test_a_device_that_cannot_take_a_fault_says_why(device_a: Device) -> None:
    # Logged in as root here, so make one that may not become root: it must refuse, not half-apply.
    no_root = Device(dataclasses.replace(device_a.config, become=BecomeConfig("none")))
    no_root._login = (1000, "/home/nobody")  # as if logged in as an ordinary user
    with pytest.raises(CapabilityMissing, match="network_drop fault needs root"), faults.network_drop(no_root):
        pass
    _clean(device_a)


# -- reliability: the host dies while a fault is applied ------------------------------------------


APPLY_AND_HANG = """
import sys, time
from hil.config import load_inventory
from hil.device import Device
from hil import faults
device = Device(load_inventory(sys.argv[1]).get("emu-a"))
fault = {kind}
fault.__enter__()
print("applied", flush=True)
time.sleep(600)
"""


def _killed_while_applied(lab: EmulatedLab, fault_expr: str) -> None:
    script = textwrap.dedent(APPLY_AND_HANG.format(kind=fault_expr))
    proc = subprocess.Popen([sys.executable, "-c", script, str(lab.inventory.path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "applied"
    finally:
        proc.kill()  # SIGKILL: no __exit__, no finally, nothing
        proc.wait()


@pytest.mark.parametrize("fault_expr", [
    "faults.network_drop(device, max_seconds=3)",
    "faults.packet_loss(device, 0.5, max_seconds=3)",
    "faults.bandwidth_cap(device, 500, max_seconds=3)",
    "faults.flapping(device, down_s=1, up_s=1, cycles=100, max_seconds=3)",
])
def test_sigkill_during_a_network_fault_the_dead_man_restores(lab: EmulatedLab, device_a: Device,
                                                             fault_expr: str) -> None:
    _killed_while_applied(lab, fault_expr)
    time.sleep(4.5)
    assert device_a.run("echo restored", timeout=10).stdout == "restored\n"
    _clean(device_a)


@pytest.mark.parametrize("fault_expr, check", [
    ("faults.disk_fill(device, leave_bytes=4 * 2**20)", "ls /var/lib/hil/.hil/ | grep -c fill- || true"),
    ("faults.clock_step(device, -86400)", "cat $FAKETIME_TIMESTAMP_FILE"),
])
def test_sigkill_leaves_it_for_the_next_runs_sweep(lab: EmulatedLab, device_a: Device, fault_expr: str,
                                                   check: str) -> None:
    before = device_a.run(check, timeout=10).stdout
    _killed_while_applied(lab, fault_expr)
    assert device_a.run(check, timeout=10).stdout != before  # still applied: nobody undid it
    [left] = faults.pending(device_a)
    assert faults.sweep(device_a)[0].id == left.id
    assert device_a.run(check, timeout=10).stdout == before
    _clean(device_a)


def test_a_run_undoes_what_a_crashed_run_left_and_says_so(lab: EmulatedLab, device_a: Device,
                                                          pytester: pytest.Pytester) -> None:
    _killed_while_applied(lab, "faults.disk_fill(device, leave_bytes=8 * 2**20)")
    assert faults.pending(device_a)
    pytester.makepyfile(test_x="def test_x(device):\n    assert device.name\n")
    result = pytester.runpytest("--hil-devices", str(lab.inventory.path), "--hil-device", "emu-a")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*faults an earlier run left applied, undone before testing*",
                                 "emu-a: disk_fill*"])
    _clean(device_a)


def test_a_sweep_spares_the_faults_of_a_run_that_is_still_alive(lab: EmulatedLab, device_a: Device) -> None:
    sweep_elsewhere = ("import sys; from hil.config import load_inventory; from hil.device import Device; "
                       "from hil import faults; d = Device(load_inventory(sys.argv[1]).get('emu-a')); "
                       "print(len(faults.sweep(d)))")
    with faults.disk_fill(device_a, leave_bytes=16 * 2**20) as fault:
        other = subprocess.run([sys.executable, "-c", sweep_elsewhere, str(lab.inventory.path)],
                               capture_output=True, text=True, timeout=60)
        assert other.stdout.strip() == "0", other.stderr  # another run's start must not undo a live fault
        assert [r.id for r in faults.pending(device_a)] == [fault.id]
        cleared = subprocess.run([sys.executable, "-m", "hil.cli", "--devices", str(lab.inventory.path), "faults",
                                  "clear", "emu-a"], capture_output=True, text=True, timeout=60)
        assert cleared.returncode == 0 and fault.id in cleared.stdout  # but an explicit clear does
    _clean(device_a)


def test_flapping_goes_down_and_up_on_schedule(device_a: Device) -> None:
    # Down longer than a command's timeout plus the answer grace (0.5 + 2 s), so a command sent while the
    # link is down fails instead of being answered once it is back.
    with faults.flapping(device_a, down_s=3.5, up_s=1.5, cycles=2, max_seconds=30):
        seen = set()
        end = time.monotonic() + 9.0
        while time.monotonic() < end:
            try:
                device_a.run("true", timeout=0.5)
                seen.add("up")
            except InfraError:
                seen.add("down")
                device_a.ssh.close()
            time.sleep(0.2)
    assert seen == {"up", "down"}
    _clean(device_a)


def test_delay_needs_netem_and_says_so_where_there_is_none(device_a: Device) -> None:
    # This kernel has no netem (LAB-FACTS): the fault must refuse with the reason, not pretend.
    with pytest.raises(CapabilityMissing, match="no netem qdisc"), faults.delay(device_a, 50, 10):
        pass
    _clean(device_a)


# -- an undo is proven, not assumed -------------------------------------------------------------


def _fake_undo(device: Device, rec: faults.FaultRecord, undo: str) -> None:
    """Replace a fault's undo with `undo` (the read-back check after it stays), as a broken undo would be."""
    from hil.faults.ledger import _paths, undo_file

    _, script = _paths(device, rec.id)
    device.run(f"cat > {script}", stdin=undo_file(rec, undo).encode(), timeout=15, check=True)


def test_an_undo_that_leaves_the_fault_is_a_failure_and_keeps_the_entry(device_a: Device) -> None:
    from hil.faults.ledger import UndoUnproven

    fault = faults.packet_loss(device_a, 0.01, max_seconds=60)
    fault.__enter__()
    assert fault.record is not None
    _fake_undo(device_a, fault.record, "true")  # "succeeds", removes nothing (as `...; rm -f` did)
    with pytest.raises(UndoUnproven, match="still there after its undo"):
        faults.ledger.revert(device_a, fault.record)
    assert [r.id for r in faults.pending(device_a)] == [fault.id]  # not forgotten: the dead-man may still try
    assert f"hil-fault:{fault.id}" in _device_rules(device_a)
    _fake_undo(device_a, fault.record, "exit 7")  # an undo step that fails: its own status counts
    with pytest.raises(UndoUnproven, match=r"failed \(exit 7\)"):
        faults.ledger.revert(device_a, fault.record)
    # The next run start clears it from the kernel's state and only then forgets it.
    assert [r.id for r in faults.sweep(device_a)] == [fault.id]
    _clean(device_a)
    assert device_a.run("pgrep -f 'faults/packet_los[s]' || true", timeout=15).stdout == ""  # its dead-man stopped


def test_the_dead_man_forgets_a_fault_only_when_it_is_gone(device_a: Device) -> None:
    kept = faults.packet_loss(device_a, 0.01, max_seconds=1.5)
    kept.__enter__()
    assert kept.record is not None
    _fake_undo(device_a, kept.record, "true")
    gone = faults.bandwidth_cap(device_a, 4000, max_seconds=1.5)
    gone.__enter__()
    time.sleep(4)  # both dead-men fired
    assert [r.id for r in faults.pending(device_a)] == [kept.id]  # its undo did not work: still in the ledger
    assert f"hil-fault:{gone.id}" not in _device_rules(device_a) and "7e57:" not in _device_rules(device_a)
    faults.sweep(device_a)
    _clean(device_a)


def test_hils_qdisc_carries_its_handle(device_a: Device) -> None:
    with faults.bandwidth_cap(device_a, 4000, max_seconds=60):
        assert re.search(r"qdisc tbf 7e57: dev \S+ root", device_a.run("tc qdisc show", timeout=15, root=True).stdout)
    _clean(device_a)


def test_the_console_becomes_root_with_a_password_sudo_and_never_shows_it(device_b: Device) -> None:
    password = device_b.config.become.password
    assert password is not None and device_b.login()[0] != 0  # the profile this is about
    assert device_b.console("id -u", timeout=20).stdout.strip() != "0"
    assert device_b.console("id -u", timeout=20, root=True).stdout.strip() == "0"
    assert device_b.console("exit 3", timeout=20, root=True).exit_status == 3  # the command's own status
    secret = password.reveal()
    import base64

    shown = device_b.serial.console_log.decode(errors="replace")
    assert secret not in shown and base64.b64encode(secret.encode()).decode()[:8] not in shown
    askpass = device_b.run(f"cat {device_b.workdir}/.hil-askpass", timeout=15).stdout
    assert secret not in askpass


def test_a_non_root_device_undoes_a_network_drop_over_its_console_with_sudo(device_b: Device) -> None:
    with faults.network_drop(device_b, max_seconds=60) as fault, pytest.raises(InfraError):
        device_b.run("true", timeout=1)
    assert fault.event.reverted_by == "serial"
    assert fault.record is not None and fault.record.root  # the privilege of its apply, recorded
    assert device_b.run("hostname", timeout=15).stdout == "emu-b\n"
    _clean(device_b)


def test_devices_check_clears_and_reports_a_leftover_found_only_in_the_kernel(lab: EmulatedLab,
                                                                              device_a: Device) -> None:
    _killed_while_applied(lab, "faults.packet_loss(device, 0.01, max_seconds=60)")
    [left] = faults.pending(device_a)
    device_a.run(f"rm -rf {device_a.workdir}/.hil/faults", timeout=15, check=True)  # the ledger lost
    listed = subprocess.run([sys.executable, "-m", "hil.cli", "--devices", str(lab.inventory.path), "faults",
                             "list", "emu-a"], capture_output=True, text=True, timeout=60)
    assert f"{left.id} packet_loss (found in the kernel, no ledger entry" in listed.stdout, listed
    checked = subprocess.run([sys.executable, "-m", "hil.cli", "--devices", str(lab.inventory.path), "devices",
                              "check", "emu-a"], capture_output=True, text=True, timeout=120)
    assert f"cleared a leftover: packet_loss {left.id}: found in the kernel" in checked.stdout, checked
    assert checked.returncode == 0, checked
    _clean(device_a)
    assert device_a.run("pgrep -f 'faults/packet_los[s]' || true", timeout=15).stdout == ""  # its dead-man too
