"""Network faults, applied on the device itself (iptables, tc), so real and emulated devices are alike.

Only rules tagged with the fault's id (`hil-fault:<id>`) are ever added or removed; loopback is never
touched. This kernel has no netem: loss uses iptables' `statistic` match, a bandwidth cap `tbf` on
egress and a `hashlimit` drop on ingress. Every qdisc hil adds is its interface's root qdisc with
handle `ledger.QDISC_HANDLE` (7e57:), so it can be found again without the ledger.
"""

from __future__ import annotations

import shlex

from hil.device import Device
from hil.errors import CapabilityMissing
from hil.faults.base import DEFAULT_MAX_SECONDS, Fault
from hil.faults.ledger import QDISC_HANDLE, TAG

IPT = "iptables -w"


def hil_interface(device: Device) -> str:
    """The device's interface towards hil (the route to the SSH client's address)."""
    found = device.run("ip route get ${SSH_CONNECTION%% *} | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p' | head -1",
                       timeout=15)
    return found.stdout.strip() or "eth0"


def _rules(tag: str, match: str) -> list[tuple[str, str]]:
    """(chain, rule) pairs: everything but loopback, in and out."""
    comment = f"-m comment --comment {tag}"
    return [("INPUT", f"! -i lo {match} {comment} -j DROP"), ("OUTPUT", f"! -o lo {match} {comment} -j DROP")]


def _insert(rules: list[tuple[str, str]]) -> str:
    return "; ".join(f"{IPT} -I {chain} 1 {rule}" for chain, rule in rules) + "; true"


def _delete(rules: list[tuple[str, str]]) -> str:
    """Idempotent: delete every copy, succeed when there is none; a delete that fails while the rule is
    there fails the whole (its exit status, not a later step's)."""
    return "; ".join(f"while {IPT} -C {chain} {rule} 2>/dev/null; do {IPT} -D {chain} {rule} || exit $?; done"
                     for chain, rule in rules)


def _del_qdisc(interface: str) -> str:
    """Remove hil's root qdisc from `interface` if it is there (and only hil's)."""
    dev = shlex.quote(interface)
    return (f"if tc qdisc show dev {dev} | grep -q ' {QDISC_HANDLE} '; then "
            f"tc qdisc del dev {dev} root handle {QDISC_HANDLE} || exit $?; fi")


class _IptablesFault(Fault):
    match = ""

    def check(self) -> None:
        self.require_tool("iptables", "iptables")

    def _rules(self) -> list[tuple[str, str]]:
        return _rules(f"hil-fault:{self.id}", self.match)

    def apply_script(self) -> str:
        return _insert(self._rules())

    def undo_script(self) -> str:
        return _delete(self._rules())

    def trace(self) -> dict[str, object]:
        return {"tags": [f"{TAG}{self.id}"]}


class NetworkDrop(_IptablesFault):
    """The device unreachable over the network (the serial console still works)."""

    kind = "network_drop"
    cuts_network = True


class PacketLoss(_IptablesFault):
    """Random loss of `rate` (0..1) of the packets in each direction."""

    kind = "packet_loss"
    degrades_link = True
    cuts_network = True  # at high rates hil may lose the device: keep the dead-man

    def __init__(self, device: Device, rate: float, **kwargs: object) -> None:
        if not 0 < rate < 1:
            raise ValueError(f"packet loss rate must be between 0 and 1, got {rate}")
        super().__init__(device, params={"rate": rate}, **kwargs)  # type: ignore[arg-type]
        self.match = f"-m statistic --mode random --probability {rate:.6f}"


