"""hil against a device it did not build (tests/handbuilt.py): reached through a jump host from the user's
ssh_config, as a non-root user with password sudo, with Python in a venv at a non-default path and a
serial console that wants a login and prints a noisy prompt and kernel messages."""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hil.config import BecomeConfig, Secret, load_inventory
from hil.device import Device
from hil.errors import PrivilegeUnavailable
from tests.handbuilt import KERNEL_MESSAGE, HandBuilt

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def edge(handbuilt: HandBuilt) -> Device:
    device = Device(load_inventory(handbuilt.devices_toml).get("edge-01"))
    yield device  # type: ignore[misc]
    device.close()


def test_reached_through_the_bastion_as_the_login_user(edge: Device, handbuilt: HandBuilt) -> None:
    assert edge.run("hostname; id -un", timeout=15).stdout.split() == ["edge-01", handbuilt.user]
    assert len(edge.ssh._jumps) == 1  # the ProxyJump of the user's ssh_config
    assert edge.workdir == f"/home/{handbuilt.user}/hil"  # ~/hil, under the login user's home


def test_serial_console_with_login_and_noise_is_exact(edge: Device) -> None:
    # First on the console in this module: the kernel message comes 2 s after a login, and only the
    # first use logs in (hil keeps a console's session, as a person at the console would).
    result = edge.console("printf 'a\\nb\\n'; sleep 2.5; echo c; sh -c 'exit 4'", timeout=20)
    assert result.exit_status == 4
    assert result.stdout == "a\nb\nc\n"  # the kernel message that landed meanwhile is not in the output
    assert KERNEL_MESSAGE.encode() in edge.serial.console_log  # but the raw log kept it
    assert edge.console("whoami", timeout=10).stdout == "hiledge\n"


def test_facts_use_the_devices_own_python(edge: Device, handbuilt: HandBuilt) -> None:
    facts = edge.facts()
    assert facts.python_executable == handbuilt.python
    assert facts.onnxruntime and "CPUExecutionProvider" in facts.providers
    assert facts.uid != 0
    assert edge.health().ok


def test_root_through_sudo_with_a_password_that_is_never_shown(edge: Device, handbuilt: HandBuilt,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert edge.can_become_root() == (True, "sudo works")
    result = edge.run("id -u; echo \"$PROBE\"", timeout=15, root=True, env={"PROBE": "env kept"})
    assert result.stdout == "0\nenv kept\n" and result.command == "id -u; echo \"$PROBE\""
    assert edge.run("id -u", timeout=15).stdout == f"{edge.login()[0]}\n"  # everything else stays the user
    assert handbuilt.password not in caplog.text
    # Nothing on the device holds it either: the askpass helper reads an environment variable.
    found = edge.run(f"grep -rl {shlex.quote(handbuilt.password)} ~ 2>/dev/null || true", timeout=15).stdout
    assert found == ""


def test_without_a_way_to_root_operations_are_skipped_not_half_done(edge: Device) -> None:
    wrong = Device(dataclasses.replace(edge.config, become=BecomeConfig("sudo", Secret("wrong", "${X}"))))
    none = Device(dataclasses.replace(edge.config, become=BecomeConfig("none")))
    try:
        ok, why = wrong.can_become_root()
        assert not ok and "sudo failed" in why
        with pytest.raises(PrivilegeUnavailable, match=r"clock step needs root.*become.method"):
            none.require_root("clock step")
    finally:
        wrong.close()
        none.close()


def test_a_python_without_onnxruntime_is_named_before_tests_spend_time(edge: Device) -> None:
    plain = Device(dataclasses.replace(edge.config, python="/usr/bin/python3"))
    try:
        health = plain.health()
        assert not health.ok
        [problem] = health.problems
        assert "onnxruntime does not import with /usr/bin/python3" in problem and "pip install onnxruntime" in problem
        assert plain.facts().python_executable == "/usr/bin/python3" and plain.facts().onnxruntime is None
    finally:
        plain.close()


def test_bench_through_the_jump_host_as_the_login_user(handbuilt: HandBuilt) -> None:
    devices = handbuilt.directory / "devices-bench.toml"
    trust = f'\n[deploy]\ntrusted_keys = ["{REPO / "fixtures" / "keys" / "demo-ed25519.pub"}"]\n'
    devices.write_text(handbuilt.devices_toml.read_text() + trust)
    result = subprocess.run(
        [sys.executable, "-m", "hil.cli", "--devices", str(devices), "bench", "edge-01",
         str(REPO / "fixtures" / "models" / "digits-cnn"), "--json", "--min-iterations", "300",
         "--min-duration", "0.5"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert (report["device"], report["emulated"]) == ("edge-01", False)
    assert report["latency"]["count"] >= 300 and report["latency"]["p99_ms"] >= report["latency"]["p50_ms"] > 0
    assert "CPUExecutionProvider" in report["providers"]


def test_clock_faults_without_libfaketime_need_an_explicit_opt_in(edge: Device) -> None:
    from hil import faults
    from hil.errors import CapabilityMissing

    # This device's sessions have no libfaketime, and setting its clock would move the host's (one
    # kernel): both ways must refuse with the reason instead of pretending.
    with pytest.raises(CapabilityMissing, match="clock drift needs libfaketime"), faults.clock_drift(edge, ppm=50):
        pass
    with pytest.raises(CapabilityMissing, match="clock_set = true"), faults.clock_step(edge, 60):
        pass
    assert faults.pending(edge) == []
