"""`hil eval` from a shell against the test lab: accuracy on the device from the artifact's eval contract,
judged against its budgets, with bench's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.synthetic import DEMO_SIGNING_KEY as DEMO_KEY
from hil.artifacts import generate_key_pair, init_manifest, load_private_key, sign
from hil.lab import EmulatedLab
from tests.conftest import ghost_device_toml, needs_root
from tests.user_model import build_artifact

pytestmark = needs_root

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"


@pytest.fixture
def hil(lab: EmulatedLab, tmp_path: Path) -> list[str]:
    """`python -m hil.cli` on the test lab's devices.toml, trusting the demo key and this test's own key."""
    generate_key_pair(tmp_path / "user.pem", tmp_path / "user.pub")
    devices = tmp_path / "devices.toml"
    (tmp_path / "known_hosts").write_text("")  # the ghost's: it never answers, so no key is ever pinned
    trust = f'\n[deploy]\ntrusted_keys = ["{DEMO_KEY.with_suffix(".pub")}", "{tmp_path / "user.pub"}"]\n'
    devices.write_text(lab.inventory.path.read_text() + ghost_device_toml(lab, tmp_path / "known_hosts") + trust)
    return [sys.executable, "-m", "hil.cli", "--devices", str(devices)]


def _eval(hil: list[str], artifact: Path, *extra: str, device: str = "emu-a") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*hil, "eval", device, str(artifact), *extra], capture_output=True, text=True, timeout=180)


def test_an_int8_model_is_judged_on_its_labels_and_against_its_parent(hil: list[str]) -> None:
    out = _eval(hil, MODELS / "digits-cnn-int8", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["accuracy_top1"]["verdict"] == "PASS" and checks["accuracy_top1"]["value"] > 0.95
    relative = next(c for name, c in checks.items() if "fp32" in name or "relative" in name)
    assert relative["verdict"] == "PASS"
    assert (doc["device"], doc["model"], doc["task"], doc["samples"]) == ("emu-a", "digits-cnn-int8",
                                                                          "classification", 360)


def _user_artifact(directory: Path, key: Path, accuracy_budget: float) -> Path:
    artifact = build_artifact(directory)
    init_manifest(artifact, "anomaly", "1.0.0", budgets={"jetson": {"accuracy_top1": accuracy_budget}},
                  eval={"task": "classification", "data": "eval/data.npz", "inputs": {"features": "x"},
                        "labels": "y", "output": "probabilities", "reference": "eval/reference.npz"})
    sign(artifact, load_private_key(key))
    return artifact


def test_a_budget_the_model_misses_fails_with_exit_1(hil: list[str], tmp_path: Path) -> None:
    artifact = _user_artifact(tmp_path / "anomaly", tmp_path / "user.pem", 0.99)  # labels are ~10% noisy
    out = _eval(hil, artifact)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL" in out.stdout and "accuracy_top1" in out.stdout
    assert "PASS" in out.stdout and "max_abs_error" in out.stdout  # the outputs still match the reference


def test_an_artifact_without_a_contract_is_bad_input_exit_2(hil: list[str], tmp_path: Path) -> None:
    artifact = build_artifact(tmp_path / "bare")
    init_manifest(artifact, "bare", "1.0.0")
    sign(artifact, load_private_key(tmp_path / "user.pem"))
    out = _eval(hil, artifact)
    assert out.returncode == 2 and "has no [eval] table" in out.stderr and "hil artifact init" in out.stderr


def test_a_dead_device_is_infrastructure_exit_3(hil: list[str]) -> None:
    out = _eval(hil, MODELS / "digits-mlp", device="ghost")
    assert out.returncode == 75, out.stdout + out.stderr
    assert "infrastructure error" in out.stderr and "ghost" in out.stderr
