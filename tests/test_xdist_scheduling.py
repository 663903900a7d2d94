"""One worker per device under pytest-xdist: the scope of each test is its device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hil.lab import EmulatedLab
from hil.xdist_scheduling import device_in
from tests.conftest import needs_root

DEVICES = ["pi-4", "pi-4-b", "orin"]


@pytest.mark.parametrize(("nodeid", "expected"), [
    ("suites/test_smoke.py::test_ssh[orin]", "orin"),
    ("suites/test_latency.py::test_cold_start[digits-mlp-pi-4-b]", "pi-4-b"),  # the longest name that fits
    ("suites/test_latency.py::test_cold_start[digits-mlp-pi-4]", "pi-4"),
    ("suites/test_latency.py::test_cold_start[pi-4-digits-mlp]@hil-device-pi-4", "pi-4"),
    ("tests/test_x.py::test_plain", None),
    ("tests/test_x.py::test_p[orinx]", None),
])
def test_device_in_node_id(nodeid: str, expected: str | None) -> None:
    assert device_in(nodeid, DEVICES) == expected


@needs_root
def test_n_workers_each_device_stays_on_one_worker(lab: EmulatedLab, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_smoke.py", "-n", "2", "-p", "no:cacheprovider",
         f"--hil-devices={lab.inventory.path}", f"--hil-report-dir={reports}",
         f"--alluredir={reports / 'allure-results'}"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTEST_ADDOPTS": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workers: dict[str, set[str]] = {}
    for path in (reports / "allure-results").glob("*-result.json"):
        result = json.loads(path.read_text())
        labels = {label["name"]: label["value"] for label in result["labels"]}
        workers.setdefault(labels["parentSuite"], set()).add(labels["thread"].split("-")[0])  # pid of the worker
    assert set(workers) == {"emu-a", "emu-b"}
    assert all(len(pids) == 1 for pids in workers.values()), f"a device's tests ran on several workers: {workers}"
