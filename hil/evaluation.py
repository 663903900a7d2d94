"""Judging a model on its own evaluation contract: run the artifact's eval inputs on the device, then turn
the outputs into checks against its labels, its reference outputs and its budgets.

    evaluation = evaluate(deployed)               # one eval run on the device
    judged = accuracy_checks(evaluation, budgets) # Measurements (verdicts) and unjudged metrics

Used by `hil eval` and by the testing surface (hil.testing), so a user's own suite and the CLI judge a
model the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hil.artifacts import Artifact, load_artifact
from hil.budgets import BudgetSpec, Measurement, check_max, check_min, check_relative_accuracy
from hil.deploy import DeployedModel
from hil.errors import ArtifactRejected
from hil.eval_contract import EvalContract, EvalData, load_eval_data
from hil.runner import EvalRun, run_eval
from hil.stats import agreement, top1_accuracy

EVAL_BATCH = 64
# "close" agreement with the host's reference outputs (fp32 on another CPU: reordered float sums).
MAX_ABS_ERROR = 1e-4
MIN_COSINE = 0.9999  # for the worst sample, not the mean
MIN_TOP1_AGREEMENT = 1.0


class NoEvalContract(ArtifactRejected):
    """The artifact declares no [eval]: there is nothing to judge its accuracy on."""


def contract_of(artifact: Artifact) -> EvalContract:
    if artifact.manifest.eval is None:
        raise NoEvalContract(
            f"{artifact.label} has no [eval] table in its manifest: no eval data to judge it on. Add one with "
            f"`hil artifact init {artifact.directory} --eval-data FILE.npz --input-key INPUT=KEY --labels KEY "
            "--output NAME --task classification` and sign it again (see docs/writing-suites.md)")
    return artifact.manifest.eval


@dataclass(frozen=True)
class Evaluation:
    """One eval run of a model on a device, with the data it was judged on."""

    run: EvalRun
    data: EvalData

    @property
    def contract(self) -> EvalContract:
        return self.data.contract

    @property
    def outputs(self) -> np.ndarray:
        """The judged output (the contract's `output`), one row per eval sample."""
        return np.asarray(self.run.outputs[self.contract.output])


def evaluate(deployed: DeployedModel, *, batch: int = EVAL_BATCH, threads: int | None = None) -> Evaluation:
    """Run every row of the artifact's eval inputs through the deployed model on its device."""
    contract = contract_of(deployed.artifact)
    data = load_eval_data(deployed.artifact.directory, contract)
    run = run_eval(deployed, data.inputs_path, input_keys=contract.inputs, batch=batch, threads=threads)
    return Evaluation(run, data)


def parent_of(artifact: Artifact) -> Artifact:
    """The fp32 artifact an int8 one was made from, checked against the model sha256 its signature binds."""
    contract = contract_of(artifact)
    if contract.parent is None:
        raise ArtifactRejected(f"{artifact.label}: its [eval] names no parent")
    parent = load_artifact(contract.parent_dir(artifact.directory))
    if parent.manifest.sha256 != contract.parent_sha256:
        raise ArtifactRejected(f"{artifact.label}: its parent {parent.label} has model sha256 "
                               f"{parent.manifest.sha256}, the manifest binds {contract.parent_sha256}: "
                               "not the model it was made from")
    return parent


@dataclass(frozen=True)
class Judged:
    """Checks with verdicts, and values measured without a budget (recorded, compared run to run by the gate)."""

    checks: list[Measurement] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    samples: int = 0


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the k highest scores."""
    rows = scores.reshape(len(scores), -1)
    best = np.argpartition(-rows, min(k, rows.shape[1]) - 1, axis=1)[:, :k]
    return float(np.mean(np.any(best == labels.reshape(-1, 1), axis=1)))


def accuracy_checks(evaluation: Evaluation, budgets: BudgetSpec) -> Judged:
    """What the contract's task says about the device's outputs, against the budgets for the device."""
    contract, outputs = evaluation.contract, evaluation.outputs
    labels = evaluation.data.labels
    judged = Judged(samples=len(outputs))
    if contract.task == "classification":
        assert labels is not None
        accuracy = top1_accuracy(outputs, labels)
        if budgets.accuracy_top1 is not None:
            judged.checks.append(check_min("accuracy_top1", accuracy, budgets.accuracy_top1))
        else:
            judged.metrics["accuracy_top1"] = accuracy
        if contract.top_k > 1:
            judged.metrics[f"accuracy_top{contract.top_k}"] = top_k_accuracy(outputs, labels, contract.top_k)
    elif contract.task == "regression":
        assert labels is not None and contract.tolerance is not None
        error = float(np.mean(np.abs(outputs.reshape(len(outputs), -1) - labels.reshape(len(labels), -1))))
        judged.checks.append(check_max("mean_abs_error", error, contract.tolerance))
    judged.checks.extend(agreement_checks(evaluation))
    return judged


def agreement_checks(evaluation: Evaluation) -> list[Measurement]:
    """The device's outputs against the host's reference outputs of the same inputs (none without one)."""
    reference = evaluation.data.reference_output
    if reference is None:
        return []
    outputs = evaluation.outputs
    if evaluation.contract.agreement == "exact":
        error = float(np.max(np.abs(outputs.astype(np.float64) - reference.astype(np.float64)))) \
            if outputs.shape == reference.shape else float("inf")
        return [check_max("max_abs_error", error, 0.0)]
    match = agreement(outputs, reference)
    checks = [check_max("max_abs_error", match.max_abs_error, MAX_ABS_ERROR),
              check_min("min_cosine_similarity", match.min_cosine_similarity, MIN_COSINE)]
    if evaluation.contract.task == "classification":
        checks.append(check_min("top1_agreement", match.top1_agreement, MIN_TOP1_AGREEMENT))
    return checks


def relative_accuracy_check(int8: Evaluation, fp32: Evaluation) -> Measurement:
    """int8 top-1 >= 99% of its fp32 parent's, both on the same device (MLPerf's rule)."""
    labels = int8.data.labels
    assert labels is not None
    return check_relative_accuracy(top1_accuracy(int8.outputs, labels), top1_accuracy(fp32.outputs, labels))


# -- representative latency inputs ------------------------------------------------------------------


def latency_inputs(artifact: Artifact, dims: Mapping[str, int] | None = None) -> dict[str, Any]:
    """run_latency's input arguments. Named dimension sizes, when set (`dims` here, then the contract's
    `dims`), ask for seeded random data of exactly that size; else rows of the artifact's eval inputs;
    else (no contract) random data with every named dimension 1."""
    contract = artifact.manifest.eval
    sizes = {**(contract.dims if contract else {}), **(dims or {})}
    if contract is not None and not sizes:
        return {"inputs_npz": artifact.directory / contract.data, "input_keys": contract.inputs}
    return {"dims": sizes}


def describe_inputs(artifact: Artifact, dims: Mapping[str, int] | None = None) -> str:
    chosen = latency_inputs(artifact, dims)
    if "inputs_npz" in chosen:
        return f"rows of {artifact.manifest.eval.data if artifact.manifest.eval else '?'}"
    sizes = ", ".join(f"{k}={v}" for k, v in sorted(chosen["dims"].items()))
    return f"random, named dimensions {sizes or 'all 1'}"
