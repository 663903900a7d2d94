"""Fixtures for hil's own tests: a private emulated lab, apart from the user's default one."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.config import Inventory, load_inventory
from hil.device import Device
from hil.lab import EmulatedLab, network
from tests.handbuilt import handbuilt_device  # noqa: F401 (the session fixture `handbuilt`, built once)

# Its own name and subnet, so the tests never disturb a lab brought up by `make run`. Two test runs
# at once on one machine (two developers, or a developer and a helper) each set their own with
# HIL_TEST_LAB="name:third-octet", e.g. HIL_TEST_LAB=hilt2:12 for lab "hilt2" on 10.77.12.0/24.
TEST_LAB_NAME, _, _OCTET = os.environ.get("HIL_TEST_LAB", "hiltest:1").partition(":")
TEST_SUBNET = f"10.77.{int(_OCTET or 1)}.0/24"
# emu-b is the realistic profile: a non-root login whose sudo wants a password (this one, made up per
# run), a console asking login and password, onnxruntime only in a venv of the lab's making.
TEST_SUDO_PASSWORD_ENV = "HIL_TEST_SUDO_PASSWORD"
os.environ.setdefault(TEST_SUDO_PASSWORD_ENV, "pw-" + secrets.token_urlsafe(9))
TEST_LAB_TOML = f"""
[lab]
name = "{TEST_LAB_NAME}"
subnet = "{TEST_SUBNET}"

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
[devices.ssh]
user = "{TEST_LAB_NAME}u"
[devices.become]
password = "${{{TEST_SUDO_PASSWORD_ENV}}}"
"""

# Only ever an address inside the test lab's subnet, and only while the `lab` fixture is up: the lab's
# bridge owns the test subnet, so nothing sent there leaves this machine, and nothing answers at .250.
GHOST_ADDRESS = TEST_SUBNET.replace(".0/24", ".250")
GHOST_TOML = """
[[devices]]
name = "ghost"
tags = ["ghost"]
workdir = "/var/lib/hil"

[devices.ssh]
host = "{host}"
connect_timeout = 1
strict_host_key_checking = false
known_hosts = "{known_hosts}"
# Kernel-enforced network safety: packets for the ghost may only use the test lab's bridge, so even
# if another session takes the lab down mid-run, nothing is ever routed off this machine.
bind_interface = "{bridge}"
"""

def _route(address: str) -> str | None:
    """The interface the kernel would send a packet for `address` out of."""
    out = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True).stdout
    return json.loads(out)[0].get("dev") if out.strip() else None


def ghost_device_toml(lab: EmulatedLab, known_hosts: Path) -> str:
    """A [[devices]] entry for "ghost", a device that never answers, checked safe to try to reach first."""
    # Network safety: the ghost lives inside the lab's own subnet, at an address no device uses.
    assert ipaddress.ip_address(GHOST_ADDRESS) in lab.inventory.lab.subnet
    assert GHOST_ADDRESS not in {d.ssh.host for d in lab.inventory.devices}
    bridge = network.bridge_name(lab.config.name)
    assert _route(GHOST_ADDRESS) == bridge, "the test lab's bridge does not own its subnet: not connecting"
    return GHOST_TOML.format(host=GHOST_ADDRESS, known_hosts=known_hosts, bridge=bridge)


# Tests that need the emulated lab (root: network namespaces, cgroups, users) carry the `lab` marker: set by
# hand (pytestmark = needs_root, or @needs_root) or, for every test using one of LAB_FIXTURES (directly or
# through another fixture), by pytest_collection_modifyitems below. Not root, they skip; `-m "not lab"`
# deselects them.
needs_root = pytest.mark.lab
LAB_FIXTURES = frozenset({"lab", "handbuilt", "device_a", "device_b", "roll_lab"})  # roll_lab: test_rollout.py
NEEDS_ROOT = "needs root: the emulated lab (run as root, or -m 'not lab')"


@pytest.hookimpl(tryfirst=True)  # before -m deselects: `-m "not lab"` then sees the markers added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = os.geteuid() == 0
    for item in items:
        if LAB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)
        if not root and item.get_closest_marker("lab") is not None:
            item.add_marker(pytest.mark.skip(reason=NEEDS_ROOT))


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
