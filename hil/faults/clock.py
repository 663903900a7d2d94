"""Clock faults: step the device's wall clock, or make it drift.

Where the device's sessions run under libfaketime (the emulated lab; any device set up the same
way), the fault writes libfaketime's control file, so processes hil starts see it and the monotonic
clock stays true. Elsewhere a step sets the system clock (root, and only if the device allows it:
`clock_set = true` is opt-in because it moves the clock for everything on the device) and sets it
back; drift needs libfaketime.
"""

from __future__ import annotations

import shlex

from hil.device import Device
from hil.errors import CapabilityMissing
from hil.faults.base import Fault


class ClockFault(Fault):
    kind = "clock"

    def __init__(self, device: Device, offset_s: float = 0.0, factor: float = 1.0, **kwargs: object) -> None:
        if factor <= 0:
            raise ValueError(f"clock rate factor must be positive, got {factor}")
        self.kind = "clock_drift" if factor != 1.0 else "clock_step"
        super().__init__(device, params={"offset_s": offset_s, "factor": factor}, **kwargs)  # type: ignore[arg-type]
        self.offset_s, self.factor = offset_s, factor
        self.control = ""
        self.previous = ""

    @property
    def spec(self) -> str:
        """libfaketime's syntax; a rate needs an offset in front ("+0 x1.001")."""
        rate = f" x{self.factor:.9g}" if self.factor != 1.0 else ""
        return f"{self.offset_s:+.6f}{rate}"

    def check(self) -> None:
        self.control = self.device.run('printf %s "${FAKETIME_TIMESTAMP_FILE-}"', timeout=15).stdout
        if self.control:
            self.needs_root = False  # the control file is the device session's own
            self.previous = self.device.run(f"cat {shlex.quote(self.control)} 2>/dev/null || echo +0",
                                            timeout=15).stdout.strip() or "+0"
            self.params["via"] = "libfaketime"
            return
        if self.factor != 1.0:
            raise CapabilityMissing(f"device '{self.device.name}': clock drift needs libfaketime for the processes "
                                    "hil starts (FAKETIME_TIMESTAMP_FILE in the device's sessions)")
        if not self.device.config.clock_set:
            raise CapabilityMissing(f"device '{self.device.name}': no libfaketime control file in its sessions, and "
                                    "stepping the system clock is not enabled for it (clock_set = true in "
                                    "devices.toml allows it; it moves the clock for everything on the device)")
        self.needs_root = True
        self.params["via"] = "system clock"

    @property
    def _seconds(self) -> int:
        return round(self.offset_s)  # `date -s @N` takes whole seconds

    def apply_script(self) -> str:
        if self.control:
            return f"printf '%s\\n' {shlex.quote(self.spec)} > {shlex.quote(self.control)}"
        return f"date -s @$(( $(date +%s) + {self._seconds} )) >/dev/null"

    def undo_script(self) -> str:
        if self.control:
            return f"printf '%s\\n' {shlex.quote(self.previous)} > {shlex.quote(self.control)}"
        # The step, reversed (NTP on the device may also correct it meanwhile; that is fine).
        return f"date -s @$(( $(date +%s) - {self._seconds} )) >/dev/null"

    def trace(self) -> dict[str, object]:
        # A stepped system clock leaves nothing to read back; a control file must hold what it held.
        return {"control": self.control, "content": self.previous} if self.control else {}


def clock_step(device: Device, offset_s: float, **kwargs: object) -> ClockFault:
    """Move the device's wall clock by `offset_s` (e.g. +3600, -86400)."""
    return ClockFault(device, offset_s=offset_s, **kwargs)


def clock_drift(device: Device, *, ppm: float | None = None, factor: float | None = None,
                offset_s: float = 0.0, **kwargs: object) -> ClockFault:
    """Make the device's wall clock run fast or slow: `ppm` (parts per million) or a `factor` (1.001)."""
    if (ppm is None) == (factor is None):
        raise ValueError("give exactly one of ppm or factor")
    rate = factor if factor is not None else 1.0 + (ppm or 0.0) / 1e6
    return ClockFault(device, offset_s=offset_s, factor=rate, **kwargs)