class BandwidthCap(Fault):
    """At most `kbit` kbit/s each way: tbf on egress, a hashlimit drop on ingress."""

    kind = "bandwidth_cap"
    degrades_link = True
    cuts_network = True

    def __init__(self, device: Device, kbit: int, **kwargs: object) -> None:
        if kbit < 8:
            raise ValueError(f"bandwidth cap must be at least 8 kbit/s, got {kbit}")
        super().__init__(device, params={"kbit": kbit}, **kwargs)  # type: ignore[arg-type]
        self.kbit = kbit
        self.interface = ""

    def check(self) -> None:
        self.require_tool("iptables", "iptables")
        self.require_tool("tc", "iproute2")
        # The interface hil's own traffic uses: the one towards the SSH client's address.
        self.interface = hil_interface(self.device)
        self.params["interface"] = self.interface

    def _ingress(self) -> list[tuple[str, str]]:
        kbytes = max(1, self.kbit // 8)
        match = (f"-m hashlimit --hashlimit-above {kbytes}kb/s --hashlimit-burst {kbytes * 2}kb "
                 f"--hashlimit-name hil{self.id.split('-')[-1]}")
        return [("INPUT", f"-i {self.interface} {match} -m comment --comment hil-fault:{self.id} -j DROP")]

    def apply_script(self) -> str:
        return (f"tc qdisc replace dev {self.interface} root handle {QDISC_HANDLE} tbf rate {self.kbit}kbit "
                f"burst 32kbit latency 400ms; " + _insert(self._ingress()))

    def undo_script(self) -> str:
        return f"{_del_qdisc(self.interface)}; " + _delete(self._ingress())

    def trace(self) -> dict[str, object]:
        return {"tags": [f"{TAG}{self.id}"], "qdisc": self.interface}


class Flapping(_IptablesFault):
    """Down for `down_s`, up for `up_s`, `cycles` times, driven by a loop on the device."""

    kind = "flapping"
    cuts_network = True

    def __init__(self, device: Device, down_s: float, up_s: float, cycles: int, **kwargs: object) -> None:
        kwargs.setdefault("max_seconds", (down_s + up_s) * cycles + 30)
        super().__init__(device, params={"down_s": down_s, "up_s": up_s, "cycles": cycles}, **kwargs)  # type: ignore[arg-type]
        self.down_s, self.up_s, self.cycles = down_s, up_s, cycles

    @property
    def _pid_file(self) -> str:
        return shlex.quote(f"{self.device.workdir}/.hil/{self.id}.pid")

    def apply_script(self) -> str:
        loop = (f"i=0; while [ $i -lt {self.cycles} ]; do {_insert(self._rules())}; sleep {self.down_s:g}; "
                f"{_delete(self._rules())}; sleep {self.up_s:g}; i=$((i+1)); done")
        return f"echo $$ > {self._pid_file}; {loop}; rm -f {self._pid_file}"

    def undo_script(self) -> str:
        # The loop runs in its own process group (setsid): stop all of it, a half-done iptables too.
        return (f"if [ -r {self._pid_file} ]; then p=$(cat {self._pid_file}); kill -- -$p 2>/dev/null || "
                f"kill $p 2>/dev/null; fi; rm -f {self._pid_file} || exit $?; " + _delete(self._rules()))

    def trace(self) -> dict[str, object]:
        return {"tags": [f"{TAG}{self.id}"], "files": [f"{self.device.workdir}/.hil/{self.id}.pid"]}


def network_drop(device: Device, *, max_seconds: float = DEFAULT_MAX_SECONDS, **kwargs: object) -> NetworkDrop:
    """Cut the device off the network until the block ends (or the dead-man fires after max_seconds)."""
    return NetworkDrop(device, max_seconds=max_seconds, **kwargs)  # type: ignore[arg-type]


def partition(device: Device, seconds: float, **kwargs: object) -> NetworkDrop:
    """Cut the device off for `seconds`: the device heals itself then, even in the middle of the block."""
    return NetworkDrop(device, max_seconds=seconds, params={"seconds": seconds}, **kwargs)  # type: ignore[arg-type]


def packet_loss(device: Device, rate: float, **kwargs: object) -> PacketLoss:
    return PacketLoss(device, rate, **kwargs)


def bandwidth_cap(device: Device, kbit: int, **kwargs: object) -> BandwidthCap:
    return BandwidthCap(device, kbit, **kwargs)


def flapping(device: Device, down_s: float, up_s: float, cycles: int, **kwargs: object) -> Flapping:
    return Flapping(device, down_s, up_s, cycles, **kwargs)


class Delay(Fault):
    """Added latency (and jitter) on egress with netem, where the device's kernel has it."""

    kind = "delay"
    degrades_link = True
    cuts_network = True

    def __init__(self, device: Device, delay_ms: float, jitter_ms: float = 0.0, **kwargs: object) -> None:
        if delay_ms <= 0 or jitter_ms < 0:
            raise ValueError("delay must be positive and jitter not negative")
        super().__init__(device, params={"delay_ms": delay_ms, "jitter_ms": jitter_ms}, **kwargs)  # type: ignore[arg-type]
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms
        self.interface = ""

    def check(self) -> None:
        self.require_tool("tc", "iproute2")
        self.interface = hil_interface(self.device)
        # Probe: add netem to loopback and remove it at once.
        probe = self.device.run("tc qdisc add dev lo root netem delay 0ms && tc qdisc del dev lo root",
                                timeout=15, root=True)
        if not probe.ok:
            raise CapabilityMissing(f"device '{self.device.name}': its kernel has no netem qdisc "
                                    f"({probe.stderr.strip()[-120:] or 'tc failed'}); delay and jitter need it")
        self.params["interface"] = self.interface

    def apply_script(self) -> str:
        jitter = f" {self.jitter_ms:g}ms" if self.jitter_ms else ""
        return (f"tc qdisc replace dev {self.interface} root handle {QDISC_HANDLE} netem "
                f"delay {self.delay_ms:g}ms{jitter}")

    def undo_script(self) -> str:
        return _del_qdisc(self.interface)

    def trace(self) -> dict[str, object]:
        return {"qdisc": self.interface}


def delay(device: Device, delay_ms: float, jitter_ms: float = 0.0, **kwargs: object) -> Delay:
    return Delay(device, delay_ms, jitter_ms, **kwargs)
