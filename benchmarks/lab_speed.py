"""How fast the emulated lab comes up and goes down, against the bare commands any such lab must run.

Run as root on the lab host:

    .venv/bin/python benchmarks/lab_speed.py [-n 3]

Uses a private two-device lab "hilbench" on 10.77.3.0/24 (and no other addresses), so it never
touches the default lab or the test lab. Each cycle times, taking turns so that load from other
work on the machine hits both alike:

  raw floor   the bare commands, done by hand: per device a netns and a veth pair (the minimum);
              and the full floor: a bridge, per device netns, veth, address, host key and a bare
              sshd started in the netns until it accepts a connection; then all of it removed;
  hil up      EmulatedLab.up() from nothing; then up() again when already up (must be a no-op);
  hil down    EmulatedLab.down().

The hilbench lab is always taken down at the end, and the script checks that nothing named
hilbench-* is left. Timings are printed, never asserted; exits 0 unless something broke.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hil.config import Inventory, load_inventory
from hil.errors import HilError
from hil.lab import EmulatedLab, network
from hil.lab import cgroup as lab_cgroup
from hil.lab.host import find_tool

log = logging.getLogger("benchmarks.lab_speed")

LAB = "hilbench"
SUBNET = ipaddress.IPv4Network("10.77.3.0/24")
UP_TARGET_S = 3.0
DOWN_TARGET_S = 2.0
SSHD_START_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
# Raw-floor devices sit at .20, .21: apart from hil's .10, .11 should a failed run leave one behind.
RAW_HOST_OFFSET = 20

BENCH_LAB_TOML = f"""
[lab]
name = "{LAB}"
subnet = "{SUBNET}"

[[devices]]
name = "emu-a"
tags = ["jetson"]
emulated = true
cpus = 1.0
memory = "512MiB"
disk = "64MiB"
workdir = "/var/lib/hil"

[[devices]]
name = "emu-b"
tags = ["rpi"]
emulated = true
cpus = 0.5
memory = "256MiB"
disk = "32MiB"
workdir = "/var/lib/hil"
"""


@dataclass
class Series:
    """Durations of one step, in seconds."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


# -- the raw floor ------------------------------------------------------------------------------


def sh(*args: str, stdin: str | None = None) -> None:
    """One host command; raises with its stderr when it fails."""
    proc = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")


def quiet(*args: str) -> None:
    """A clean-up command that may find nothing to clean."""
    subprocess.run(list(args), capture_output=True, timeout=COMMAND_TIMEOUT, check=False)


def raw_names(index: int, kind: str = "r") -> tuple[str, str, ipaddress.IPv4Address]:
    """Netns, host veth and address of raw-floor device `index`; `kind` keeps the two floors' names apart."""
    return f"{LAB}-{kind}{index}", f"{LAB}-{kind}v{index}", SUBNET.network_address + RAW_HOST_OFFSET + index


def raw_netns_veth_add(devices: int) -> None:
    """The minimum up: per device `ip netns add` and a veth pair into it."""
    ip = find_tool("ip")
    for index in range(devices):
        ns, veth, _ = raw_names(index, "n")
        sh(ip, "netns", "add", ns)
        sh(ip, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)


def raw_netns_veth_delete(devices: int) -> None:
    """The minimum down. The veth goes first, explicitly: `ip netns delete` only drops the name and the
    kernel destroys the namespace (and the veth in it) later, so the veth's name stays taken for a while."""
    ip = find_tool("ip")
    for index in range(devices):
        ns, veth, _ = raw_names(index, "n")
        sh(ip, "link", "delete", veth)
        sh(ip, "netns", "delete", ns)


