"""Every hil command that changes a device or measures on it takes the device's lease first (hil.pool): it
never pulls a device from under a run that holds it, and inside `hil lease DEVICE -- CMD` it joins that lease."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.synthetic import DEMO_SIGNING_KEY as DEMO_KEY
from hil.artifacts import load_artifact
from hil.device import Device
from hil.lab import EmulatedLab
from hil.lease import Lease, holder_of
from tests.conftest import needs_root

pytestmark = needs_root

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "digits-mlp"


@pytest.fixture
def hil(lab: EmulatedLab) -> list[str]:
    return [sys.executable, "-m", "hil.cli", "--devices", str(lab.inventory.path), "--lease-timeout", "1"]


@pytest.mark.parametrize("command", [["run", "emu-a", "--", "true"], ["faults", "clear", "emu-a"],
                                     ["reboot", "emu-a"], ["rollback", "emu-a", "digits-mlp"],
                                     ["deploy", "emu-a", str(MODEL)], ["bench", "emu-a", str(MODEL)],
                                     ["eval", "emu-a", str(MODEL)]])
def test_a_command_waits_for_the_holder_and_says_who_it_is(hil: list[str], device_a: Device,
                                                           command: list[str]) -> None:
    with Lease(device_a, "nightly-run-42", timeout=5):
        out = subprocess.run([*hil, *command], capture_output=True, text=True, timeout=60)
        assert holder_of(device_a) is not None and holder_of(device_a).run_id == "nightly-run-42"
    assert out.returncode == 75, out.stdout + out.stderr  # infrastructure: the lab is busy, retry
    assert "leased by" in out.stderr and "nightly-run-42" in out.stderr and "still busy after 1." in out.stderr


def test_a_read_only_look_needs_no_lease(hil: list[str], device_a: Device) -> None:
    with Lease(device_a, "nightly-run-43", timeout=5):
        out = subprocess.run([*hil, "run", "--no-lease", "emu-a", "--", "echo", "looked"], capture_output=True,
                             text=True, timeout=60)
        faults = subprocess.run([*hil, "faults", "list", "emu-a"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "looked\n", out.stderr
    assert faults.returncode == 0, faults.stderr


def test_a_command_inside_hil_lease_joins_that_lease(hil: list[str]) -> None:
    inner = [*hil, "run", "emu-a", "--", "echo", "inside"]
    out = subprocess.run([*hil, "lease", "emu-a", "--", *inner], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == "inside\n" and "leased to" in out.stderr


def _json(hil: list[str], *command: str) -> object:
    out = subprocess.run([*hil, *command, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_listing_and_reporting_commands_speak_json(hil: list[str], device_a: Device, lab: EmulatedLab,
                                                   tmp_path: Path) -> None:
    with Lease(device_a, "nightly-run-44", timeout=5):
        listed = {d["name"]: d for d in _json(hil, "devices", "list", "--leases")}  # type: ignore[union-attr]
    assert listed["emu-a"]["lease"]["run_id"] == "nightly-run-44" and listed["emu-a"]["lease"]["since"]
    assert listed["emu-b"]["lease"] is None and "jetson" in listed["emu-a"]["tags"] and listed["emu-a"]["emulated"]
    assert {d["name"]: d["up"] for d in _json(hil, "lab", "status")} == {"emu-a": True, "emu-b": True}  # type: ignore[union-attr]
    (checked,) = _json(hil, "devices", "check", "emu-a")  # type: ignore[misc]
    assert checked["healthy"] is True and checked["onnxruntime"] and checked["leased_by"] is None
    assert _json(hil, "faults", "list", "emu-a") == []
    trusting = tmp_path / "devices.toml"  # the test lab's devices.toml, trusting the demo key
    trust = f'\n[deploy]\ntrusted_keys = ["{DEMO_KEY.with_suffix(".pub")}"]\n'
    trusting.write_text(lab.inventory.path.read_text() + trust)
    deployed = _json([*hil[:-4], "--devices", str(trusting)], "deploy", "emu-a", str(MODEL))
    assert deployed["sha256"] == load_artifact(MODEL).manifest.sha256  # type: ignore[index]
    assert any(m["name"] == "digits-mlp" for m in _json(hil, "status", "emu-a"))  # type: ignore[union-attr]
