"""Network faults during deploy: the deploy completes (resume and retries) and verifies."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from hil.artifacts import Artifact
from hil.config import Inventory
from hil.deploy import DeployedModel, deploy, trusted_keys
from hil.faults.injector import FaultInjector

pytestmark = pytest.mark.faults
Release = Callable[[Artifact, Path, str], Artifact]


def _deploy_under(fault_name: str, deployed: DeployedModel, faults: FaultInjector, inventory: Inventory,
                  release: Release, tmp_path: Path, **params: float) -> None:
    newer = release(deployed.artifact, tmp_path / "newer", f"{deployed.artifact.manifest.version}-{fault_name}")
    try:
        with getattr(faults, fault_name)(deployed.device, max_seconds=180, **params):
            result = deploy(deployed.device, newer, trusted_keys(inventory.deploy), timeout=150)
        active = deployed.device.run(f"sha256sum {shlex.quote(result.model_path)}", timeout=30, check=True)
        assert active.stdout.split()[0] == newer.manifest.sha256
    finally:
        deploy(deployed.device, deployed.artifact, trusted_keys(inventory.deploy))  # leave it as it was


def test_deploy_through_20_percent_packet_loss(deployed_model: DeployedModel, faults: FaultInjector,
                                               hil_inventory: Inventory, another_release: Release,
                                               tmp_path: Path) -> None:
    _deploy_under("packet_loss", deployed_model, faults, hil_inventory, another_release, tmp_path, rate=0.2)


def test_deploy_through_a_bandwidth_cap(deployed_model: DeployedModel, faults: FaultInjector,
                                        hil_inventory: Inventory, another_release: Release, tmp_path: Path) -> None:
    _deploy_under("bandwidth_cap", deployed_model, faults, hil_inventory, another_release, tmp_path, kbit=1000)
