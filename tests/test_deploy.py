"""Deploy against the emulated lab: atomic, idempotent, resumable, and the old version survives failures."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fixtures.synthetic import DEMO_SIGNING_KEY as DEMO_KEY
from fixtures.synthetic import make_artifact
from hil.artifacts import load_artifact, load_public_key
from hil.deploy import deploy, rollback, status
from hil.device import Device
from hil.errors import ArtifactRejected, DeployError, RuntimeIncompatible, TransportError
from hil.lab import EmulatedLab

TRUSTED = [load_public_key(DEMO_KEY.with_suffix(".pub"))]
pytestmark = pytest.mark.usefixtures("lab")


def _infer(device: Device, model_path: str) -> float:
    """Load the active model with onnxruntime on the device and run it once; returns y[0][0] for x = 0."""
    code = (f"import onnxruntime as ort, numpy as np; s = ort.InferenceSession({model_path!r}, "
            "providers=['CPUExecutionProvider']); print(s.run(['y'], {'x': np.zeros((1, 4), np.float32)})[0][0][0])")
    result = device.run(f"python3 -c {shlex.quote(code)}", timeout=60, check=True)
    return float(result.stdout)


@pytest.fixture
def clean(device_a: Device) -> Device:
    device_a.run(f"rm -rf {device_a.workdir}/models", timeout=30, check=True)
    return device_a


def test_deploy_runs_then_redeploy_is_a_no_op(clean: Device, tmp_path: Path) -> None:
    artifact = load_artifact(make_artifact(tmp_path / "v1", bias=1.0))
    first = deploy(clean, artifact, TRUSTED)
    assert not first.already_active and first.transferred_bytes == artifact.manifest.size
    assert first.providers == ("CPUExecutionProvider",) and first.fallback is None
    assert _infer(clean, first.model_path) == 1.0
    again = deploy(clean, artifact, TRUSTED)
    assert again.already_active and again.transferred_bytes == 0
    [model] = status(clean)
    assert model.active == f"1.0.0-{artifact.manifest.sha256[:12]}" and model.last is not None
    assert model.last.action == "deploy" and model.last.sha256 == artifact.manifest.sha256 and "@" in model.last.by


def test_rollback_restores_the_previous_version(clean: Device, tmp_path: Path) -> None:
    deploy(clean, load_artifact(make_artifact(tmp_path / "v1", version="1.0.0", bias=1.0)), TRUSTED)
    second = deploy(clean, load_artifact(make_artifact(tmp_path / "v2", version="2.0.0", bias=2.0)), TRUSTED)
    assert _infer(clean, second.model_path) == 2.0
    record = rollback(clean, "tiny")
    assert record.version == "1.0.0" and record.action == "rollback"
    assert _infer(clean, second.model_path) == 1.0  # same path, now the old version
    # Redeploying v2 needs no transfer: it is still kept on the device.
    third = deploy(clean, load_artifact(tmp_path / "v2"), TRUSTED)
    assert third.transferred_bytes == 0 and _infer(clean, third.model_path) == 2.0


def test_old_versions_are_pruned_but_the_active_one_stays(clean: Device, tmp_path: Path) -> None:
    for i in range(5):
        deploy(clean, load_artifact(make_artifact(tmp_path / f"v{i}", version=f"{i}.0", bias=float(i))), TRUSTED,
               keep=2)
    [model] = status(clean)
    assert len(model.versions) == 2 and model.active in model.versions and model.active.startswith("4.0-")


def test_tampered_artifact_is_rejected_and_the_active_version_stays(clean: Device, tmp_path: Path) -> None:
    good = deploy(clean, load_artifact(make_artifact(tmp_path / "v1", bias=1.0)), TRUSTED)
    bad_dir = make_artifact(tmp_path / "v2", version="2.0.0", bias=2.0)
    model = bad_dir / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x7f")
    with pytest.raises(ArtifactRejected, match="changed after signing"):
        deploy(clean, load_artifact(bad_dir), TRUSTED)
    assert _infer(clean, good.model_path) == 1.0
    assert clean.run(f"ls {clean.workdir}/models/tiny/staging", timeout=10).stdout == ""  # nothing was sent


def test_failure_at_activation_leaves_the_old_version_active(clean: Device, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    good = deploy(clean, load_artifact(make_artifact(tmp_path / "v1", bias=1.0)), TRUSTED)

    def broken(*_: object) -> None:
        raise TransportError("link died right before the switch")

    monkeypatch.setattr("hil.deploy._activate", broken)
    with pytest.raises(TransportError):
        deploy(clean, load_artifact(make_artifact(tmp_path / "v2", version="2.0.0", bias=2.0)), TRUSTED)
    assert _infer(clean, good.model_path) == 1.0


def test_disk_too_small_is_a_clear_preflight_error(device_b: Device, tmp_path: Path) -> None:
    device_b.run(f"rm -rf {device_b.workdir}/models", timeout=30, check=True)
    big = load_artifact(make_artifact(tmp_path / "big", name="big", padding_floats=10 * 2**20))  # 40 MiB > 32 MiB
    with pytest.raises(DeployError, match=r"device 'emu-b': not enough space .* needs 4\d\.\d MiB .* MiB free"):
        deploy(device_b, big, TRUSTED)
    assert device_b.run(f"ls {device_b.workdir}/models/big/staging", timeout=10).stdout == ""


def test_missing_provider_is_refused_unless_fallback_is_explicit(clean: Device, tmp_path: Path) -> None:
    directory = make_artifact(tmp_path / "gpu", name="gpu", sign_with=None)
    from hil.artifacts import init_manifest, load_private_key, sign

    init_manifest(directory, "gpu", "1.0", providers=("TensorrtExecutionProvider",))
    sign(directory, load_private_key(DEMO_KEY))
    artifact = load_artifact(directory)
    with pytest.raises(RuntimeIncompatible, match="needs one of TensorrtExecutionProvider"):
        deploy(clean, artifact, TRUSTED)
    result = deploy(clean, artifact, TRUSTED, allow_provider_fallback=True)
    assert result.providers == ("CPUExecutionProvider",) and "explicit fallback" in (result.fallback or "")


def _reset_ssh(lab: EmulatedLab, device: str, on: bool) -> None:
    """Inside the device's namespace: reset every SSH packet (the connection breaks at once)."""
    ns = f"{lab.config.name}-{device}"
    action = "-I" if on else "-D"
    subprocess.run(["ip", "netns", "exec", ns, "iptables", action, "INPUT", "-p", "tcp", "--dport", "22",
                    "-j", "REJECT", "--reject-with", "tcp-reset"], check=True)


