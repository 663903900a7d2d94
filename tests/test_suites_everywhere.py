"""Every validation suite passes on both emulated profiles (root, and non-root with password sudo and a
console that logs in) and on the hand-built device, and leaves nothing applied in their kernels."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hil.lab import EmulatedLab, network
from tests.conftest import TEST_LAB_TOML, needs_root
from tests.handbuilt import EDGE_NS, HOME, HandBuilt
from tests.kernel_state import leftovers

pytestmark = needs_root

REPO = Path(__file__).resolve().parents[1]
TRUST = f'\n[deploy]\ntrusted_keys = ["{REPO / "fixtures" / "keys" / "demo-ed25519.pub"}"]\n' \
        f'artifacts = ["{REPO / "fixtures" / "models"}/*"]\n'
# What may skip, and only on a device that cannot take it: the hand-built device's sessions have no
# libfaketime (clock faults), and this kernel has no netem (delay).
ALLOWED_SKIPS = re.compile(r"libfaketime|clock_set = true|netem")


def _run_suites(devices: Path, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--strict-markers",
         str(REPO / "suites"), "--hil-devices", str(devices), "--hil-no-lab"],
        capture_output=True, text=True, timeout=900, cwd=cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    skips = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert all(ALLOWED_SKIPS.search(line) for line in skips), "\n".join(skips)
    return output


def test_every_suite_on_both_emulated_profiles(lab: EmulatedLab, tmp_path: Path) -> None:
    devices = tmp_path / "devices.toml"
    devices.write_text(TEST_LAB_TOML + TRUST)
    output = _run_suites(devices, tmp_path)
    assert "SKIPPED" not in output  # both emulated profiles can take every fault this kernel has
    for device in lab.devices:
        assert leftovers(network.netns_name(lab.config.name, device.name), device.workdir or "") == []
        clock = (lab.config.dir / device.name / "faketime").read_text().strip()
        assert clock == "+0", f"{device.name}: clock control file left at {clock!r}"


def test_every_suite_on_the_hand_built_device(handbuilt: HandBuilt) -> None:
    devices = handbuilt.directory / "devices-with-trust.toml"
    devices.write_text(handbuilt.devices_toml.read_text() + TRUST)
    _run_suites(devices, handbuilt.directory)
    assert leftovers(EDGE_NS, str(HOME / "hil")) == []
