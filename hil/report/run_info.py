"""What the reporting plugin needs to know of the run, handed over by hil.plugin in config.stash[RUN_INFO].

hil.report.pytest_plugin sits below hil.plugin (tests/test_layers.py) and does not import it: hil.plugin
sets RUN_INFO when it configures the session, the report plugin reads it. A module of its own, not the
report plugin's: importing a pytest plugin module before pytest loads it defeats its assertion rewriting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hil.device import Device


@dataclass(frozen=True)
class RunInfo:
    run_id: str  # the run's id, the same in every xdist worker: leases, faults, summary.json
    devices: Mapping[str, Device]  # the devices in use by name, kept current by hil.plugin (for device logs)


RUN_INFO = pytest.StashKey[RunInfo]()
