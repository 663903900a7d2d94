"""The evaluation contract in the manifest: written by `hil artifact init`, bound by the signature,
checked against the model, read back as data (no device needed here)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from hil import cli
from hil.artifacts import (
    generate_key_pair,
    init_manifest,
    load_artifact,
    load_private_key,
    load_public_key,
    sign,
    verify,
)
from hil.budgets import BudgetSpec
from hil.errors import ArtifactRejected, ConfigError
from hil.eval_contract import load_eval_data
from hil.evaluation import Evaluation, accuracy_checks, latency_inputs, top_k_accuracy
from hil.runner import EvalRun
from tests.user_model import build_artifact

EVAL = {"task": "classification", "data": "eval/data.npz", "inputs": {"features": "x"}, "labels": "y",
        "output": "probabilities", "reference": "eval/reference.npz"}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "key.pem", tmp_path / "key.pub"
    generate_key_pair(private, public)
    return private, public


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    return build_artifact(tmp_path / "anomaly")


def _signed(directory: Path, keys: tuple[Path, Path]) -> None:
    init_manifest(directory, "anomaly", "1.0.0", eval=EVAL)
    sign(directory, load_private_key(keys[0]))


def test_the_signature_binds_the_eval_files(artifact_dir: Path, keys: tuple[Path, Path]) -> None:
    _signed(artifact_dir, keys)
    trusted = [load_public_key(keys[1])]
    artifact = load_artifact(artifact_dir)
    assert artifact.manifest.eval is not None and set(artifact.manifest.eval.files) == {"eval/data.npz",
                                                                                       "eval/reference.npz"}
    assert verify(artifact, trusted)
    data = artifact_dir / "eval" / "data.npz"
    with np.load(data) as arrays:
        x, y = arrays["x"], arrays["y"]
    np.savez(data, x=x, y=1 - y)  # swapped labels: a release judged on other data
    with pytest.raises(ArtifactRejected, match=rf"eval file {data} has sha256 .* changed after signing"):
        verify(load_artifact(artifact_dir), trusted)


def test_editing_the_contract_after_signing_breaks_the_signature(artifact_dir: Path, keys: tuple[Path, Path]) -> None:
    _signed(artifact_dir, keys)
    manifest = artifact_dir / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('labels = "y"', 'labels = "x"'))
    with pytest.raises(ArtifactRejected, match="the manifest was changed after signing"):
        verify(load_artifact(artifact_dir), [load_public_key(keys[1])])


def test_init_again_keeps_what_it_is_not_told(artifact_dir: Path) -> None:
    init_manifest(artifact_dir, "anomaly", "1.0.0", ("CPUExecutionProvider",),
                  {"rpi": {"accuracy_top1": 0.8, "latency_p99_ms": 5.0}}, EVAL)
    again = init_manifest(artifact_dir, version="1.1.0", budgets={"rpi": {"latency_p99_ms": 0.0},
                                                                  "jetson": {"memory_mib": 64.0}},
                          eval={"top_k": 2})
    assert (again.name, again.version, again.providers) == ("anomaly", "1.1.0", ("CPUExecutionProvider",))
    assert again.budgets == {"rpi": {"accuracy_top1": 0.8}, "jetson": {"memory_mib": 64.0}}
    assert again.eval is not None and again.eval.top_k == 2 and again.eval.labels == "y"
    assert again.eval.reference == "eval/reference.npz"


@pytest.mark.parametrize(("change", "message"), [
    ({"data": "../outside.npz"}, "must be a path inside the artifact directory"),
    ({"data": "eval/missing.npz"}, "does not exist"),
    ({"output": "nope"}, "output 'nope' is not an output of the model"),
    ({"inputs": {"x": "x"}}, "must map every model input"),
    ({"labels": None}, "needs 'labels'"),
    ({"task": "detection"}, "task 'detection' is not one of"),
    ({"task": "regression", "output": "label"}, "needs 'tolerance'"),
    ({"dims": {"seq": 128}}, "'seq' is not a named dimension"),
    ({"colour": "blue"}, "unknown key 'colour'"),
])
def test_a_bad_contract_is_refused_saying_what_to_fix(artifact_dir: Path, change: dict, message: str) -> None:
    contract = {k: v for k, v in {**EVAL, **change}.items() if v is not None}
    if "labels" in change and change["labels"] is None:
        init_manifest(artifact_dir, "anomaly", "1.0.0", eval=EVAL)
    with pytest.raises(ArtifactRejected, match=message):
        init_manifest(artifact_dir, "anomaly", "1.0.0", eval=contract if "labels" not in change else change)
    if "labels" not in change:
        assert not (artifact_dir / "manifest.toml").exists()  # nothing half-written


def test_the_cli_writes_a_contract_and_budgets(artifact_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["artifact", "init", str(artifact_dir), "--name", "anomaly", "--version", "1.0.0",
                     "--eval-data", "eval/data.npz", "--input-key", "x", "--labels", "y", "--output", "probabilities",
                     "--task", "classification", "--top-k", "2", "--reference", "eval/reference.npz",
                     "--budget", "rpi.accuracy_top1=0.85", "--budget", "rpi.latency_p99_ms=20"])
    assert code == 0, capsys.readouterr().err
    raw = tomllib.loads((artifact_dir / "manifest.toml").read_text())
    assert raw["eval"]["inputs"] == {"features": "x"} and raw["eval"]["top_k"] == 2
    assert raw["budgets"] == {"rpi": {"accuracy_top1": 0.85, "latency_p99_ms": 20.0}}
    assert cli.main(["artifact", "init", str(artifact_dir), "--budget", "rpi.latency_p99_ms="]) == 0
    raw = tomllib.loads((artifact_dir / "manifest.toml").read_text())
    assert raw["budgets"] == {"rpi": {"accuracy_top1": 0.85}} and raw["eval"]["labels"] == "y"


@pytest.mark.parametrize("args", [["--budget", "accuracy_top1=0.9"], ["--budget", "rpi.nonsense=1"],
                                  ["--eval-data", "../x.npz", "--task", "classification"]])
def test_the_cli_names_bad_input_and_exits_2(artifact_dir: Path, args: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["artifact", "init", str(artifact_dir), "--name", "a", "--version", "1", *args])
    assert code == 2
    assert "hil: error:" in capsys.readouterr().err


def test_judging_outputs_follows_the_task(artifact_dir: Path) -> None:
    init_manifest(artifact_dir, "anomaly", "1.0.0", eval={**EVAL, "top_k": 2})
    artifact = load_artifact(artifact_dir)
    assert artifact.manifest.eval is not None
    data = load_eval_data(artifact_dir, artifact.manifest.eval)
    assert data.reference is not None and data.labels is not None
    # The device's outputs stand-in: the host's own (judging is what is tested here, not the device).
    run = cast(EvalRun, SimpleNamespace(outputs={"probabilities": data.reference["probabilities"]}))
    evaluation = Evaluation(run, data)
    judged = accuracy_checks(evaluation, BudgetSpec(accuracy_top1=0.99))  # labels are 10% noisy
    by_name = {m.name: m for m in judged.checks}
    assert by_name["accuracy_top1"].verdict.value == "FAIL" and 0.8 < by_name["accuracy_top1"].value < 0.95
    assert by_name["max_abs_error"].value == 0.0 and by_name["max_abs_error"].verdict.value == "PASS"
    assert judged.metrics["accuracy_top2"] == 1.0  # two classes: the label is always in the top 2
    assert top_k_accuracy(np.array([[0.1, 0.7, 0.2]]), np.array([2]), 2) == 1.0
    assert top_k_accuracy(np.array([[0.1, 0.7, 0.2]]), np.array([0]), 2) == 0.0


def test_latency_inputs_are_eval_rows_unless_a_dimension_is_set(artifact_dir: Path) -> None:
    init_manifest(artifact_dir, "anomaly", "1.0.0", eval=EVAL)
    artifact = load_artifact(artifact_dir)
    assert latency_inputs(artifact) == {"inputs_npz": artifact_dir / "eval/data.npz",
                                        "input_keys": {"features": "x"}}
    assert latency_inputs(artifact, {"n": 8}) == {"dims": {"n": 8}}
    init_manifest(artifact_dir, eval={"dims": {"n": 4}})
    assert latency_inputs(load_artifact(artifact_dir)) == {"dims": {"n": 4}}


def test_an_artifact_without_a_contract_still_signs_and_verifies(artifact_dir: Path, keys: tuple[Path, Path]) -> None:
    init_manifest(artifact_dir, "anomaly", "1.0.0")
    sign(artifact_dir, load_private_key(keys[0]))
    artifact = load_artifact(artifact_dir)
    assert artifact.manifest.eval is None and verify(artifact, [load_public_key(keys[1])])
    with pytest.raises(ConfigError, match="no \\[eval\\] table"):
        cli.cmd_eval(type("A", (), {"dir": str(artifact_dir), "name": "x", "json": False})(), None)  # type: ignore[arg-type]
