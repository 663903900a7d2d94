"""Sensor-fault suite: top-1 accuracy on the device as the input's SNR falls, per device x fp32 model.

The eval inputs of the artifact's eval contract go through Gaussian noise (hil.faults.sensor) at each SNR
in SNR_DB and the device runs all of it in one eval run. The curve is recorded for the report
(hil.robustness.snr_db and hil.robustness.accuracy, JSON lists of equal length) and judged:
- at the highest SNR the accuracy is within HIGH_SNR_MAX_DROP of the clean accuracy (the
  noise path itself costs nothing);
- the curve does not rise as the SNR falls by more than MAX_RISE (noise can push a few borderline
  samples either way);
- at 20 dB SNR top-1 >= the manifest budget `accuracy_top1_at_20db_snr` for the device's tags,
  else DEFAULT_MIN_TOP1_AT_20DB_SNR.

Noise power is set from the signal power of the whole eval set (a sensor's fixed noise floor), and
every level uses the same seed, so the levels differ only in the noise's scale: a change between
two points of the curve is the SNR's doing, not another draw's. int8 models are not collected: the
curve of their fp32 parent says what the input noise does, and the accuracy suite judges int8 vs fp32.
A contract whose task is not classification skips, saying so (top-1 is what the curve measures).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hil.deploy import DeployedModel
from hil.faults.sensor import SensorNoise
from hil.runner import run_eval
from hil.testing import (
    BudgetSpec,
    Evaluation,
    Judge,
    Record,
    accuracy_vs_noise_png,
    attach_png,
    check_max,
    check_min,
    top1_accuracy,
)

pytestmark = [pytest.mark.faults, pytest.mark.hil_eval(without="parent")]
SNR_DB = (40.0, 30.0, 20.0, 10.0, 5.0, 0.0)  # highest first; 0 dB shows where the models break
SEED = 20261201  # one seed for every level (see the module docstring), recorded in the report
EVAL_BATCH = 64
HIGH_SNR_MAX_DROP = 0.02  # top-1 at the highest SNR vs clean: 2 points (7 of the 360 digits)
MAX_RISE = 0.01  # how far a lower SNR may beat a higher one: ~3 of 360 samples flipping the "right" way
BUDGET_KEY = "accuracy_top1_at_20db_snr"
BUDGET_SNR_DB = 20.0
# Without a manifest budget: the demo models keep ~0.98 at 20 dB on the host; 0.90 leaves room for
# another model or data set while still catching one that falls apart under mild noise.
DEFAULT_MIN_TOP1_AT_20DB_SNR = 0.90


def noise_at(snr_db: float) -> SensorNoise:
    return SensorNoise("gaussian", {"snr_db": snr_db}, seed=SEED)


@dataclass(frozen=True)
class Robustness:
    """Top-1 accuracy at each SNR (same order as SNR_DB) and without noise, from one device and model."""

    snr_db: tuple[float, ...]
    accuracy: tuple[float, ...]
    clean: float
    samples: int

    def at(self, snr_db: float) -> float:
        return self.accuracy[self.snr_db.index(snr_db)]

    @property
    def max_rise(self) -> float:
        """The most any point beats the worst point at a higher SNR (<= 0 for a non-increasing curve)."""
        return max((a - min(self.accuracy[:i]) for i, a in enumerate(self.accuracy) if i), default=0.0)

    def properties(self) -> Iterator[tuple[str, object]]:
        yield "hil.robustness.fault", "gaussian noise, power from the whole eval set, unclipped"
        yield "hil.robustness.seed", SEED
        yield "hil.robustness.noise", json.dumps([noise_at(s).to_dict() for s in self.snr_db])
        yield "hil.robustness.snr_db", json.dumps(list(self.snr_db))
        yield "hil.robustness.accuracy", json.dumps([round(a, 6) for a in self.accuracy])
        yield "hil.robustness.clean_accuracy", self.clean
        yield "hil.robustness.samples", self.samples


def noisy_eval_set(evaluation: Evaluation, directory: Path) -> Path:
    """The eval inputs at every SNR level, stacked level after level in one npz: one run on the device."""
    contract = evaluation.contract
    path = directory / f"{evaluation.run.context.model}-{evaluation.run.context.sha256[:12]}-snr.npz"
    if not path.is_file():  # the same for every device: built once
        with np.load(evaluation.data.inputs_path) as data:
            clean = {key: np.asarray(data[key]) for key in contract.inputs.values()}
        np.savez(path, **{key: np.concatenate([noise_at(s).apply(x) for s in SNR_DB]) if x.dtype.kind == "f"
                          else np.concatenate([x] * len(SNR_DB)) for key, x in clean.items()})
    return path


def measure_robustness(deployed: DeployedModel, evaluation: Evaluation, threads: int, directory: Path) -> Robustness:
    run = run_eval(deployed, noisy_eval_set(evaluation, directory), input_keys=evaluation.contract.inputs,
                   batch=EVAL_BATCH, threads=threads)
    labels = evaluation.data.labels
    assert labels is not None
    scores = np.asarray(run.outputs[evaluation.contract.output]).reshape(len(SNR_DB), len(labels), -1)
    accuracy = tuple(top1_accuracy(level, labels) for level in scores)
    return Robustness(SNR_DB, accuracy, top1_accuracy(evaluation.outputs, labels), len(labels))


@pytest.fixture(scope="session")
def _robustness_runs() -> dict[tuple[str, str], Robustness]:
    return {}


@pytest.fixture
def robustness(deployed_model: DeployedModel, evaluation: Evaluation, budgets: BudgetSpec, intra_op_threads: int,
               report_property: Record, tmp_path_factory: pytest.TempPathFactory,
               _robustness_runs: dict[tuple[str, str], Robustness]) -> Robustness:
    """The model's robustness curve on this device, measured once and shared by the tests here."""
    if evaluation.contract.task != "classification":
        pytest.skip(f"the robustness curve is of top-1 accuracy; task '{evaluation.contract.task}' has none")
    key = (deployed_model.device.name, deployed_model.artifact.manifest.sha256)
    if key not in _robustness_runs:
        directory = tmp_path_factory.getbasetemp() / "sensor-faults"
        directory.mkdir(exist_ok=True)
        _robustness_runs[key] = measure_robustness(deployed_model, evaluation, intra_op_threads, directory)
    measured = _robustness_runs[key]
    for name, value in measured.properties():
        report_property(name, value)
    report_property("hil.seed", SEED)
    floor = budgets.limits().get(BUDGET_KEY)
    title = (f"{deployed_model.artifact.manifest.name} on {deployed_model.device.name}: top-1 under Gaussian "
             f"sensor noise (seed {SEED})")
    attach_png("accuracy vs noise", accuracy_vs_noise_png(measured.snr_db, measured.accuracy, title=title,
                                                          level_label="SNR (dB)", floor=floor))
    return measured


