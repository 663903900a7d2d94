"""A user's own project, outside this repository: its own devices.toml, signing key, model (not the demo's:
30 features in, an int64 label and [N, 2] probabilities out) and test file, which imports only hil.testing.

Two real runs on the test lab's emu-a. Checked: summary.json holds the checks of the user's tests, a
latency budget the user's short runs cannot decide is INCONCLUSIVE (its own outcome, not a failure of the
model), the accuracy budget is judged on the artifact's own eval contract, and `hil gate` compares the runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hil import cli
from hil.artifacts import generate_key_pair
from hil.lab import EmulatedLab
from tests.conftest import TEST_LAB_TOML, needs_root
from tests.user_model import build_artifact

pytestmark = needs_root

USER_TEST = '''
"""The user's own suite: only hil.testing's surface."""
from hil.testing import (BudgetSpec, DeployTo, Evaluation, Judge, Latency, Releases, accuracy_checks,
                         check_percentile)


def test_anomaly_accuracy(evaluation: Evaluation, budgets: BudgetSpec, judge: Judge) -> None:
    judged = accuracy_checks(evaluation, budgets)
    for name, value in judged.metrics.items():
        judge.metric(name, value, samples=judged.samples)
    judge(*judged.checks)


def test_anomaly_p99(latency: Latency, judge: Judge) -> None:
    judge(*latency.percentiles)


def test_anomaly_p99_of_a_short_burst(latency: Latency, budgets: BudgetSpec, judge: Judge) -> None:
    # 100 samples can never bound a p99 at 99% confidence: the data says INCONCLUSIVE, not PASS or FAIL.
    burst = latency.run.latencies_ms[:100]
    judge(check_percentile(burst, 99, budgets.latency_p99_ms, name="burst_latency_p99_ms"))


def test_anomaly_next_release_deploys(deployed_model, releases: Releases, deploy_to: DeployTo, tmp_path) -> None:
    # This lab trusts only the user's key: the release is signed with the run's own key, not the demo's.
    newer = releases.make(deployed_model.artifact, tmp_path / "newer", "2.0.1")
    try:
        assert deploy_to(deployed_model.device, newer).result.sha256 == newer.manifest.sha256
    finally:
        deploy_to(deployed_model.device, deployed_model.artifact)
'''

USER_CONFTEST = '''
import pytest
from hil.testing import LatencySettings


@pytest.fixture(scope="session")
def latency_settings() -> LatencySettings:
    # Shorter than hil's default: this project's model is tiny.
    return LatencySettings(warmup=5, min_iterations=100, min_duration_s=0.1, max_iterations=5000, max_duration_s=5)
'''


def _project(root: Path) -> Path:
    artifact = build_artifact(root / "models" / "anomaly")
    generate_key_pair(root / "release.pem", root / "release.pub")
    assert cli.main(["artifact", "init", str(artifact), "--name", "anomaly", "--version", "2.0.0",
                     "--eval-data", "eval/data.npz", "--input-key", "x", "--labels", "y", "--output", "probabilities",
                     "--task", "classification", "--reference", "eval/reference.npz",
                     "--budget", "jetson.accuracy_top1=0.8", "--budget", "jetson.latency_p99_ms=50"]) == 0
    assert cli.main(["artifact", "sign", str(artifact), "--key", str(root / "release.pem")]) == 0
    (root / "devices.toml").write_text(TEST_LAB_TOML + textwrap.dedent(f'''
        [deploy]
        trusted_keys = ["{root / 'release.pub'}"]
        artifacts = ["models/*"]
        '''))
    (root / "tests").mkdir()
    (root / "tests" / "test_anomaly.py").write_text(USER_TEST)
    (root / "tests" / "conftest.py").write_text(USER_CONFTEST)
    return root


def _run(project: Path, reports: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-p", "no:cacheprovider", "--hil-devices=devices.toml",
         "--hil-device=emu-a", f"--hil-report-dir={reports}", f"--junitxml={reports / 'junit.xml'}"],
        cwd=project, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTEST_ADDOPTS": ""})


@pytest.fixture(scope="module")
def runs(lab: EmulatedLab, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    project = _project(tmp_path_factory.mktemp("user-project"))
    first, second = project / "reports-1", project / "reports-2"
    for reports in (first, second):
        proc = _run(project, reports)
        # INCONCLUSIVE is no PASS: the run exits 1 ("inconclusive"), not 0 and not 75.
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "exit code 1: inconclusive" in proc.stdout + proc.stderr, proc.stdout
    return first, second


def test_the_users_checks_reach_summary_json(runs: tuple[Path, Path]) -> None:
    summary = json.loads((runs[0] / "summary.json").read_text())
    checks = {c["check"]: c for c in summary["checks"]}
    accuracy = checks["accuracy_top1"]
    assert accuracy["verdict"] == "PASS" and accuracy["limit"] == 0.8 and 0.8 < accuracy["value"] < 0.97
    assert checks["max_abs_error"]["verdict"] == "PASS"  # against the artifact's own reference outputs
    assert {t["model"] for t in summary["tests"]} == {"anomaly"}
    assert any(name.startswith("anomaly/") for name in summary["datasets"])


def test_an_undecidable_budget_is_inconclusive_not_failed(runs: tuple[Path, Path]) -> None:
    summary = json.loads((runs[0] / "summary.json").read_text())
    checks = {c["check"]: c for c in summary["checks"]}
    assert checks["latency_p99_ms"]["verdict"] == "PASS" and checks["latency_p99_ms"]["samples"] >= 459
    burst = checks["burst_latency_p99_ms"]
    assert burst["verdict"] == "INCONCLUSIVE" and burst["samples"] == 100 and burst["upper_bound"] is None
    (test,) = [t for t in summary["tests"] if "test_anomaly_p99_of_a_short_burst" in t["nodeid"]]
    assert test["outcome"] != "passed" and test["category"] == "Inconclusive measurement", test
    assert summary["exit"] == {"code": 1, "meaning": "inconclusive"}


def test_a_release_made_by_the_run_deploys_on_a_lab_that_trusts_only_its_own_key(runs: tuple[Path, Path]) -> None:
    summary = json.loads((runs[0] / "summary.json").read_text())
    (test,) = [t for t in summary["tests"] if "test_anomaly_next_release_deploys" in t["nodeid"]]
    assert test["outcome"] == "passed", test


def test_hil_gate_compares_the_two_runs(runs: tuple[Path, Path], tmp_path: Path) -> None:
    baseline, report = tmp_path / "baseline.json", tmp_path / "gate.json"
    assert cli.main(["gate", "--baseline", str(baseline), "--current", str(runs[0] / "summary.json"), "--update"]) == 0
    code = cli.main(["gate", "--baseline", str(baseline), "--current", str(runs[1] / "summary.json"),
                     "--json", str(report)])
    doc = json.loads(report.read_text())
    compared = {c["check"]: c for c in doc["comparisons"]}
    # The same model, data and device: what does not depend on timing is exactly what it was.
    for check in ("accuracy_top1", "max_abs_error", "min_cosine_similarity", "top1_agreement"):
        assert compared[check]["status"] == "unchanged", compared[check]
        assert compared[check]["baseline"] == compared[check]["current"]
    # Timings are compared too (each run's own numbers on a shared machine: their verdict may go either way).
    assert {"latency_p99_ms", "burst_latency_p99_ms"} <= set(compared)
    assert code == (0 if doc["passed"] else 1), doc
