"""Network faults during deploy: the deploy completes (resume and retries) and verifies."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from hil.deploy import DeployedModel
from hil.faults.injector import FaultInjector
from hil.testing import DeployTo, Releases

pytestmark = pytest.mark.faults


def _deploy_under(fault_name: str, deployed: DeployedModel, faults: FaultInjector, releases: Releases,
                  deploy_to: DeployTo, tmp_path: Path, **params: float) -> None:
    newer = releases.make(deployed.artifact, tmp_path / "newer", f"{deployed.artifact.manifest.version}-{fault_name}")
    try:
        with getattr(faults, fault_name)(deployed.device, max_seconds=180, **params):
            result = deploy_to(deployed.device, newer, timeout=150).result
        active = deployed.device.run(f"sha256sum {shlex.quote(result.model_path)}", timeout=30, check=True)
        assert active.stdout.split()[0] == newer.manifest.sha256
    finally:
        deploy_to(deployed.device, deployed.artifact)  # leave it as it was


def test_deploy_through_20_percent_packet_loss(deployed_model: DeployedModel, faults: FaultInjector,
                                               releases: Releases, deploy_to: DeployTo, tmp_path: Path) -> None:
    _deploy_under("packet_loss", deployed_model, faults, releases, deploy_to, tmp_path, rate=0.2)


def test_deploy_through_a_bandwidth_cap(deployed_model: DeployedModel, faults: FaultInjector,
                                        releases: Releases, deploy_to: DeployTo, tmp_path: Path) -> None:
    _deploy_under("bandwidth_cap", deployed_model, faults, releases, deploy_to, tmp_path, kbit=1000)