def test_high_snr_accuracy_matches_clean(robustness: Robustness, judge: Judge) -> None:
    """Top-1 at the highest SNR (40 dB) is within 2 points of the clean top-1 on the same device."""
    high = max(robustness.snr_db)
    judge(check_max(f"accuracy_drop_at_{high:g}db_snr", robustness.clean - robustness.at(high), HIGH_SNR_MAX_DROP))


def test_accuracy_does_not_rise_as_snr_falls(robustness: Robustness, judge: Judge) -> None:
    """No point of the curve beats a point at a higher SNR by more than MAX_RISE (1 point)."""
    judge(check_max("accuracy_max_rise_as_snr_falls", robustness.max_rise, MAX_RISE))


def test_accuracy_at_20db_snr(robustness: Robustness, budgets: BudgetSpec, judge: Judge,
                              report_property: Record) -> None:
    """Top-1 at 20 dB SNR >= the manifest's accuracy_top1_at_20db_snr for the device's tags, else 0.90."""
    limit = budgets.limits().get(BUDGET_KEY)
    if limit is None:  # the manifest sets none for this device's tags: the suite's own floor
        limit = DEFAULT_MIN_TOP1_AT_20DB_SNR
        report_property(f"hil.budget.{BUDGET_KEY}", f"{limit:g} (suite default)")
    judge(check_min(BUDGET_KEY, robustness.at(BUDGET_SNR_DB), limit))
