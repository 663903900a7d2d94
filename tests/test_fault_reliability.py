"""Reliability of fault undo: whatever happens to the run, the next run start leaves 0 leftovers.

For every fault kind and every device profile, two ways a run can fail to undo a fault:
- "sigkill": the process that applied it is SIGKILLed mid-fault (no __exit__, no finally);
- "undo-fails": its preferred undo path fails (the console gone, SSH refused), then it dies.
Then the test does what the next run start does (the sweep) and reads the device's state DIRECTLY,
not through hil: iptables and qdiscs in the device's network namespace, its workdir through its mount
namespace, the faketime control file on the host, its processes. Every trace counts as a leftover.

Run with `pytest -s` to see the figure line (kinds x kill points x profiles, leftovers found).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil import faults
from hil.config import load_inventory
from hil.device import Device
from hil.errors import CapabilityMissing, InfraError
from hil.faults.ledger import QDISC_HANDLE, TAG
from hil.lab import EmulatedLab, network, services
from tests.handbuilt import EDGE_NS, HOME, HandBuilt

pytestmark = pytest.mark.lab  # root: skipped otherwise (tests/conftest.py)


@dataclass(frozen=True)
class Profile:
    """A device as the test reaches it around hil: its namespaces and files on this machine."""

    name: str
    devices_toml: Path
    device: str  # its name in devices_toml
    netns: str
    workdir: str  # as the device sees it
    clock_file: Path | None  # the libfaketime control file, where the device has one


@pytest.fixture
def root_emulated(lab: EmulatedLab) -> Profile:
    name = "emu-a"
    return Profile("emulated-root", lab.inventory.path, name, network.netns_name(lab.config.name, name),
                   "/var/lib/hil", services.clock_file(lab.inventory.lab, name))


@pytest.fixture
def nonroot_emulated(lab: EmulatedLab) -> Profile:
    name = "emu-b"  # a non-root login, sudo with a password, a console that logs in as that user
    return Profile("emulated-nonroot", lab.inventory.path, name, network.netns_name(lab.config.name, name),
                   "/var/lib/hil", services.clock_file(lab.inventory.lab, name))


@pytest.fixture
def handbuilt_nonroot(handbuilt: HandBuilt) -> Profile:
    return Profile("handbuilt-nonroot", handbuilt.devices_toml, handbuilt.target_host, EDGE_NS, f"{HOME}/hil", None)


PROFILES = ["root_emulated", "nonroot_emulated", "handbuilt_nonroot"]

# kind -> (the fault, as the applying process makes it; whether it cuts the device off SSH)
# Faults that cut the device off have a short dead-man: the next run cannot reach the device before
# it fired. The others a long one, so the sweep must undo them (and stop their dead-man).
KINDS: dict[str, tuple[str, bool]] = {
    "network_drop": ("faults.network_drop(device, max_seconds=4)", True),
    "partition": ("faults.partition(device, seconds=4)", True),
    "packet_loss": ("faults.packet_loss(device, 0.05, max_seconds=60)", False),
    "bandwidth_cap": ("faults.bandwidth_cap(device, 2000, max_seconds=60)", False),
    "flapping": ("faults.flapping(device, down_s=0.3, up_s=3, cycles=100, max_seconds=60)", False),
    "delay": ("faults.delay(device, 50, 10, max_seconds=60)", False),
    "clock_step": ("faults.clock_step(device, -86400)", False),
    "clock_drift": ("faults.clock_drift(device, factor=2.0)", False),
    "disk_fill": ("faults.disk_fill(device, leave_bytes=4 * 2**20)", False),
}
KILL_POINTS = ["sigkill", "undo-fails"]

# Applies the fault, then (undo-fails) breaks both ways in for real and tries the preferred undo,
# and hangs until SIGKILLed. Prints "applied <id>" and, for undo-fails, "undo-failed <why>".
APPLIER = """
import dataclasses, sys, time
from hil import faults
from hil.config import load_inventory
from hil.device import Device
from hil.errors import CapabilityMissing, InfraError
from hil.transport.serial import SerialTransport
from hil.transport.ssh import SshTransport
toml, name, point = sys.argv[1:4]
device = Device(load_inventory(toml).get(name))
fault = {fault}
try:
    fault.__enter__()
except CapabilityMissing as exc:
    print("skip", exc, flush=True)
    sys.exit(0)
print("applied", fault.id, flush=True)
if point == "undo-fails":
    config = device.config
    device.close()
    if config.serial is not None:  # the console gone: its port no longer there
        device._serial = SerialTransport(name, dataclasses.replace(config.serial, port="/nonexistent/hil-console"))
    # SSH refused: nothing listens on loopback port 1
    refused = dataclasses.replace(config.ssh, host="127.0.0.1", port=1, config_file=None, jump=None,
                                  bind_interface=None, connect_timeout=2, reconnect_timeout=0)
    device.ssh = SshTransport(name, refused, config.python)
    try:
        fault.revert_now()
        print("undo-succeeded", flush=True)
    except InfraError as exc:
        print("undo-failed", str(exc).replace(chr(10), " ")[:300], flush=True)
