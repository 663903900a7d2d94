"""Deploy suite: every demo artifact on every device; redeploy, rollback and tampering."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from hil.artifacts import load_artifact
from hil.deploy import DeployedModel, rollback
from hil.errors import ArtifactRejected
from hil.testing import DeployTo, Releases


def _session_io(deployed: DeployedModel) -> tuple[list[str], list[str]]:
    """Load the active model with onnxruntime on the device; its input and output names."""
    code = ("import onnxruntime as ort, sys; s = ort.InferenceSession(sys.argv[1], providers=sys.argv[2].split(',')); "
            "print(','.join(i.name for i in s.get_inputs())); print(','.join(o.name for o in s.get_outputs()))")
    device = deployed.device
    result = device.run(f"{shlex.quote(device.config.python)} -c {shlex.quote(code)} {shlex.quote(deployed.path)} "
                        f"{','.join(deployed.result.providers)}", timeout=60, check=True)
    inputs, outputs = result.stdout.split()
    return inputs.split(","), outputs.split(",")


def test_deployed_model_loads_on_the_device(deployed_model: DeployedModel) -> None:
    manifest = deployed_model.artifact.manifest
    inputs, outputs = _session_io(deployed_model)
    assert inputs == [t.name for t in manifest.inputs]
    assert outputs == [t.name for t in manifest.outputs]
    sha = deployed_model.device.run(f"sha256sum {shlex.quote(deployed_model.path)}", check=True).stdout.split()[0]
    assert sha == manifest.sha256


def test_redeploy_sends_nothing(deployed_model: DeployedModel, deploy_to: DeployTo) -> None:
    again = deploy_to(deployed_model.device, deployed_model.artifact).result
    assert again.already_active and again.transferred_bytes == 0


def test_rollback_restores_the_previous_version(deployed_model: DeployedModel, tmp_path: Path,
                                                releases: Releases, deploy_to: DeployTo) -> None:
    device, original = deployed_model.device, deployed_model.artifact
    newer = releases.make(original, tmp_path / "newer", f"{original.manifest.version}-next")
    try:
        assert deploy_to(device, newer).result.sha256 == newer.manifest.sha256
        record = rollback(device, original.manifest.name)
        assert record.sha256 == original.manifest.sha256
        assert _session_io(deployed_model)[0] == [t.name for t in original.manifest.inputs]  # it still runs
    finally:
        deploy_to(device, original)  # leave the device as the other tests expect it


def test_tampered_artifact_is_rejected_and_nothing_changes(deployed_model: DeployedModel, tmp_path: Path,
                                                           deploy_to: DeployTo) -> None:
    device, artifact = deployed_model.device, deployed_model.artifact
    copy = tmp_path / "tampered"
    shutil.copytree(artifact.directory, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactRejected, match="changed after signing"):
        deploy_to(device, load_artifact(copy))
    active = device.run(f"sha256sum {shlex.quote(deployed_model.path)}", check=True).stdout.split()[0]
    assert active == artifact.manifest.sha256


def test_tampered_eval_data_is_rejected_naming_the_file(deployed_model: DeployedModel, tmp_path: Path,
                                                        deploy_to: DeployTo) -> None:
    """Eval data swapped after signing is refused like a swapped model: the contract binds its sha256."""
    contract = deployed_model.artifact.manifest.eval
    if contract is None:
        pytest.skip(f"{deployed_model.artifact.label} has no [eval]: no eval data to tamper with")
    copy = tmp_path / "tampered-eval"
    shutil.copytree(deployed_model.artifact.directory, copy)
    data = bytearray((copy / contract.data).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / contract.data).write_bytes(bytes(data))
    with pytest.raises(ArtifactRejected, match=rf"eval file {re.escape(str(copy / contract.data))} .*changed after"):
        deploy_to(deployed_model.device, load_artifact(copy))


def test_device_reports_what_is_deployed(deployed_model: DeployedModel) -> None:
    from hil.deploy import status

    models = {m.name: m for m in status(deployed_model.device)}
    mine = models[deployed_model.artifact.manifest.name]
    assert mine.active is not None and mine.active.endswith(deployed_model.artifact.manifest.sha256[:12])
    assert mine.last is not None and mine.last.by
