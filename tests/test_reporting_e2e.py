"""Reports end to end: a small suite on the emulated test lab with one deliberately failing budget.

Two real runs of suites/test_latency.py on one device: a good run (the demo model and its budgets),
then the same model re-released with a p99 budget no CPU can meet. Checked: the Allure results
(status, category, labels, attached plot), summary.json, the exit codes, the gate against the good
run, the HTML report in headless chromium; and a run whose only problem is the lab exits 75.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil import cli
from hil.artifacts import init_manifest, load_artifact, load_private_key, sign
from hil.lab import EmulatedLab
from hil.report import browser
from hil.report.categories import INFRASTRUCTURE, LATENCY
from hil.report.html import build_report
from hil.report.summary import EXIT_INFRASTRUCTURE
from tests.conftest import TEST_LAB_TOML, ghost_device_toml, needs_root

pytestmark = needs_root

ROOT = Path(__file__).resolve().parents[1]
DEMO_KEY = ROOT / "fixtures" / "keys" / "demo-ed25519.pem"
GOOD = ROOT / "fixtures" / "models" / "digits-mlp"
DEVICE = "emu-a"  # tagged jetson in the test lab
IMPOSSIBLE_P99_MS = 0.0001  # 100 ns: no inference gets there


@dataclass(frozen=True)
class Run:
    reports: Path
    returncode: int
    output: str

    @property
    def summary(self) -> dict:
        return json.loads((self.reports / "summary.json").read_text())

    @property
    def results(self) -> Path:
        return self.reports / "allure-results"

    def allure_results(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in self.results.glob("*-result.json")]


def _devices_toml(directory: Path, extra: str = "") -> Path:
    path = directory / "devices.toml"
    path.write_text(TEST_LAB_TOML + f'\n[deploy]\ntrusted_keys = ["{ROOT / "fixtures/keys/demo-ed25519.pub"}"]\n'
                    + extra)
    return path


def _tight_release(directory: Path) -> Path:
    """digits-mlp again, as 1.0.1, with an impossible p99 budget for jetson devices."""
    shutil.copytree(GOOD, directory)
    manifest = load_artifact(GOOD).manifest
    budgets = {tag: dict(limits) for tag, limits in manifest.budgets.items()}
    budgets.setdefault("jetson", {})["latency_p99_ms"] = IMPOSSIBLE_P99_MS
    init_manifest(directory, manifest.name, "1.0.1", manifest.providers, budgets)
    sign(directory, load_private_key(DEMO_KEY))
    return directory


def _run_suite(devices: Path, reports: Path, artifact: Path, *extra: str, timeout: float = 300) -> Run:
    args = [sys.executable, "-m", "pytest", "suites/test_latency.py", "-k", "percentiles", "-p", "no:cacheprovider",
            "-p", "no:randomly", f"--hil-devices={devices}", f"--hil-device={DEVICE}", f"--hil-artifact={artifact}",
            f"--alluredir={reports / 'allure-results'}", f"--hil-report-dir={reports}",
            f"--junitxml={reports / 'junit.xml'}", *extra]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTEST_ADDOPTS": ""})
    return Run(reports, proc.returncode, proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def runs(lab: EmulatedLab, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    work = tmp_path_factory.mktemp("reporting")
    devices = _devices_toml(work)
    good = _run_suite(devices, work / "good", GOOD)
    assert good.returncode == 0, good.output
    bad = _run_suite(devices, work / "bad", _tight_release(work / "digits-mlp-tight"))
    return good, bad


def test_a_failed_budget_fails_the_run_with_its_category(runs: tuple[Run, Run]) -> None:
    _, bad = runs
    assert bad.returncode == 1, bad.output
    assert "exit code 1: product_failure" in bad.output
    summary = bad.summary
    assert summary["complete"] and summary["exit"] == {"code": 1, "meaning": "product_failure"}
    assert summary["counts"]["failed"] == 1 and summary["counts"]["infrastructure"] == 0
    (test,) = [t for t in summary["tests"] if t["outcome"] == "failed"]
    assert test["device"] == DEVICE and test["model"] == "digits-mlp" and test["model_version"] == "1.0.1"
    assert test["category"] == LATENCY
    assert "budget exceeded: latency_p99_ms" in test["message"]
    (check,) = [c for c in summary["checks"] if c["check"] == "latency_p99_ms"]
    assert check["verdict"] == "FAIL" and check["limit"] == IMPOSSIBLE_P99_MS and check["better"] == "lower"
    assert check["lower_bound"] > IMPOSSIBLE_P99_MS and check["samples"] >= 300
    assert len(check["raw"]["values"]) >= check["samples"] and check["raw"]["quantile"] == 99.0
    device = summary["devices"][DEVICE]
    assert device["emulated"] is True and check["fingerprint"] == device["fingerprint"]
    assert summary["models"]["digits-mlp"]["version"] == "1.0.1"


def test_allure_results_carry_status_labels_category_and_plots(runs: tuple[Run, Run]) -> None:
    _, bad = runs
    (result,) = [r for r in bad.allure_results() if r["status"] != "passed"]
    assert result["status"] == "failed"  # a budget is a product failure, not a broken test
    labels = {(label["name"], label["value"]) for label in result["labels"]}
    assert {("parentSuite", DEVICE), ("suite", "latency"), ("subSuite", "digits-mlp"), ("severity", "critical"),
            ("tag", "jetson"), ("tag", "emulated")} <= labels
    assert any(link["name"] == "artifact digits-mlp 1.0.1" for link in result["links"])
    attachments = {a["name"]: a for a in result["attachments"]}
    assert {"budgets", "latency histogram", "latency CDF", "latencies (ms, run order)",
            f"device logs ({DEVICE})"} <= set(attachments)
    logs = (bad.results / attachments[f"device logs ({DEVICE})"]["source"]).read_text()
    assert "load average" in logs  # uptime, then df and the system log's tail
    png = bad.results / attachments["latency histogram"]["source"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    categories = json.loads((bad.results / "categories.json").read_text())
    latency = next(c for c in categories if c["name"] == LATENCY)
    assert re.search(latency["messageRegex"], result["statusDetails"]["message"])
    environment = (bad.results / "environment.properties").read_text()
    assert f"device\\ {DEVICE}=emulated" in environment and "model\\ digits-mlp=1.0.1 sha256" in environment


def test_junit_names_device_and_model(runs: tuple[Run, Run]) -> None:
    _, bad = runs
    junit = (bad.reports / "junit.xml").read_text()
    assert f'name="hil.device" value="{DEVICE}"' in junit and 'name="hil.artifact" value="digits-mlp"' in junit


def test_gate_flags_the_failed_budget_against_the_good_run(runs: tuple[Run, Run], tmp_path: Path) -> None:
    good, bad = runs
    baseline = tmp_path / "baseline.json"
    assert cli.main(["gate", "--baseline", str(baseline), "--current", str(good.reports / "summary.json"),
                     "--update"]) == 0
    report = tmp_path / "gate.json"
    code = cli.main(["gate", "--baseline", str(baseline), "--current", str(bad.reports / "summary.json"),
                      "--json", str(report)])
    assert code == 1
    doc = json.loads(report.read_text())
    text = json.dumps(doc)
    assert "regressed" in text and "latency_p99_ms" in text


def test_html_report_shows_devices_category_and_plot(runs: tuple[Run, Run], tmp_path: Path) -> None:
    _, bad = runs
    html = build_report(bad.results, tmp_path / "allure-report", timeout=180)
    suites = browser.render_dom(html, "suites")
    assert DEVICE in re.findall(r'class="node__name">([^<]*)<', suites)
    uid, failed = next((u, r) for u, r in browser.results_by_uid(html).items() if r.get("status") == "failed")
    page = browser.render_dom(html, browser.tree_route(html, "categories", uid))
    assert LATENCY in page and f"Categories: {LATENCY}" in re.sub(r"<[^>]+>", "", page)
    plot = next(a for a in failed["testStage"]["attachments"] if a["name"] == "latency histogram")
    dom = browser.render_dom(html, f"testresult/{uid}?attachment={plot['uid']}")
    assert re.search(r'<img\b[^>]*\bsrc="(data:image/png|blob:)', dom), "the plot is not shown"


def test_a_run_that_only_the_lab_failed_exits_75(lab: EmulatedLab, tmp_path: Path) -> None:
    """A device that does not answer: infrastructure, reported distinctly, so CI retries rather than blocks."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    devices = _devices_toml(tmp_path, ghost_device_toml(lab, known_hosts))
    reports = tmp_path / "reports"
    args = [sys.executable, "-m", "pytest", "suites/test_smoke.py", "-p", "no:cacheprovider", "--hil-device=ghost",
            f"--hil-devices={devices}", f"--hil-report-dir={reports}", f"--alluredir={reports / 'allure-results'}"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTEST_ADDOPTS": ""})
    assert proc.returncode == EXIT_INFRASTRUCTURE, proc.stdout + proc.stderr
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["exit"] == {"code": EXIT_INFRASTRUCTURE, "meaning": "infrastructure"}
    assert summary["counts"]["infrastructure"] == 1 and summary["counts"]["failed"] == 0
    (broken,) = [t for t in summary["tests"] if t["outcome"] == "infrastructure"]
    assert broken["category"] == INFRASTRUCTURE and broken["device"] == "ghost"
    results = [json.loads(p.read_text()) for p in (reports / "allure-results").glob("*-result.json")]
    assert "broken" in {r["status"] for r in results} and "failed" not in {r["status"] for r in results}


def test_xdist_workers_merge_into_one_summary_and_result_set(lab: EmulatedLab, tmp_path: Path) -> None:
    devices = _devices_toml(tmp_path)
    reports = tmp_path / "reports"
    args = [sys.executable, "-m", "pytest", "suites/test_smoke.py", "-n", "2", "-p", "no:cacheprovider",
            f"--hil-devices={devices}", f"--hil-report-dir={reports}", f"--alluredir={reports / 'allure-results'}"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTEST_ADDOPTS": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((reports / "summary.json").read_text())
    nodeids = [t["nodeid"] for t in summary["tests"]]
    assert len(nodeids) == len(set(nodeids)) == summary["counts"]["passed"] > 0
    assert {t["device"] for t in summary["tests"]} == {"emu-a", "emu-b"}
    assert set(summary["devices"]) == {"emu-a", "emu-b"}
    results = [json.loads(p.read_text()) for p in (reports / "allure-results").glob("*-result.json")]
    assert len(results) == len(nodeids)
    threads = {label["value"] for r in results for label in r["labels"] if label["name"] == "thread"}
    assert len({t.split("-")[0] for t in threads}) == 2, f"not both workers wrote results: {threads}"
    assert (reports / "allure-results" / "categories.json").is_file()