@dataclass
class RawLab:
    """The fuller floor, done by hand: bridge, netns + veth + address + host key + bare sshd per device."""

    devices: int
    workdir: Path
    sshds: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{LAB}-rbr"

    def up(self) -> None:
        ip = find_tool("ip")
        sh(ip, "link", "add", self.bridge, "type", "bridge")
        sh(ip, "addr", "add", f"{SUBNET.network_address + 1}/{SUBNET.prefixlen}", "dev", self.bridge)
        sh(ip, "link", "set", self.bridge, "up")
        for index in range(self.devices):
            self._device_up(index)

    def _device_up(self, index: int) -> None:
        ip = find_tool("ip")
        ns, veth, address = raw_names(index)
        sh(ip, "netns", "add", ns)
        sh(ip, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh(ip, "link", "set", veth, "master", self.bridge, "up")
        sh(ip, "-n", ns, "-batch", "-",
           stdin=f"link set lo up\naddr add {address}/{SUBNET.prefixlen} dev eth0\nlink set eth0 up\n")
        key = self.workdir / f"host_key{index}"
        for old in (key, key.with_suffix(".pub")):
            old.unlink(missing_ok=True)
        sh(find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        config = self.workdir / f"sshd_config{index}"
        config.write_text(f"ListenAddress {address}\nHostKey {key}\nPidFile {self.workdir / f'sshd{index}.pid'}\n"
                          "UsePAM no\nStrictModes no\nPasswordAuthentication no\nAuthorizedKeysFile none\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        self.sshds.append(subprocess.Popen(
            [ip, "netns", "exec", ns, find_tool("sshd"), "-D", "-f", str(config), "-E",
             str(self.workdir / f"sshd{index}.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for_port(str(address), self.sshds[-1])

    def down(self) -> None:
        """Kill every process in the namespaces (the sshd and any session it forked), then remove the net."""
        ip = find_tool("ip")
        for proc in self.sshds:
            proc.kill()
        for index in range(self.devices):
            ns, _, _ = raw_names(index)
            pids = subprocess.run([ip, "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
            for pid in (int(p) for p in pids.split() if p.isdigit()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.sshds:
            proc.wait(COMMAND_TIMEOUT)
        self.sshds.clear()
        for index in range(self.devices):
            ns, veth, _ = raw_names(index)
            quiet(ip, "link", "delete", veth)  # first: see raw_netns_veth_delete
            quiet(ip, "netns", "delete", ns)
        quiet(ip, "link", "delete", self.bridge)


def wait_for_port(host: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SSHD_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bare sshd for {host} exited {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, 22), timeout=0.5):
            return
        time.sleep(0.01)
    raise RuntimeError(f"bare sshd for {host} did not listen within {SSHD_START_TIMEOUT:g} s")


# -- hil ----------------------------------------------------------------------------------------


def write_inventory(directory: Path) -> Inventory:
    path = directory / "devices.toml"
    path.write_text(BENCH_LAB_TOML)
    inventory = load_inventory(path)
    assert inventory.lab.name == LAB and inventory.lab.subnet == SUBNET
    return inventory


def sshd_pids(lab: EmulatedLab) -> dict[str, str]:
    """The recorded sshd pid of every device: an idempotent up must leave them alone."""
    out = {}
    for device in lab.devices:
        with contextlib.suppress(OSError):
            out[device.name] = (lab.config.dir / device.name / "init.pid").read_text().strip()
    return out


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def hil_cycle(lab: EmulatedLab, series: dict[str, Series]) -> None:
    series["up"].samples.append(timed(lab.up))
    if not lab.is_up():
        raise HilError(f"after up() the lab is not up: {lab.status()}")
    before = sshd_pids(lab)
    series["again"].samples.append(timed(lab.up))
    if sshd_pids(lab) != before:
        raise HilError(f"up() on a lab that was up rebuilt devices: sshd pids {before} -> {sshd_pids(lab)}")
    series["down"].samples.append(timed(lab.down))


def raw_cycle(devices: int, workdir: Path, series: dict[str, Series]) -> None:
    series["min_up"].samples.append(timed(lambda: raw_netns_veth_add(devices)))
    series["min_down"].samples.append(timed(lambda: raw_netns_veth_delete(devices)))
    raw = RawLab(devices, workdir)
    try:
        series["raw_up"].samples.append(timed(raw.up))
    finally:
        series["raw_down"].samples.append(timed(raw.down))


@contextlib.contextmanager
def always_down(lab: EmulatedLab) -> Iterator[None]:
    """Start from nothing, and leave nothing, whatever happens in between."""
    lab.down()
    try:
        yield
    finally:
        try:
            lab.down()
        except Exception:
            log.exception("taking the %s lab down failed", LAB)
        for index in range(len(lab.devices)):
            for kind in ("r", "n"):
                ns, veth, _ = raw_names(index, kind)
                quiet(find_tool("ip"), "link", "delete", veth)
                quiet(find_tool("ip"), "netns", "delete", ns)
        quiet(find_tool("ip"), "link", "delete", f"{LAB}-rbr")


def leftovers(lab: EmulatedLab) -> list[str]:
    found = [f"netns {ns}" for ns in network.list_netns(LAB)]
    found += [f"link {link}" for link in network.list_links(LAB)]
    found += [f"cgroup {g.name}" for g in lab_cgroup.find(f"{LAB}-")]
    if lab.config.dir.exists():
        found.append(f"state dir {lab.config.dir}")
    return found


# -- reporting ----------------------------------------------------------------------------------


def verdict(label: str, seconds: float, limit: float) -> str:
    return f"{label} median {seconds:.2f} s: target < {limit:g} s {'MET' if seconds < limit else 'MISSED'}"


def report(series: dict[str, Series], devices: int, cycles: int) -> None:
    print(f"\nlab '{LAB}' ({SUBNET}), {devices} emulated devices, {cycles} cycles; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
    print(f"{'step':<56} {'median s':>9} {'min s':>7} {'max s':>7}")
    for s in series.values():
        print(f"{s.name:<56} {s.median:>9.3f} {min(s.samples):>7.3f} {max(s.samples):>7.3f}")
    up, down = series["up"].median, series["down"].median
    print()
    for label, value, floor in (("up", up, "min_up"), ("up", up, "raw_up"),
                                ("down", down, "min_down"), ("down", down, "raw_down")):
        kind = "minimum" if floor.startswith("min") else "full"
        name = f"hil {label} / raw floor {label} ({kind}):"
        print(f"{name:<36} {value / series[floor].median:5.1f}x")
    print()
    print(verdict(f"up ({devices} devices)", up, UP_TARGET_S))
    print(verdict(f"down ({devices} devices)", down, DOWN_TARGET_S))
    sys.stdout.flush()


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3, help="cycles (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("-n must be at least 1")
    return args


def new_series() -> dict[str, Series]:
    return {
        "min_up": Series("raw floor up, minimum: netns + veth per device"),
        "min_down": Series("raw floor down, minimum: delete veth + netns"),
        "raw_up": Series("raw floor up, full: bridge, netns+veth+addr+key+sshd"),
        "raw_down": Series("raw floor down, full: kill sshd, delete links+netns"),
        "up": Series("hil EmulatedLab.up() from nothing"),
        "again": Series("hil EmulatedLab.up() when already up (no-op)"),
        "down": Series("hil EmulatedLab.down()"),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if os.geteuid() != 0:
        log.error("the emulated lab needs root")
        return 2
    series = new_series()
    broke = False
    with tempfile.TemporaryDirectory(prefix="hil-labbench-") as tmp:
        inventory = write_inventory(Path(tmp))
        lab = EmulatedLab(inventory)
        try:
            with always_down(lab):
                for cycle in range(args.n):
                    log.info("cycle %d of %d", cycle + 1, args.n)
                    raw_cycle(len(lab.devices), Path(tmp), series)
                    hil_cycle(lab, series)
        except (HilError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            log.error("benchmark broke: %s: %s", type(exc).__name__, exc)
            broke = True
        left = leftovers(lab)
    if all(s.samples for s in series.values()):
        report(series, len(lab.devices), args.n)
    if left:
        print(f"LEFT BEHIND after down: {', '.join(left)}")
    else:
        print(f"after the run: no netns, link, cgroup or state dir named {LAB}-* remains")
    return 1 if broke or left else 0


if __name__ == "__main__":
    sys.exit(main())
