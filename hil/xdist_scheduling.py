"""pytest-xdist: the tests of one device go to one worker (a scope per device).

xdist's own `--dist loadgroup` groups by a node-id suffix that pytest 9.2 no longer honours
(pytest-dev/pytest-xdist#1386), so every test became its own group: a device's tests spread over
all workers, which then queued for its lease while other devices sat idle. This scheduler groups
by the device in each test's parametrize id instead, for `--dist load` (what `-n` uses) and
`--dist loadgroup`. Tests without a device (or with several) are scheduled one by one, as `load` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

DEVICE_GROUPED = ("load", "loadgroup")


def device_in(nodeid: str, devices: Sequence[str]) -> str | None:
    """The device a node id is parametrized with: one of `devices` as a whole '-'-separated part of its id."""
    nodeid = nodeid.rsplit("]@", 1)[0] + "]" if "]@" in nodeid else nodeid  # xdist's loadgroup suffix
    if not nodeid.endswith("]") or "[" not in nodeid:
        return None
    params = "-" + nodeid[nodeid.index("[") + 1:-1] + "-"
    for name in sorted(devices, key=len, reverse=True):  # "pi-4-b" before "pi-4"
        if f"-{name}-" in params:
            return name
    return None


def make_scheduler(config: pytest.Config, log: Any, devices: Sequence[str]) -> Any:
    """xdist's LoadScopeScheduling with a scope per device, or None to leave the choice to xdist."""
    if config.getoption("dist", "no") not in DEVICE_GROUPED or not devices:
        return None
    from xdist.scheduler import LoadScopeScheduling

    class DeviceScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            device = device_in(nodeid, devices)
            return f"hil-device:{device}" if device is not None else nodeid

    return DeviceScheduling(config, log)