def test_interrupted_upload_resumes_where_it_broke(lab: EmulatedLab, clean: Device, tmp_path: Path) -> None:
    artifact = load_artifact(make_artifact(tmp_path / "big", name="big", padding_floats=4 * 2**20))  # 16 MiB
    size = artifact.manifest.size
    broke_at: list[int] = []
    offsets: list[int] = []

    def progress(done: int, total: int) -> None:
        offsets.append(done)
        if not broke_at and done >= total // 2:
            broke_at.append(done)
            _reset_ssh(lab, "emu-a", on=True)
            threading.Timer(1.0, _reset_ssh, args=(lab, "emu-a", False)).start()

    result = deploy(clean, artifact, TRUSTED, progress=progress, timeout=60)
    assert broke_at and result.attempts >= 2
    # Resumed, not restarted: the bytes sent add up to one copy (plus at most what was in flight).
    assert size <= result.transferred_bytes < size + 4 * 2**20
    assert min(o for o in offsets[offsets.index(broke_at[0]) + 1:]) > size // 4
    assert clean.run(f"sha256sum {result.model_path}", timeout=30).stdout.split()[0] == artifact.manifest.sha256
    assert clean.ssh.connects >= 2


def test_upload_that_never_completes_leaves_the_old_version(lab: EmulatedLab, clean: Device, tmp_path: Path) -> None:
    good = deploy(clean, load_artifact(make_artifact(tmp_path / "v1", bias=1.0)), TRUSTED)
    newer = load_artifact(make_artifact(tmp_path / "v2", version="2.0.0", bias=2.0, padding_floats=2**20))

    def cut(done: int, total: int) -> None:
        if done >= total // 4:
            _reset_ssh(lab, "emu-a", on=True)

    try:
        started = time.monotonic()
        with pytest.raises(DeployError, match=r"did not complete after (\d+\.\d) s .*\(timeout 3 s\)") as info:
            deploy(clean, newer, TRUSTED, progress=cut, timeout=3)
        said = float(info.value.args[0].split("did not complete after ")[1].split(" s")[0])
        assert 3.0 <= said <= time.monotonic() - started + 0.05  # the time really waited, not the setting
    finally:
        _reset_ssh(lab, "emu-a", on=False)
    assert _infer(clean, good.model_path) == 1.0


