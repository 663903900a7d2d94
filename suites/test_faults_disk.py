"""A full disk: a new version is refused by preflight, and the version that runs stays active and runs."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from hil.deploy import DeployedModel
from hil.errors import DeployError
from hil.faults.injector import FaultInjector
from hil.testing import DeployTo, Releases

pytestmark = pytest.mark.faults


def test_full_disk_refuses_a_new_version_and_keeps_the_old_one(deployed_model: DeployedModel,
                                                              faults: FaultInjector, releases: Releases,
                                                              deploy_to: DeployTo, tmp_path: Path) -> None:
    device, original = deployed_model.device, deployed_model.artifact
    newer = releases.make(original, tmp_path / "newer", f"{original.manifest.version}-diskfull")
    with faults.disk_fill(device, leave_bytes=1024 * 1024):
        with pytest.raises(DeployError, match=r"not enough space .* needs .* MiB .* MiB free"):
            deploy_to(device, newer)
        active = device.run(f"sha256sum {shlex.quote(deployed_model.path)}", timeout=30, check=True)
        assert active.stdout.split()[0] == original.manifest.sha256
        code = "import onnxruntime as o, sys; o.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
        loads = device.run(f"{shlex.quote(device.config.python)} -c {shlex.quote(code)} "
                           f"{shlex.quote(deployed_model.path)}", timeout=60)
        assert loads.ok, loads.stderr  # the old version still loads with the disk full
