"""Accuracy suite: what the model computes on the device, judged on its artifact's evaluation contract.

Outputs must match the host's reference outputs where the contract has them; the task's metric
(top-1, or mean absolute error for regression) must meet the device's budgets; an int8 model must
keep 99% of its fp32 parent's accuracy, both measured on the same device. One eval run per device x
model serves every test here. An artifact without an [eval] table is skipped, saying so.
"""

from __future__ import annotations

import numpy as np
import pytest

from hil.deploy import DeployedModel
from hil.testing import (
    BudgetSpec,
    DeployTo,
    Evaluate,
    Evaluation,
    Judge,
    Record,
    accuracy_checks,
    agreement_checks,
    parent_of,
    relative_accuracy_check,
    top1_accuracy,
)

pytestmark = pytest.mark.accuracy


@pytest.mark.hil_eval("reference")
def test_outputs_match_the_host_reference(evaluation: Evaluation, judge: Judge) -> None:
    """The device's outputs vs the host's onnxruntime on the same inputs (the contract's `reference`).

    "close": max abs error <= 1e-4, cosine similarity >= 0.9999 for every sample, and the same top-1
    class for every sample; "exact": bit for bit. Not collected for a contract without a reference (an
    int8 model's: its integer kernels may round differently on another CPU; its parent judges it).
    """
    judge(*agreement_checks(evaluation))


def test_task_metric_meets_its_budget(evaluation: Evaluation, budgets: BudgetSpec, judge: Judge,
                                      report_property: Record) -> None:
    """Top-1 accuracy (classification) >= accuracy_top1, or mean absolute error (regression) <= the
    contract's tolerance.

    Without an accuracy_top1 budget for the device's tags: recorded, and only checked to beat chance
    (the model computes something, not noise).
    """
    judged = accuracy_checks(evaluation, budgets)
    report_property("hil.accuracy.samples", judged.samples)
    for name, value in judged.metrics.items():
        judge.metric(name, value, samples=judged.samples)
    task = [m for m in judged.checks if m.name in ("accuracy_top1", "mean_abs_error")]
    if task:
        judge(*task)
    elif evaluation.contract.task == "classification":
        chance = 1.0 / evaluation.outputs.reshape(judged.samples, -1).shape[1]
        accuracy = judged.metrics["accuracy_top1"]
        assert accuracy > 2 * chance, f"top-1 {accuracy:.4f} is no better than chance ({chance:.3f})"
    else:  # "agreement": the reference test is its judge
        judge(*agreement_checks(evaluation))


@pytest.mark.hil_eval("parent")
def test_int8_keeps_fp32_accuracy(deployed_model: DeployedModel, evaluation: Evaluation, evaluate_once: Evaluate,
                                  deploy_to: DeployTo, judge: Judge, report_property: Record) -> None:
    """int8 top-1 >= 99% of its fp32 parent's (the contract's `parent`), both measured on this device
    (MLPerf's rule).

    The top-1 agreement between int8 and fp32 predictions is recorded (hil.accuracy.int8_fp32_agreement),
    not asserted: a quantized model may fix a few of its parent's mistakes as well as make new ones.
    """
    fp32 = evaluate_once(deploy_to(deployed_model.device, parent_of(deployed_model.artifact)))
    labels = evaluation.data.labels
    assert labels is not None
    report_property("hil.accuracy.parent", fp32.run.context.model)
    report_property("hil.accuracy.int8_fp32_agreement",
                    float(np.mean(evaluation.outputs.argmax(axis=1) == fp32.outputs.argmax(axis=1))))
    report_property("hil.accuracy.top1_int8", top1_accuracy(evaluation.outputs, labels))
    report_property("hil.accuracy.top1_fp32", top1_accuracy(fp32.outputs, labels))
    judge(relative_accuracy_check(evaluation, fp32))
