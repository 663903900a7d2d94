"""summary.json (hil.report.summary) and the failure categories, without devices."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hil.report.categories import (
    ACCURACY,
    DEPLOY_REJECTED,
    INCONCLUSIVE,
    INFRASTRUCTURE,
    LATENCY,
    MEMORY,
    RUNTIME_INCOMPATIBLE,
    categorize,
    write_categories,
)
from hil.report.summary import EXIT_INFRASTRUCTURE, SCHEMA, SummaryWriter, fingerprint

FACTS = {"hil.facts.arch": "aarch64", "hil.facts.cpu_count": "4", "hil.facts.onnxruntime": "1.20.1",
         "hil.facts.emulated": "False", "hil.facts.kernel": "5.15", "hil.facts.python": "3.11.2"}


@dataclass
class FakeReport:
    """The attributes of pytest's TestReport that the writer reads."""

    nodeid: str
    when: str
    outcome: str = "passed"
    user_properties: list[tuple[str, Any]] = field(default_factory=list)
    duration: float = 0.1
    longrepr: Any = None
    start: float = 1_700_000_000.0
    stop: float = 1_700_000_000.1

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"

    @property
    def skipped(self) -> bool:
        return self.outcome == "skipped"


def _test(writer: SummaryWriter, nodeid: str, props: dict[str, Any], call: str = "passed",
          checks: tuple[dict[str, Any], ...] = ()) -> None:
    properties = [*props.items(), *(("hil.check", json.dumps(c)) for c in checks)]
    for when, outcome in (("setup", "passed"), ("call", call), ("teardown", "passed")):
        writer.add(FakeReport(nodeid, when, outcome, list(properties)))


def _device(name: str = "orin-01", **extra: Any) -> dict[str, Any]:
    return {"hil.device": name, "hil.artifact": "resnet", "hil.artifact.version": "2.0",
            "hil.artifact.sha256": "ab" * 32, **FACTS, **extra}


CHECK = {"name": "latency_p99_ms", "value": 4.2, "unit": "ms", "limit": 5.0, "comparator": "<=", "verdict": "PASS",
         "confidence": 0.99, "lower_bound": 4.0, "upper_bound": 4.5, "samples": 700, "raw": None}


def test_a_run_without_devices_writes_nothing(tmp_path: Path) -> None:
    writer = SummaryWriter(tmp_path / "summary.json", "run-1")
    _test(writer, "tests/test_x.py::test_plain", {})
    assert writer.finish(0) == 0
    assert not (tmp_path / "summary.json").exists()