def test_a_corrupt_staged_copy_is_replaced(clean: Device, tmp_path: Path) -> None:
    artifact = load_artifact(make_artifact(tmp_path / "v1", bias=3.0))
    staging = f"{clean.workdir}/models/tiny/staging"
    clean.run(f"mkdir -p {staging} && head -c {artifact.manifest.size} /dev/urandom > "
              f"{staging}/{artifact.manifest.sha256}.part", timeout=30, check=True)
    result = deploy(clean, artifact, TRUSTED)
    assert result.transferred_bytes == artifact.manifest.size and _infer(clean, result.model_path) == 3.0


def test_rollback_without_history_says_so(clean: Device, tmp_path: Path) -> None:
    from hil.errors import RollbackUnavailable

    with pytest.raises(RollbackUnavailable, match="not deployed"):
        rollback(clean, "tiny")
    deploy(clean, load_artifact(make_artifact(tmp_path / "v1")), TRUSTED)
    with pytest.raises(RollbackUnavailable, match="no earlier version"):
        rollback(clean, "tiny")


def test_cli_deploy_status_rollback(lab: EmulatedLab, clean: Device, tmp_path: Path) -> None:
    hil = [sys.executable, "-m", "hil.cli", "--devices", str(lab.inventory.path)]
    # The test lab's devices.toml trusts no key: verify with the demo key explicitly.
    v1 = make_artifact(tmp_path / "v1", bias=1.0)
    ok = subprocess.run([*hil, "artifact", "verify", str(v1), "--key", str(DEMO_KEY.with_suffix(".pub"))],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "OK" in ok.stdout
    refused = subprocess.run([*hil, "deploy", "emu-a", str(v1)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "no trusted keys" in refused.stderr
    assert "Traceback" not in refused.stderr
    # With the demo key trusted: deploy, status, rollback from the shell.
    devices = tmp_path / "devices.toml"
    trust = f'\n[deploy]\ntrusted_keys = ["{DEMO_KEY.with_suffix(".pub")}"]\n'
    devices.write_text(lab.inventory.path.read_text() + trust)
    hil = [sys.executable, "-m", "hil.cli", "--devices", str(devices)]
    v2 = make_artifact(tmp_path / "v2", version="2.0.0", bias=2.0)
    for artifact in (v1, v2):
        out = subprocess.run([*hil, "deploy", "emu-a", str(artifact)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "activated" in out.stdout, out.stderr
    status_out = subprocess.run([*hil, "status", "emu-a", "--json"], capture_output=True, text=True, timeout=60)
    [model] = json.loads(status_out.stdout)
    assert model["active"].startswith("2.0.0-") and len(model["versions"]) == 2
    back = subprocess.run([*hil, "rollback", "emu-a", "tiny"], capture_output=True, text=True, timeout=60)
    assert back.returncode == 0 and "rolled back to 1.0.0" in back.stdout
    assert _infer(clean, f"{clean.workdir}/models/tiny/current/model.onnx") == 1.0
