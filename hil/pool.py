"""Devices of a run outside pytest: connected, leased for as long as the work on them lasts, released.

    pool = DevicePool(inventory, lease_timeout=300)
    with pool.held("edge01") as device:      # waits for a run that holds it; DeviceBusy after the timeout
        deploy(device, artifact, keys)

Every `hil` command that changes a device or measures on it works under the device's lease, so a deploy,
a reboot or `hil faults clear` can never pull a device from under a test run that holds it. Inside
`hil lease DEVICE -- CMD` (HIL_LEASE_RUN_ID set), the command works under that lease instead of waiting
for it (hil.lease).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hil.config import Inventory
from hil.device import Device
from hil.faults.ledger import run_id as new_run_id
from hil.lease import Lease

DEFAULT_LEASE_TIMEOUT = 300.0


class DevicePool:
    def __init__(self, inventory: Inventory, *, run_id: str | None = None,
                 lease_timeout: float = DEFAULT_LEASE_TIMEOUT) -> None:
        self.inventory = inventory
        self.run_id = run_id or new_run_id()
        self.lease_timeout = lease_timeout

    @contextlib.contextmanager
    def connected(self, name: str) -> Iterator[Device]:
        """The device, connected on first use and closed after; no lease (reading only)."""
        device = Device(self.inventory.get(name))
        try:
            yield device
        finally:
            device.close()

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[Device]:
        """The device under this run's lease for the block (DeviceBusy when another run keeps it)."""
        with self.connected(name) as device, Lease(device, self.run_id, timeout=self.lease_timeout):
            yield device
