"""The `faults` fixture's object: makes faults, tracks them, and undoes what is still applied."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hil.errors import InfraError
from hil.faults import clock, disk, network
from hil.faults.base import Fault, FaultEvent

log = logging.getLogger(__name__)


class FaultInjector:
    """`faults.network_drop(device)` and friends, each a context manager; close() undoes leftovers."""

    def __init__(self, run_id: str = "") -> None:
        self.run_id = run_id
        self.made: list[Fault] = []

    @property
    def events(self) -> list[FaultEvent]:
        return [f.event for f in self.made if f.event.applied_at]

    def _make(self, factory: Callable[..., Fault], *args: Any, **kwargs: Any) -> Fault:
        fault = factory(*args, run_id=self.run_id, **kwargs)
        self.made.append(fault)
        return fault

    def network_drop(self, device: Any, **kwargs: Any) -> Fault:
        return self._make(network.network_drop, device, **kwargs)

    def partition(self, device: Any, seconds: float, **kwargs: Any) -> Fault:
        return self._make(network.partition, device, seconds, **kwargs)

    def packet_loss(self, device: Any, rate: float, **kwargs: Any) -> Fault:
        return self._make(network.packet_loss, device, rate, **kwargs)

    def bandwidth_cap(self, device: Any, kbit: int, **kwargs: Any) -> Fault:
        return self._make(network.bandwidth_cap, device, kbit, **kwargs)

    def delay(self, device: Any, delay_ms: float, jitter_ms: float = 0.0, **kwargs: Any) -> Fault:
        return self._make(network.delay, device, delay_ms, jitter_ms, **kwargs)

    def flapping(self, device: Any, down_s: float, up_s: float, cycles: int, **kwargs: Any) -> Fault:
        return self._make(network.flapping, device, down_s, up_s, cycles, **kwargs)

    def clock_step(self, device: Any, offset_s: float, **kwargs: Any) -> Fault:
        return self._make(clock.clock_step, device, offset_s, **kwargs)

    def clock_drift(self, device: Any, **kwargs: Any) -> Fault:
        return self._make(clock.clock_drift, device, **kwargs)

    def disk_fill(self, device: Any, **kwargs: Any) -> Fault:
        return self._make(disk.disk_fill, device, **kwargs)

    def close(self) -> None:
        """Undo every fault still applied (a test that left its `with` block early, or never used one)."""
        failed = []
        for fault in reversed(self.made):
            try:
                fault.__exit__(None, None, None)
            except Exception as exc:  # try them all, then say which are left
                failed.append(f"{fault.id} on {fault.device.name}: {exc}")
        if failed:
            raise InfraError("faults could not be undone (their dead-man timers or the next run's ledger sweep "
                             "will): " + "; ".join(failed))
