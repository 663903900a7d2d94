"""Latency is timed on representative inputs: rows of the artifact's eval data, or random data of the named
dimension sizes asked for; never silently at every named dimension 1 when the artifact says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.artifacts import generate_key_pair, init_manifest, load_artifact, load_private_key, load_public_key, sign
from hil.deploy import DeployedModel, deploy
from hil.device import Device
from hil.evaluation import latency_inputs
from hil.runner import run_latency
from tests.conftest import needs_root
from tests.user_model import build_sequence_artifact

pytestmark = needs_root

AGREEMENT = {"task": "agreement", "data": "eval/data.npz", "inputs": {"tokens": "tokens"}, "output": "pooled",
             "reference": "eval/reference.npz"}


def _timed_shape(device: Device, directory: Path, key: Path, dims: dict[str, int] | None = None) -> list[int]:
    sign(directory, load_private_key(key))
    artifact = load_artifact(directory)
    result = deploy(device, artifact, [load_public_key(key.with_suffix(".pub"))])
    run = run_latency(DeployedModel(device, artifact, result), warmup=2, min_iterations=20, min_duration_s=0.05,
                      threads=1, **latency_inputs(artifact, dims))
    (fed,) = run.inputs
    return list(fed["shape"])


@pytest.mark.usefixtures("lab")
def test_a_sequence_model_is_timed_at_the_length_it_is_asked_for(device_a: Device, tmp_path: Path) -> None:
    generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub")
    directory = build_sequence_artifact(tmp_path / "pool", seq=16)
    init_manifest(directory, "pool", "1.0.0", eval=AGREEMENT)
    assert _timed_shape(device_a, directory, tmp_path / "k.pem") == [1, 16, 8]  # the eval rows, as they are
    assert _timed_shape(device_a, directory, tmp_path / "k.pem", {"seq": 128}) == [1, 128, 8]  # --dim seq=128
    init_manifest(directory, eval={"dims": {"seq": 64}})  # the manifest's own size
    assert _timed_shape(device_a, directory, tmp_path / "k.pem") == [1, 64, 8]
