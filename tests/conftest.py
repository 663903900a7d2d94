"""Fixtures for hil's own tests: a private emulated lab, apart from the user's default one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.config import Inventory, load_inventory
from hil.device import Device
from hil.lab import EmulatedLab
from tests.handbuilt import handbuilt_device  # noqa: F401 (the session fixture `handbuilt`, built once)

# Its own name and subnet, so the tests never disturb a lab brought up by `make run`.
TEST_LAB_TOML = """
[lab]
name = "hiltest"
subnet = "10.77.1.0/24"

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

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the emulated lab needs root")


def write_devices(directory: Path, text: str = TEST_LAB_TOML) -> Path:
    path = directory / "devices.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    return load_inventory(write_devices(tmp_path_factory.mktemp("lab")))


@pytest.fixture(scope="session")
def lab(lab_inventory: Inventory) -> Iterator[EmulatedLab]:
    """The test lab, up for the whole session and taken down at the end."""
    emulated = EmulatedLab(lab_inventory)
    emulated.up()
    yield emulated
    emulated.down()


@pytest.fixture
def device_a(lab: EmulatedLab) -> Iterator[Device]:
    device = Device(lab.inventory.get("emu-a"))
    yield device
    device.close()


@pytest.fixture
def device_b(lab: EmulatedLab) -> Iterator[Device]:
    device = Device(lab.inventory.get("emu-b"))
    yield device
    device.close()
