"""Device facts and health against the emulated lab."""

from __future__ import annotations

import dataclasses

import pytest

from hil.device import MIN_FREE_BYTES, Device
from hil.lab import EmulatedLab

pytestmark = pytest.mark.usefixtures("lab")


def test_facts_describe_the_device(device_b: Device) -> None:
    facts = device_b.facts()
    assert facts.hostname == "emu-b"
    assert facts.emulated is True
    assert facts.cpu_quota == pytest.approx(0.5)
    assert facts.memory_limit_bytes == 256 * 2**20
    assert facts.disk_total_bytes == 32 * 2**20 and facts.disk_path == "/var/lib/hil"
    assert facts.onnxruntime and "CPUExecutionProvider" in facts.providers
    assert facts.clock.uncertainty < 0.05
    assert device_b.facts() is facts  # cached for the session
    summary = facts.summary()
    assert summary["hostname"] == "emu-b" and "clock_offset" in summary


def test_health_ok_then_full_disk_is_a_problem(device_b: Device) -> None:
    assert device_b.health().ok
    leave = MIN_FREE_BYTES // 2
    fill = f"{device_b.workdir}/fill"
    device_b.run(f"fallocate -l $(( $(df -B1 --output=avail {device_b.workdir} | tail -1) - {leave} )) {fill}",
                 timeout=30, check=True)
    try:
        health = device_b.health()
        assert not health.ok
        assert any("MiB free" in p and device_b.workdir in p for p in health.problems)
    finally:
        device_b.run(f"rm -f {fill}", timeout=10)
    assert device_b.health().ok


def test_health_of_an_unreachable_device_is_an_infra_problem(lab: EmulatedLab, device_a: Device) -> None:
    lab.set_link("emu-a", up=False)
    try:
        config = lab.inventory.get("emu-a")
        device = Device(dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, connect_timeout=1.0)))
        health = device.health()
        assert not health.ok and "emu-a" in health.problems[0]
    finally:
        lab.set_link("emu-a", up=True)
