"""What every fault does: check the device can take it, ledger first, dead-man, apply, always undo."""

from __future__ import annotations

import logging
import secrets
import shlex
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import allure

from hil.deadline import Deadline
from hil.device import Device
from hil.errors import CapabilityMissing, InfraError
from hil.faults import ledger
from hil.faults.ledger import FaultRecord
from hil.transport.ssh import DegradedLink

log = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 300.0
APPLY_SETTLE = 0.5  # seconds: a detached apply has run by then
DEADMAN_MARGIN = 30.0  # seconds past a dead-man's due time before hil stops waiting for it


@dataclass
class FaultEvent:
    """What the report shows of one fault: what, when, with which parameters and seed."""

    id: str
    kind: str
    device: str
    params: dict[str, Any]
    seed: int | None
    applied_at: str = ""
    reverted_at: str = ""
    reverted_by: str = ""  # "ssh", "serial", "dead-man" or "" while applied
    notes: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Fault:
    """A context manager: entering applies the fault, leaving (normally, on error, on Ctrl-C) undoes it."""

    kind = "fault"
    cuts_network = False  # may cut hil off the device: arm a dead-man and prefer the serial console to undo
    # makes the link lossy or slow, not cut: SSH reconnects wait for it (hil.transport.ssh.SshTransport.begin_degraded)
    degrades_link = False
    _link: DegradedLink | None = None

    def __init__(self, device: Device, *, max_seconds: float = DEFAULT_MAX_SECONDS, seed: int | None = None,
                 run_id: str | None = None, params: dict[str, Any] | None = None) -> None:
        self.device = device
        self.max_seconds = max_seconds
        self.seed = seed
        self.run_id = run_id or ledger.run_id()
        self.id = f"{self.kind}-{secrets.token_hex(4)}"
        self.params = params or {}
        self.record: FaultRecord | None = None
        self.event = FaultEvent(self.id, self.kind, device.name, self.params, seed)

    # -- what a fault defines -----------------------------------------------------------------

    def check(self) -> None:
        """Raise CapabilityMissing when the device cannot take this fault."""

    def apply_script(self) -> str:
        raise NotImplementedError

    def undo_script(self) -> str:
        """Shell that undoes the fault: idempotent (succeeds when there is nothing left to undo), and
        exiting non-zero when a step of it really fails."""
        raise NotImplementedError

    def trace(self) -> dict[str, Any]:
        """What shows this fault on the device, read back after an undo (see ledger.FaultRecord.trace)."""
        return {}

    needs_root = True

    # -- shared -------------------------------------------------------------------------------

    def require_tool(self, tool: str, package: str) -> None:
        found = self.device.run(f"command -v {tool} || PATH=$PATH:/usr/sbin:/sbin command -v {tool}", timeout=15)
        if not found.ok:
            raise CapabilityMissing(f"device '{self.device.name}': a {self.kind} fault needs `{tool}` "
                                    f"(package {package}) on the device")

    def __enter__(self) -> Fault:
        self.check()  # may find out how the fault is applied, and whether that needs root
        if self.needs_root:
            self.device.require_root(f"a {self.kind} fault")
        self.record = FaultRecord(self.id, self.kind, self.params, _now(), self.max_seconds if self.cuts_network
                                  else None, self.run_id, self.seed, root=self.needs_root, trace=self.trace())
        self._applied_mono = time.monotonic()
        ledger.record(self.device, self.record, self.undo_script())
        if self.cuts_network:
            pid = ledger.arm_deadman(self.device, self.record, self.max_seconds)
            self.record = FaultRecord(**{**self.record.__dict__, "deadman_pid": pid})
            ledger.record(self.device, self.record, self.undo_script())
        if self.degrades_link:  # until the dead-man's due time, and a margin
            self._link = self.device.begin_degraded(f"{self.kind} {self.params}", self.max_seconds + 10)
        try:
            with allure.step(f"apply fault {self.kind} on {self.device.name} {self.params}"):
                self._apply()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.event.applied_at = _now()
        log.info("%s: fault %s applied %s", self.device.name, self.id, self.params)
        return self

    def _apply(self) -> None:
        # Detached on the device for faults that cut the network: the command itself may lose its answer.
        script = self.apply_script()
        if self.cuts_network:
            # A moment later, so this command's own answer still gets out before the network goes.
            detached = f"setsid /bin/sh -c {shlex.quote('sleep 0.2; ' + script)} >/dev/null 2>&1 < /dev/null &"
            self.device.run(detached, timeout=15, check=True, root=self.needs_root)
            time.sleep(APPLY_SETTLE)
        else:
            self.device.run(script, timeout=60, check=True, root=self.needs_root)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.record is None or self.event.reverted_at:
            return
        try:
            with allure.step(f"revert fault {self.kind} on {self.device.name}"):
                self.event.reverted_by = self._revert()
        finally:
            if self._link is not None:
                self.device.end_degraded(self._link)
                self._link = None
        self.event.reverted_at = _now()
        self.device.forget_facts()  # a clock or a disk fault changed what facts say
        log.info("%s: fault %s reverted (%s)", self.device.name, self.id, self.event.reverted_by)

    def _revert(self) -> str:
        try:
            return self.revert_now()
        except InfraError as exc:
            if not self.cuts_network or isinstance(exc, ledger.UndoUnproven):
                raise  # an undo that ran and failed: the dead-man's own try is no better
        return self._wait_for_deadman()

    def revert_now(self) -> str:
        """Undo it now, proven, by the preferred way (the console for faults that cut the network, else SSH);
        returns the way it went. Raises InfraError when no way in worked or the undo is not proven."""
        assert self.record is not None
        if self.cuts_network and self.device.config.serial is not None:
            try:
                ledger.revert_over_serial(self.device, self.record)
                self.device.drop_session()  # the session may have died during the fault; start afresh
                return "serial"
            except InfraError as exc:
                log.warning("%s: undo over serial failed (%s); trying SSH", self.device.name, exc)
        ledger.revert(self.device, self.record, timeout=10)
        return "ssh"

    def _wait_for_deadman(self) -> str:
        assert self.record is not None
        # No way in: the dead-man on the device undoes it when its time is up. Wait for that (and a margin).
        due = self._applied_mono + self.max_seconds - time.monotonic()
        deadline = Deadline.after(max(0.0, due) + DEADMAN_MARGIN)
        while True:
            self.device.drop_session()
            try:
                ledger.revert(self.device, self.record, timeout=10)  # a no-op if the dead-man was first
                return "dead-man"
            except InfraError:
                if deadline.expired:
                    raise
                deadline.sleep(1.0)