time.sleep(600)
"""


def _sh(*args: str, timeout: float = 30) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=True).stdout


def _in_device_mounts(profile: Profile, script: str) -> str:
    """Run `script` in the device's mount namespace (which holds its workdir), as seen through one of its
    processes: the device's init first (it lives as long as the device), else an sshd. A process can end
    between being listed and being entered (a session's sshd): then the next one is tried."""
    pids = sorted(int(p) for p in _sh("ip", "netns", "pids", profile.netns).split())

    def rank(pid: int) -> int:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return 9
        return 0 if b"device_init.py" in cmdline else 1 if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd" \
            else 9

    ranked = {pid: rank(pid) for pid in pids}
    candidates = [pid for pid in sorted(pids, key=ranked.__getitem__) if ranked[pid] < 9]
    failures = []
    for pid in candidates:
        proc = subprocess.run(["nsenter", "-t", str(pid), "-m", "sh", "-c", script], capture_output=True, text=True,
                              timeout=30)
        if proc.returncode == 0:
            return proc.stdout
        failures.append(f"pid {pid}: exit {proc.returncode} {proc.stderr.strip()[:200]}")
    raise AssertionError(f"cannot enter the mount namespace of the device in netns {profile.netns}: "
                         f"{'; '.join(failures) or 'no init or sshd process in it'}")


@dataclass(frozen=True)
class Direct:
    """The device's state, read around hil."""

    rules: list[str]
    qdiscs: list[str]
    fill_files: list[str]
    ledger: list[str]
    processes: list[str]
    clock: str | None

    def leftovers(self, fault_id: str, clock_before: str | None) -> list[str]:
        found = [*self.rules, *self.qdiscs, *self.fill_files, *self.ledger]
        # A flapping loop (tagged), a dead-man still waiting (it names the fault's id).
        found += [p for p in self.processes if TAG in p or (fault_id and fault_id in p)]
        if clock_before is not None and self.clock != clock_before:
            found.append(f"faketime control holds {self.clock!r}, not {clock_before!r}")
        return found


def read_directly(profile: Profile) -> Direct:
    ns = ("ip", "netns", "exec", profile.netns)
    rules = [line for line in _sh(*ns, "iptables-save").splitlines() if TAG in line]
    qdiscs = [line for line in _sh(*ns, "tc", "qdisc", "show").splitlines()
              if f" {QDISC_HANDLE} " in line or " tbf " in line or " netem " in line]
    # Fill files lie in .hil, the ledger in .hil/faults (.hil also holds the lease's lease.json: not a fault).
    listing = _in_device_mounts(profile, f"ls -1a {profile.workdir}/.hil 2>/dev/null; echo ////; "
                                         f"ls -1a {profile.workdir}/.hil/faults 2>/dev/null; true")
    names, _, ledger = listing.partition("////")
    processes = []
    for pid in _sh("ip", "netns", "pids", profile.netns).split():
        try:
            processes.append(f"{pid} " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    clock = profile.clock_file.read_text().strip() if profile.clock_file and profile.clock_file.exists() else None
    return Direct(rules, qdiscs, [n for n in names.split() if n.startswith("fill-")],
                  [n for n in ledger.split() if n.endswith((".json", ".undo.sh"))], processes, clock)


def _scrub(profile: Profile, fault_id: str, clock_before: str | None) -> None:
    """Clear, around hil, what a failed case left, so that one failure does not fail every later case too."""
    ns = ("ip", "netns", "exec", profile.netns)
    kept = "".join(f"{line}\n" for line in _sh(*ns, "iptables-save").splitlines() if TAG not in line)
    subprocess.run([*ns, "iptables-restore"], input=kept, text=True, check=True, timeout=30)
    for line in _sh(*ns, "tc", "qdisc", "show").splitlines():
        if " root " in line and (f" {QDISC_HANDLE} " in line or " tbf " in line):
            subprocess.run([*ns, "tc", "qdisc", "del", "dev", line.split()[4], "root"], timeout=30, check=False)
    for process in read_directly(profile).processes:
        if TAG in process or (fault_id and fault_id in process):
            subprocess.run(["kill", "-9", process.split()[0]], timeout=30, check=False)
    _in_device_mounts(profile, f"rm -f {profile.workdir}/.hil/fill-* {profile.workdir}/.hil/faults/*")
    if profile.clock_file is not None and clock_before is not None:
        profile.clock_file.write_text(clock_before + "\n")


def _device(profile: Profile) -> Device:
    return Device(load_inventory(profile.devices_toml).get(profile.device))


def _wait_reachable(device: Device, seconds: float) -> None:
    """Until the device answers over SSH (its dead-man healed it), or fail saying how long was waited."""
    started = time.monotonic()
    while True:
        try:
            device.run("true", timeout=3, check=True)
            return
        except InfraError:
            device.ssh.close()
            waited = time.monotonic() - started
            assert waited < seconds, f"{device.name} did not answer over SSH within {waited:.1f} s"
            time.sleep(0.5)


FIGURE: dict[tuple[str, str, str], int | str] = {}  # (profile, kind, kill point) -> leftovers, or a skip reason


@pytest.fixture(scope="module", autouse=True)
def figure() -> Iterator[None]:
    yield
    done = {k: v for k, v in FIGURE.items() if isinstance(v, int)}
    skipped = {k: v for k, v in FIGURE.items() if not isinstance(v, int)}
    kinds, points, profiles = ({k[i] for k in FIGURE} for i in (1, 2, 0))
    print(f"\nfault undo reliability: {len(kinds)} fault kinds x {len(points)} kill points x {len(profiles)} "
          f"profiles = {len(FIGURE)} cases, {len(done)} run, leftovers found after the next run start: "
          f"{sum(done.values())}"
          f" ({len(skipped)} cases skipped: "
          + "; ".join(sorted({f"{k[0]}/{k[1]}: {str(v)[:90]}" for k, v in skipped.items()})) + ")")


@pytest.mark.parametrize("point", KILL_POINTS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("profile_fixture", PROFILES)
def test_no_leftovers_after_the_next_run_start(profile_fixture: str, kind: str, point: str,
                                               request: pytest.FixtureRequest) -> None:
    profile: Profile = request.getfixturevalue(profile_fixture)
    before = read_directly(profile)
    assert before.leftovers("", None) == [], f"the device was not clean before the test: {before}"
    applied: list[str] = []  # the fault's id, once the applying process said it
    try:
        _kill_then_sweep(profile, kind, point, before, applied)
    except pytest.skip.Exception:
        raise
    except BaseException:
        # Whatever failed (the device, this test's own reading of it), the next case must start clean.
        _scrub(profile, applied[0] if applied else "", before.clock)
        raise


def _kill_then_sweep(profile: Profile, kind: str, point: str, before: Direct, applied: list[str]) -> None:
    expression, cuts_off = KINDS[kind]
    script = textwrap.dedent(APPLIER.format(fault=expression))
    proc = subprocess.Popen([sys.executable, "-c", script, str(profile.devices_toml), profile.device, point],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        if first.startswith("skip"):
            FIGURE[(profile.name, kind, point)] = first.removeprefix("skip ")
            pytest.skip(first.removeprefix("skip "))
        if not first:
            proc.wait(timeout=30)
            raise AssertionError(f"the applying process died: {proc.stderr.read()[-800:] if proc.stderr else ''}")
        fault_id = first.split()[1]
        applied.append(fault_id)
        assert first == f"applied {fault_id}"
        applied = read_directly(profile)
        # The fault is really there (else there is nothing to prove): some trace of it, or the clock moved.
        assert applied.leftovers(fault_id, before.clock), f"{kind} left no trace at all while applied"
        if point == "undo-fails":
            answer = proc.stdout.readline().strip()
            assert answer.startswith("undo-failed"), answer
            # The bug this guards against: a failed undo must not forget the fault.
            assert f"{fault_id}.json" in read_directly(profile).ledger, "a failed undo removed the ledger entry"
    finally:
        proc.kill()  # SIGKILL: no __exit__, no finally, nothing
        proc.wait()
    device = _device(profile)
    try:
        if cuts_off:
            _wait_reachable(device, 4 + 20)  # the dead-man's 4 s, and a margin
        faults.sweep(device)  # what the next run start does (the plugin's and `hil devices check`'s sweep)
    finally:
        device.close()
    after = read_directly(profile)
    left = after.leftovers(fault_id, before.clock)
    FIGURE[(profile.name, kind, point)] = len(left)
    assert left == [], f"{kind} / {point} on {profile.name}: leftovers after the next run start: {left}"


def test_a_leftover_with_no_ledger_at_all_is_found_from_the_kernel(root_emulated: Profile) -> None:
    """The ledger lost (or never written): the kernel's state still shows hil's traces, and the sweep
    clears them and reports them."""
    device = _device(root_emulated)
    try:
        try:
            fault = faults.bandwidth_cap(device, 2000, max_seconds=60).__enter__()
            fill = faults.disk_fill(device, leave_bytes=8 * 2**20).__enter__()
        except CapabilityMissing as exc:
            pytest.skip(str(exc))
        device.run(f"rm -rf {device.workdir}/.hil/faults", timeout=15, check=True, root=True)  # the ledger gone
        assert faults.pending(device) == []
        swept = faults.sweep(device)
    finally:
        device.close()
    assert {fault.id, fill.id} <= {r.id for r in swept}, swept
    assert any("found in the kernel" in r.describe() for r in swept)
    after = read_directly(root_emulated)
    assert after.leftovers(fault.id, None) == [] and after.leftovers(fill.id, None) == []