def test_checks_tests_and_devices_are_recorded(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "lat.csv"
    raw.parent.mkdir()
    raw.write_text("latency_ms\n4.0\n4.1\n4.3\n")
    writer = SummaryWriter(tmp_path / "summary.json", "run-1")
    check = {**CHECK, "raw": {"file": "raw/lat.csv", "kind": "latency_ms", "quantile": 99.0}}
    _test(writer, "suites/test_latency.py::test_p[orin-01]", _device(**{"hil.seed": 7}), checks=(check,))
    assert writer.finish(0) == 0
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc == writer.document()  # the checks are spliced in pre-encoded: the file must still be the document
    assert doc["schema"] == SCHEMA and doc["complete"] and doc["exit"] == {"code": 0, "meaning": "passed"}
    (recorded,) = doc["checks"]
    assert recorded["raw"]["values"] == [4.0, 4.1, 4.3] and recorded["better"] == "lower" and recorded["seed"] == 7
    device = doc["devices"]["orin-01"]
    assert device["emulated"] is False and recorded["fingerprint"] == device["fingerprint"]
    assert doc["models"] == {"resnet": {"version": "2.0", "sha256": "ab" * 32}}
    assert doc["tests"][0]["outcome"] == "passed" and doc["tests"][0]["model_version"] == "2.0"


def test_fingerprint_changes_with_what_changes_results() -> None:
    env = {"arch": "aarch64", "onnxruntime": "1.20.1", "emulated": False}
    assert fingerprint(env) == fingerprint(dict(reversed(list(env.items()))))
    assert fingerprint(env) != fingerprint({**env, "onnxruntime": "1.21.0"})
    assert fingerprint(env) != fingerprint({**env, "emulated": True})


@pytest.mark.parametrize(("outcomes", "pytest_code", "expected"), [
    (["passed"], 0, (0, "passed")),
    (["failed"], 1, (1, "product_failure")),
    (["infrastructure"], 1, (EXIT_INFRASTRUCTURE, "infrastructure")),
    (["infrastructure", "failed"], 1, (1, "product_failure")),  # a real failure is never hidden by a retry code
    (["inconclusive", "infrastructure"], 1, (1, "inconclusive")),
    (["passed"], 2, (2, "interrupted")),
])
def test_exit_codes(tmp_path: Path, outcomes: list[str], pytest_code: int, expected: tuple[int, str]) -> None:
    writer = SummaryWriter(tmp_path / "summary.json", "run-1")
    for i, outcome in enumerate(outcomes):
        props = _device()
        if outcome == "infrastructure":
            props["hil.infrastructure"] = "device 'orin-01' did not answer"
        if outcome == "inconclusive":
            props["hil.verdict"] = "INCONCLUSIVE"
        _test(writer, f"t.py::test_{i}", props, call="passed" if outcome == "passed" else "failed")
    assert writer.finish(pytest_code) == expected[0]
    assert json.loads((tmp_path / "summary.json").read_text())["exit"] == {"code": expected[0],
                                                                           "meaning": expected[1]}


def test_an_unfinished_run_is_a_valid_incomplete_summary(tmp_path: Path) -> None:
    writer = SummaryWriter(tmp_path / "summary.json", "run-1")
    _test(writer, "t.py::test_done", _device())
    writer.add(FakeReport("t.py::test_running", "setup", "passed", list(_device().items())))
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["complete"] is False and doc["finished_at"] is None and doc["exit"] is None
    assert [t["nodeid"] for t in doc["tests"]] == ["t.py::test_done"]


WRITER_LOOP = textwrap.dedent("""
    import json
    import sys
    from pathlib import Path
    from hil.report.files import write_bytes_atomic

    path = Path(sys.argv[1])
    doc = {"schema": "hil.summary/1", "checks": [{"raw": {"values": [i * 0.001 for i in range(200_000)]}}]}
    n = 0
    while True:
        n += 1
        doc["n"] = n
        write_bytes_atomic(path, json.dumps(doc).encode())
        if n == 1:
            print("ready", flush=True)  # one file exists: from now on it must always parse
""")


def test_a_writer_killed_mid_write_leaves_a_valid_file(tmp_path: Path) -> None:
    """SIGKILL at arbitrary moments of a loop of large atomic writes: the file always parses."""
    path = tmp_path / "summary.json"
    seen = set()
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55):
        proc = subprocess.Popen([sys.executable, "-c", WRITER_LOOP, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        doc = json.loads(path.read_text())  # raises on a torn file
        assert doc["schema"] == "hil.summary/1" and len(doc["checks"][0]["raw"]["values"]) == 200_000
        seen.add(doc["n"])
    assert len(seen) > 1, "the loop never got to rewrite the file: the test proved nothing"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "summary.json"]
    assert all(name.startswith(".summary.json.") for name in leftovers)  # only a killed write's temp file


@pytest.mark.parametrize(("status", "message", "category"), [
    ("broken", "hil.errors.ConnectError: device 'orin-01' (root@10.0.0.5:22): no answer within 10 s", INFRASTRUCTURE),
    ("broken", "hil.errors.DeviceBusy: device 'x' is leased by ci@runner-2", INFRASTRUCTURE),
    ("broken", "hil.runner.errors.RunnerCrashed: runner on 'x' died", INFRASTRUCTURE),
    ("failed", "hil.errors.ArtifactRejected: /a/manifest.toml: signature does not match", DEPLOY_REJECTED),
    ("failed", "hil.runner.errors.ProviderMissing: TensorrtExecutionProvider not available", RUNTIME_INCOMPATIBLE),
    ("failed", "hil.budgets.BudgetExceeded: budget exceeded: latency_p99_ms <= 2.0: measured 3.1 ms: FAIL",
     LATENCY),
    ("failed", "hil.budgets.BudgetExceeded: budget exceeded: cold_start_ms <= 500.0: measured 900 ms: FAIL", LATENCY),
    ("failed", "hil.budgets.BudgetExceeded: budget exceeded: memory_mib <= 64.0: measured 80 MiB: FAIL", MEMORY),
    ("failed", "hil.runner.errors.OutOfMemory: killed by the kernel", MEMORY),
    ("failed", "hil.budgets.BudgetExceeded: budget exceeded: accuracy_top1 >= 0.98: measured 0.9: FAIL", ACCURACY),
    ("failed", "hil.budgets.BudgetExceeded: budget exceeded: accuracy_relative_to_fp32 >= 0.99: FAIL", ACCURACY),
    ("broken", "hil.budgets.InconclusiveMeasurement: inconclusive: latency_p99_ms <= 2.0\nn=120", INCONCLUSIVE),
    ("failed", "AssertionError: assert 1 == 2", None),
    ("broken", "KeyError: 'x'", None),
])
def test_categories(status: str, message: str, category: str | None) -> None:
    assert categorize(status, message) == category


def test_categories_json_is_what_allure_reads(tmp_path: Path) -> None:
    doc = json.loads(write_categories(tmp_path).read_text())
    assert doc[0]["name"] == INFRASTRUCTURE
    assert all(set(c) == {"name", "matchedStatuses", "messageRegex", "description"} for c in doc)
