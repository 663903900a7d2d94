"""Smoke suite: can hil reach each device, and is the device fit to run models?"""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

import pytest

from hil.device import Device

CLOCK_TOLERANCE_S = 1.0


def test_ssh_round_trip(device: Device) -> None:
    result = device.run("echo out; echo err >&2; exit 3", timeout=10)
    assert (result.stdout, result.stderr, result.exit_status) == ("out\n", "err\n", 3)


def test_serial_round_trip(device: Device) -> None:
    if device.config.serial is None:
        pytest.skip(f"device '{device.name}' has no serial console wired")
    result = device.console("hostname; sh -c 'exit 5'", timeout=10)
    assert result.exit_status == 5
    assert result.stdout.strip() == device.facts().hostname


def test_facts_sane(device: Device) -> None:
    facts = device.facts()
    assert facts.hostname
    assert facts.cpu_count >= 1
    assert facts.memory_total_bytes and facts.memory_total_bytes > 64 * 2**20
    assert 0 < facts.disk_free_bytes <= facts.disk_total_bytes
    assert tuple(int(x) for x in facts.python.split(".")[:2]) >= (3, 8)
    resources = device.config.resources
    if device.config.emulated and resources is not None:
        # An emulated device must really have the limits its profile promises.
        assert facts.cpu_quota == pytest.approx(resources.cpus)
        assert facts.memory_limit_bytes == resources.memory_bytes
        assert facts.disk_total_bytes == resources.disk_bytes


def test_workdir_writable(device: Device, tmp_path: Path) -> None:
    payload = uuid.uuid4().bytes * 4096
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    remote = f"{device.workdir}/smoke-{uuid.uuid4().hex}.bin"
    try:
        device.put(local, remote)
        assert device.run(f"wc -c < {remote}", check=True).stdout.strip() == str(len(payload))
        device.get(remote, tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == payload
    finally:
        device.run(f"rm -f {remote}")


def test_clock_offset_within_tolerance(device: Device) -> None:
    clock = device.clock_offset()
    assert abs(clock.offset) <= CLOCK_TOLERANCE_S + clock.uncertainty, f"device clock is off by {clock}"


def test_onnxruntime_on_device(device: Device) -> None:
    code = "import onnxruntime as ort; print(ort.__version__); print(','.join(ort.get_available_providers()))"
    result = device.run(f"{shlex.quote(device.config.python)} -c {shlex.quote(code)}", timeout=60, check=True)
    version, providers = result.stdout.split()
    assert version == device.facts().onnxruntime
    assert "CPUExecutionProvider" in providers.split(",")
