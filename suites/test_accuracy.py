"""Accuracy suite: what the model computes on the device, on the labelled eval set of its info.json.

fp32 outputs must match the host's reference outputs; top-1 accuracy must meet the manifest's
accuracy_top1 for the device's tags; an int8 model must keep 99% of its fp32 parent's accuracy,
both measured on the same device. One eval run per device x model serves every test here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from hil.artifacts import load_artifact
from hil.budgets import BudgetSpec, check_max, check_min, check_relative_accuracy
from hil.config import Inventory
from hil.deploy import DeployedModel, deploy, trusted_keys
from hil.report.record import record_metric
from hil.runner import EvalRun
from hil.stats import agreement, top1_accuracy

if TYPE_CHECKING:  # suites/conftest.py: the fixtures' types
    from conftest import Evaluate, Judge, Record

pytestmark = pytest.mark.accuracy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"  # info.json's paths are relative to it
MAX_ABS_ERROR = 1e-4
MIN_COSINE = 0.9999  # for the worst sample, not the mean
MIN_TOP1_AGREEMENT = 1.0


def _scores(run: EvalRun, info: dict[str, Any]) -> np.ndarray:
    return np.asarray(run.outputs[info["scores_output"]])


def _labels(info: dict[str, Any]) -> np.ndarray:
    with np.load(FIXTURES / info["eval_data"]) as data:
        return np.asarray(data["labels"])


def _reference(info: dict[str, Any]) -> np.ndarray:
    with np.load(FIXTURES / info["reference"]) as data:
        return np.asarray(data[info["scores_output"]])


@pytest.mark.model_kind("fp32")
def test_fp32_outputs_match_the_host_reference(deployed_model: DeployedModel, model_info: dict[str, Any],
                                               device_eval: Evaluate, judge: Judge) -> None:
    """fp32 scores on the device vs the host's onnxruntime on the same inputs.

    Max abs error <= 1e-4, cosine similarity >= 0.9999 for every sample, and the same top-1 class
    for every sample. Not collected for int8 models: their integer kernels may round differently on
    another CPU; they are judged against their fp32 parent's accuracy instead.
    """
    run = device_eval(deployed_model, model_info)
    match = agreement(_scores(run, model_info), _reference(model_info))
    judge(check_max("max_abs_error", match.max_abs_error, MAX_ABS_ERROR),
          check_min("min_cosine_similarity", match.min_cosine_similarity, MIN_COSINE),
          check_min("top1_agreement", match.top1_agreement, MIN_TOP1_AGREEMENT))


def test_top1_accuracy(deployed_model: DeployedModel, model_info: dict[str, Any], budgets: BudgetSpec,
                       device_eval: Evaluate, judge: Judge, report_property: Record,
                       request: pytest.FixtureRequest) -> None:
    """Top-1 accuracy on the labelled eval set, computed from the device's outputs, >= accuracy_top1.

    Without an accuracy_top1 budget for the device's tags: recorded, and only checked to beat
    chance (the model computes something, not noise).
    """
    scores = _scores(device_eval(deployed_model, model_info), model_info)
    accuracy = top1_accuracy(scores, _labels(model_info))
    report_property("hil.accuracy.top1", accuracy)
    report_property("hil.accuracy.samples", len(scores))
    if budgets.accuracy_top1 is None:
        chance = 1.0 / scores.shape[1]
        assert accuracy > 2 * chance, f"top-1 {accuracy:.4f} is no better than chance ({chance:.3f})"
        record_metric(request.node, "accuracy_top1", accuracy, samples=len(scores))
        return
    judge(check_min("accuracy_top1", accuracy, budgets.accuracy_top1))


def _parent_info(artifact_dir: Path, info: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The fp32 model an int8 one was quantized from: info.json's `base`, else its name without -int8."""
    name = info.get("base") or str(info["name"]).removesuffix("-int8")
    directory = artifact_dir.parent / name
    if not (directory / "info.json").is_file():
        pytest.skip(f"fp32 parent '{name}' of {info['name']} not found at {directory}")
    parent: dict[str, Any] = json.loads((directory / "info.json").read_text())
    assert parent.get("kind") == "fp32", f"{directory}: the parent of {info['name']} is not an fp32 model"
    return directory, parent


def _deploy_parent(deployed: DeployedModel, directory: Path, inventory: Inventory,
                   config: pytest.Config) -> DeployedModel:
    """The parent deployed like the deployed_model fixture does it (a no-op when it is already active)."""
    artifact = load_artifact(directory)
    result = deploy(deployed.device, artifact, trusted_keys(inventory.deploy), keep=inventory.deploy.keep_versions,
                    margin_bytes=inventory.deploy.free_space_margin_bytes,
                    allow_provider_fallback=config.getoption("--hil-allow-cpu-fallback"))
    return DeployedModel(deployed.device, artifact, result)


@pytest.mark.model_kind("int8")
def test_int8_keeps_fp32_accuracy(deployed_model: DeployedModel, model_info: dict[str, Any], device_eval: Evaluate,
                                  hil_inventory: Inventory, judge: Judge, request: pytest.FixtureRequest,
                                  report_property: Record) -> None:
    """int8 top-1 >= 99% of its fp32 parent's, both measured on this device (MLPerf's rule).

    The top-1 agreement between int8 and fp32 predictions is recorded (hil.accuracy.int8_fp32_agreement),
    not asserted: a quantized model may fix a few of its parent's mistakes as well as make new ones.
    """
    directory, parent_info = _parent_info(deployed_model.artifact.directory, model_info)
    parent = _deploy_parent(deployed_model, directory, hil_inventory, request.config)
    int8_scores = _scores(device_eval(deployed_model, model_info), model_info)
    fp32_scores = _scores(device_eval(parent, parent_info), parent_info)
    labels = _labels(model_info)
    int8_accuracy, fp32_accuracy = top1_accuracy(int8_scores, labels), top1_accuracy(fp32_scores, labels)
    report_property("hil.accuracy.parent", f"{parent.artifact.manifest.name} {parent.artifact.manifest.version}")
    report_property("hil.accuracy.int8_fp32_agreement", agreement(int8_scores, fp32_scores).top1_agreement)
    report_property("hil.accuracy.top1_int8", int8_accuracy)
    report_property("hil.accuracy.top1_fp32", fp32_accuracy)
    judge(check_relative_accuracy(int8_accuracy, fp32_accuracy))
