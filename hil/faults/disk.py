"""Disk faults: fill the filesystem that holds the workdir, released when the block ends."""

from __future__ import annotations

import shlex

from hil.device import Device
from hil.errors import CapabilityMissing
from hil.faults.base import Fault
from hil.faults.ledger import FILL_PREFIX


class DiskFill(Fault):
    """Fill to `percent` used, or leave exactly `leave_bytes` free (fallocate, falling back to writing)."""

    kind = "disk_fill"
    needs_root = False  # a file in hil's own workdir

    def __init__(self, device: Device, *, percent: float | None = None, leave_bytes: int | None = None,
                 **kwargs: object) -> None:
        if (percent is None) == (leave_bytes is None):
            raise ValueError("give exactly one of percent or leave_bytes")
        if percent is not None and not 0 < percent <= 100:
            raise ValueError(f"percent must be in (0, 100], got {percent}")
        super().__init__(device, params={"percent": percent, "leave_bytes": leave_bytes}, **kwargs)  # type: ignore[arg-type]
        self.percent, self.leave_bytes = percent, leave_bytes
        self.path = ""
        self.size = 0

    def check(self) -> None:
        self.path = f"{self.device.workdir}/.hil/{FILL_PREFIX}{self.id}"
        out = self.device.run(f"mkdir -p {shlex.quote(self.device.workdir)}/.hil && "
                              f"stat -f -c '%a %b %S' {shlex.quote(self.device.workdir)}", timeout=15, check=True)
        available, total, block = (int(x) for x in out.stdout.split())
        free, size = available * block, total * block
        target_free = self.leave_bytes if self.leave_bytes is not None else int(size * (1 - self.percent / 100))
        self.size = max(0, free - target_free)
        if self.size == 0:
            raise CapabilityMissing(f"device '{self.device.name}': only {free} bytes free already; nothing to fill")
        self.params.update(fill_bytes=self.size, free_before=free)

    def apply_script(self) -> str:
        p = shlex.quote(self.path)
        # fallocate where the filesystem has it; else write zeros (a full disk ends dd with ENOSPC: fine).
        return (f"fallocate -l {self.size} {p} 2>/dev/null || "
                f"{{ dd if=/dev/zero of={p} bs=65536 count={self.size // 65536} 2>/dev/null; "
                f"head -c {self.size % 65536} /dev/zero >> {p}; true; }}")

    def undo_script(self) -> str:
        return f"rm -f {shlex.quote(self.path)}"

    def trace(self) -> dict[str, object]:
        return {"files": [self.path]}


def disk_fill(device: Device, *, percent: float | None = None, leave_bytes: int | None = None,
              **kwargs: object) -> DiskFill:
    return DiskFill(device, percent=percent, leave_bytes=leave_bytes, **kwargs)
