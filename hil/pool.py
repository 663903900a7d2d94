"""The devices of a run, outside pytest: connections, leases, health and quarantine (hil.pool.DevicePool).

    pool = DevicePool(inventory, lease_timeout=300)
    with pool.held("edge01") as device:      # waits for a run that holds it; DeviceBusy after the timeout
        deploy(device, artifact, keys)

Every `hil` command that changes a device or measures on it works under the device's lease, so a deploy,
a reboot or `hil faults clear` can never pull a device from under a test run that holds it. Inside
`hil lease DEVICE -- CMD` (HIL_LEASE_RUN_ID set), the command works under that lease instead of waiting
for it (hil.lease). The pytest plugin keeps one pool per process; a rollout keeps one for its phases.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from hil.config import Inventory
from hil.device import Device
from hil.errors import DeviceUnhealthy, HilError
from hil.faults.ledger import run_id as fault_run_id
from hil.faults.ledger import sweep as sweep_faults
from hil.lease import Lease, lease_together

log = logging.getLogger(__name__)

DEFAULT_LEASE_TIMEOUT = 300.0


class AlreadyOut(DeviceUnhealthy):
    """A device already out of the run, whose first test has reported why: the others skip (pytest)."""


@dataclass
class DevicePool:
    """The devices of a run (one per process): one Device (one connection) each, their leases, their health,
    and which are out of the run (quarantined) and why. The pytest plugin, the CLI and rollouts use it.

    `acquire` is a test run's way in: leased (for the run, or per test under xdist), swept of faults an
    earlier run left, health-checked; a device that fails is out of the run. `lease` / `held` are for a
    command or a rollout: connected and leased, nothing more.
    """

    inventory: Inventory | None
    selected: list[str] = field(default_factory=list)
    auto_lab: bool = False
    devices: dict[str, Device] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    lab_checked: bool = False
    lab_error: HilError | None = None
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    per_test_lease: bool = False  # pytest-xdist workers lease per test (see the device fixture)
    leases: dict[str, Lease] = field(default_factory=dict)
    swept: dict[str, list[str]] = field(default_factory=dict)  # faults an earlier run left, undone at start
    timing: dict[str, tuple[str, ...]] = field(default_factory=dict)  # health warnings that void a timing FAIL
    pending: dict[str, Device] = field(default_factory=dict)  # connected, not yet checked (see connection)
    worker_lease: Lease | None = None  # xdist: the lease of the device of this worker's current run of tests
    run_id: str = field(default_factory=fault_run_id)

    def _check(self, name: str) -> None:
        """A device already out of this run: its first test reports why, the others skip."""
        if name in self.broken:
            if name in self.reported:
                raise AlreadyOut(f"device '{name}' is out of this run (infrastructure): {self.broken[name]}")
            self.reported.add(name)
            raise DeviceUnhealthy(f"device '{name}' is out of this run (infrastructure): {self.broken[name]}")

    def _out(self, name: str, reason: str, device: Device | None = None) -> None:
        self._release(name)
        device = device or self.pending.pop(name, None)
        if device is not None:
            device.close()
        self.broken[name] = reason
        self._check(name)  # raises

    def _connect(self, name: str) -> Device:
        assert self.inventory is not None
        config = self.inventory.get(name)
        if config.emulated:
            self._ensure_lab()
        return Device(config)

    def connection(self, name: str) -> Device:
        """The device's connection, before any lease, health check or sweep (a per-test lease needs it)."""
        self._check(name)
        if name in self.devices:
            return self.devices[name]
        if name not in self.pending:
            try:
                self.pending[name] = self._connect(name)
            except HilError as exc:
                self._out(name, str(exc))
        return self.pending[name]

    def acquire(self, name: str) -> Device:
        """The device, leased for the run (or, under xdist, by the test), swept of old faults and healthy."""
        self._check(name)
        if name in self.devices:
            lease = self.leases.get(name)
            if lease is not None and not lease.alive:
                # The connection dropped since (and reconnected): the device was free meanwhile. Take it
                # again before the next test; another run may hold it now, so this may wait.
                log.warning("%s: the run's lease was lost with its connection; leasing again", name)
                try:
                    self.leases[name] = Lease(self.devices[name], self.run_id, self.lease_timeout).acquire()
                except HilError as exc:
                    self._out(name, f"lease lost and not regained: {exc}", self.devices.pop(name))
            return self.devices[name]
        device = self.pending.pop(name, None)
        try:
            device = device or self._connect(name)
            if not self.per_test_lease:
                # Held for the whole run: no other run touches this device until this one ends or dies.
                self.leases[name] = Lease(device, self.run_id, self.lease_timeout).acquire()
        except HilError as exc:
            self._out(name, str(exc), device)
        assert device is not None
        return self._ready(name, device)

    def hold_for_test(self, name: str) -> None:
        """xdist: lease `name` for the next test, keeping the lease the previous test of the same device took
        (hil's scheduler gives a worker all tests of a device in a row; pytest_runtest_teardown gives it
        back when the next test is on another device)."""
        held = self.worker_lease
        if held is not None and held.device.name == name and held.alive:
            return
        self.release_worker_lease()
        self.worker_lease = Lease(self.connection(name), self.run_id, self.lease_timeout).acquire()

    def release_worker_lease(self) -> None:
        held, self.worker_lease = self.worker_lease, None
        if held is not None:
            held.device.close_console()  # the next holder of the device needs its console
            held.release()

    def acquire_together(self, names: list[str]) -> tuple[list[Device], list[Lease]]:
        """Several devices for one test, leased all at once or not at all (see hil.lease.lease_together).

        Returns the devices and, under xdist, the test's own leases to release; otherwise the leases
        join the run's. Run-wide leases the run already holds on them are given back first: holding
        some while waiting for others is how two runs would deadlock.
        """
        names = sorted(set(names))
        for name in names:
            self._check(name)
        self.release_worker_lease()  # hold nothing while waiting for the group
        devices: dict[str, Device] = {}
        for name in names:
            devices[name] = self.connection(name)
        for name in names:
            self._release(name)
        taken = lease_together(list(devices.values()), self.run_id, self.lease_timeout)  # DeviceBusy: infra
        if not self.per_test_lease:
            self.leases.update({lease.device.name: lease for lease in taken})
            taken = []
        try:
            ready = [self._ready(name, self.pending.pop(name, devices[name])) for name in names]
        except BaseException:
            for lease in taken:
                lease.release()
            raise
        return ready, taken

    def _ready(self, name: str, device: Device) -> Device:
        if name in self.devices:
            return device
        try:
            # What a crashed run left applied (a full disk, a dropped network...) is undone first: it
            # would fail the health check, and no test may run on a device in an unknown state.
            left = sweep_faults(device)
            health = device.health()
        except HilError as exc:
            self._out(name, str(exc), device)
        if left:
            self.swept[name] = [r.describe() for r in left]  # from the ledger, and found in the kernel
        if not health.ok:
            self._out(name, "; ".join(health.problems), device)
        for warning in health.warnings:
            log.warning("%s: %s", name, warning)
        self.timing[name] = health.timing_warnings
        self.devices[name] = device
        return device

    def _ensure_lab(self) -> None:
        if self.lab_error is not None:
            raise self.lab_error  # one failed bring-up is enough; do not retry it for every device
        if self.lab_checked or not self.auto_lab:
            return
        from hil.lab import EmulatedLab

        assert self.inventory is not None
        emulated = [n for n in self.selected if self.inventory.get(n).emulated]
        try:
            EmulatedLab(self.inventory).ensure_up(emulated)
        except HilError as exc:
            self.lab_error = exc
            raise
        self.lab_checked = True

    def mark_broken(self, name: str, reason: str) -> None:
        self.broken.setdefault(name, reason)
        self.reported.add(name)  # the failing test itself already reported it
        self.release(name)

    def _release(self, name: str) -> None:
        """Give `name` back, whether the run or (under xdist) this worker's run of tests holds it."""
        if self.worker_lease is not None and self.worker_lease.device.name == name:
            self.release_worker_lease()
        lease = self.leases.pop(name, None)
        if lease is not None:
            if name in self.devices:
                self.devices[name].close_console()  # the next holder of the device needs its console
            lease.release()

    def lease(self, name: str) -> Device:
        """`name`, connected and leased to this run until release(name) or close(): no sweep, no health check
        (a command or a rollout acts on the device itself). DeviceBusy when another run keeps it."""
        device = self.pending.pop(name, None) or self._connect(name)
        try:
            self.leases[name] = Lease(device, self.run_id, self.lease_timeout).acquire()
        except BaseException:
            device.close()
            raise
        self.devices[name] = device
        return device

    def release(self, name: str) -> None:
        self._release(name)
        device = self.devices.pop(name, None)
        if device is not None:
            device.close()

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[Device]:
        """The device under this run's lease for the block."""
        device = self.lease(name)
        try:
            yield device
        finally:
            self.release(name)

    def close(self) -> None:
        self.release_worker_lease()
        for name in list(self.leases):
            self._release(name)
        for device in [*self.devices.values(), *self.pending.values()]:
            device.close()
        self.devices.clear()
        self.pending.clear()
