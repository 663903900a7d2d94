"""Artifact manifests, signing and verification: every tamper names the check that failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.synthetic import DEMO_SIGNING_KEY as DEMO_KEY
from fixtures.synthetic import make_artifact
from hil.artifacts import (
    generate_key_pair,
    load_artifact,
    load_private_key,
    load_public_key,
    parse_manifest,
    sign,
    verify,
)
from hil.errors import ArtifactRejected

DEMO_PUB = DEMO_KEY.with_suffix(".pub")


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "tiny")


def test_signed_artifact_verifies(artifact_dir: Path) -> None:
    artifact = load_artifact(artifact_dir)
    assert verify(artifact, [load_public_key(DEMO_PUB)]) == artifact.manifest.signature.key_id  # type: ignore[union-attr]
    manifest = artifact.manifest
    assert (manifest.name, manifest.version, manifest.opset) == ("tiny", "1.0.0", 17)
    assert manifest.inputs[0].name == "x" and manifest.inputs[0].shape == ("batch", 4)
    assert manifest.inputs[0].dtype == "float32"


def test_manifest_round_trips_through_toml(artifact_dir: Path) -> None:
    manifest = load_artifact(artifact_dir).manifest
    again = parse_manifest(manifest.to_toml(), artifact_dir / "manifest.toml")
    assert again == manifest and again.canonical() == manifest.canonical()


def test_one_changed_model_byte_is_rejected(artifact_dir: Path) -> None:
    model = artifact_dir / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactRejected, match=r"sha256 .* the model was changed after signing"):
        verify(load_artifact(artifact_dir), [load_public_key(DEMO_PUB)])


def test_one_changed_manifest_field_is_rejected(artifact_dir: Path) -> None:
    manifest = artifact_dir / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    with pytest.raises(ArtifactRejected, match="signature does not match the manifest"):
        verify(load_artifact(artifact_dir), [load_public_key(DEMO_PUB)])


def test_size_changed_in_manifest_and_model_is_caught(artifact_dir: Path) -> None:
    model = artifact_dir / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ArtifactRejected, match="bytes, the manifest says"):
        verify(load_artifact(artifact_dir), [load_public_key(DEMO_PUB)])


def test_wrong_key_is_rejected(artifact_dir: Path, tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    with pytest.raises(ArtifactRejected, match="not trusted"):
        verify(load_artifact(artifact_dir), [load_public_key(tmp_path / "other.pub")])
    # Signed by the other key, checked against the demo key: also not trusted.
    sign(artifact_dir, load_private_key(tmp_path / "other.pem"))
    with pytest.raises(ArtifactRejected, match="not trusted"):
        verify(load_artifact(artifact_dir), [load_public_key(DEMO_PUB)])


def test_forged_signature_under_a_trusted_key_id_is_rejected(artifact_dir: Path, tmp_path: Path) -> None:
    # Someone copies the trusted key id into a manifest they signed with their own key.
    generate_key_pair(tmp_path / "evil.pem", tmp_path / "evil.pub")
    trusted_id = load_artifact(artifact_dir).manifest.signature.key_id  # type: ignore[union-attr]
    sign(artifact_dir, load_private_key(tmp_path / "evil.pem"))
    manifest = artifact_dir / "manifest.toml"
    text = manifest.read_text()
    evil_id = load_artifact(artifact_dir).manifest.signature.key_id  # type: ignore[union-attr]
    manifest.write_text(text.replace(evil_id, trusted_id))
    with pytest.raises(ArtifactRejected, match="signature does not match"):
        verify(load_artifact(artifact_dir), [load_public_key(DEMO_PUB)])


def test_unsigned_artifact_is_rejected(tmp_path: Path) -> None:
    directory = make_artifact(tmp_path / "unsigned", sign_with=None)
    with pytest.raises(ArtifactRejected, match="unsigned"):
        verify(load_artifact(directory), [load_public_key(DEMO_PUB)])


def test_no_trusted_keys_is_rejected(artifact_dir: Path) -> None:
    with pytest.raises(ArtifactRejected, match="no trusted keys"):
        verify(load_artifact(artifact_dir), [])


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace("sha256 =", "sha256_x ="), "unknown manifest key"),
    (lambda t: t + "\n[budgets.jetson]\nlatency_p99_ms = -1\n", "positive number"),
    (lambda t: t + "\n[budgets.jetson]\nlatency_p42_ms = 3\n", "unknown budget"),
    (lambda t: "not = [toml", "not valid TOML"),
])
def test_bad_manifests_are_rejected_with_the_reason(artifact_dir: Path, edit, fragment: str) -> None:  # type: ignore[no-untyped-def]
    manifest = artifact_dir / "manifest.toml"
    manifest.write_text(edit(manifest.read_text()))
    with pytest.raises(ArtifactRejected, match=fragment):
        load_artifact(artifact_dir)


def test_not_an_artifact_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactRejected, match="not an artifact directory"):
        load_artifact(tmp_path)


@pytest.mark.parametrize(("older", "newer"), [("1.17rc1", "1.22"), ("1.16.3+cu118", "1.17"), ("1.9", "1.13"),
                                              ("1.18.0-jetpack6", "1.19"), ("1.13", "1.13.1")])
def test_onnxruntime_versions_are_ordered_as_pep_440_says(older: str, newer: str) -> None:
    from hil.deploy import runtime_version

    assert runtime_version(older) < runtime_version(newer)
    assert runtime_version("1.16.3+cu118") >= runtime_version("1.16")  # a local build is still 1.16.3
