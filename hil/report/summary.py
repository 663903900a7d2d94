"""reports/summary.json: what a run measured and decided, for machines (docs/summary-json.md).

Built in the pytest process that sees every test's reports (the pytest-xdist controller when run
with -n), only from the reports' user properties, which xdist carries over from its workers. The
file is rewritten atomically after every finished test, so a run that is killed leaves a valid
summary of what finished, marked incomplete.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import platform
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from hil import checks
from hil.exit_codes import Exit
from hil.report.files import write_bytes_atomic

SCHEMA = "hil.summary/1"

# Exit codes a CI can rely on: hil.exit_codes, the one table (README "Exit codes").
EXIT_PASSED = Exit.OK
EXIT_PRODUCT_FAILURE = Exit.FAILED
EXIT_INFRASTRUCTURE = Exit.INFRASTRUCTURE
# pytest's "no tests" code, also when tests were collected but the selection left none on a device:
# nothing was validated, which must not pass a release gate.
EXIT_NO_DEVICES = Exit.NO_DEVICES

# The facts that change what a device measures: two runs are comparable only when they agree.
FINGERPRINT_FACTS = ("arch", "cpu_count", "cpu_quota", "memory_limit_bytes", "memory_total_bytes", "kernel", "os",
                     "python", "numpy", "onnxruntime", "providers")

# Which way is better, for a metric the registry does not know (a user's own name): a guess from its words.
_HIGHER_IS_BETTER = ("accuracy", "throughput", "top1", "cosine")


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def better_direction(check: dict[str, Any]) -> str:
    if check.get("comparator") == ">=":
        return "higher"
    if check.get("comparator") == "<=":
        return "lower"
    known = checks.get(check["check"])
    if known is not None:
        return known.better
    return "higher" if any(word in check["check"] for word in _HIGHER_IS_BETTER) else "lower"


def fingerprint(environment: dict[str, Any]) -> str:
    blob = json.dumps(environment, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def environment_of(facts: dict[str, str], emulated: bool) -> dict[str, Any]:
    env: dict[str, Any] = {key: facts[key] for key in FINGERPRINT_FACTS if key in facts}
    env["emulated"] = emulated
    return env


@dataclass
class _Test:
    """What the reports of one test said so far."""

    nodeid: str
    props: dict[str, Any] = field(default_factory=dict)
    multi: dict[str, list[Any]] = field(default_factory=dict)  # properties a test records more than once
    outcome: str = "passed"
    start: float | None = None
    stop: float | None = None
    duration: float = 0.0
    skip_reason: str | None = None


_REPEATED = ("hil.check", "hil.dataset")


def _outcome(test: _Test) -> str:
    if test.outcome == "failed":
        if "hil.infrastructure" in test.props:
            return "infrastructure"
        if test.props.get("hil.verdict") == "INCONCLUSIVE":
            return "inconclusive"
        return "failed"
    return test.outcome


class SummaryWriter:
    """Collects test reports into summary.json; call add(report) for every report, finish() at the end."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self.started_at = now_iso()
        self.tests: dict[str, _Test] = {}
        self.done: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self._check_texts: list[str] = []  # each check as JSON, encoded once: raw samples make them big
        self.devices: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, str]] = {}
        self.datasets: dict[str, dict[str, str]] = {}
        self.faults: list[dict[str, Any]] = []
        self.exit: dict[str, Any] | None = None
        self.finished_at: str | None = None
        self.host = {"hostname": socket.gethostname(), "user": getpass.getuser(), "hil": _package_version("hil"),
                     "python": platform.python_version(), "pytest": _package_version("pytest"),
                     "onnxruntime": _package_version("onnxruntime")}
        self.active = False  # written once a test has used a device; hil's own unit tests leave no summary

    # -- collecting ------------------------------------------------------------------------------

    def add(self, report: Any) -> None:
        """One pytest TestReport (setup, call or teardown); a test is recorded after its teardown."""
        test = self.tests.setdefault(report.nodeid, _Test(report.nodeid))
        for name, value in report.user_properties:
            if name in _REPEATED:
                seen = test.multi.setdefault(name, [])
                if value not in seen:
                    seen.append(value)
            else:
                test.props[name] = value
        if report.when == "setup":
            test.start = getattr(report, "start", None)
        test.stop = getattr(report, "stop", None)
        test.duration += report.duration
        if report.failed:
            test.outcome = "failed"
        elif report.skipped and test.outcome == "passed":
            test.outcome = "skipped"
            longrepr = report.longrepr
            test.skip_reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        if report.when == "teardown":
            self._record(self.tests.pop(report.nodeid))
            self.write()

    def _record(self, test: _Test) -> None:
        p = test.props
        device = p.get("hil.device")
        if device is not None:
            self.active = True
        emulated = str(p.get("hil.facts.emulated", p.get("hil.emulated", ""))).lower() == "true"
        if device is not None and "hil.facts.arch" in p and device not in self.devices:
            facts = {k.removeprefix("hil.facts."): str(v) for k, v in p.items() if k.startswith("hil.facts.")}
            env = environment_of(facts, emulated)
            self.devices[device] = {"emulated": emulated, "fingerprint": fingerprint(env), "environment": env,
                                    "facts": facts}
        model = p.get("hil.artifact")
        if model is not None:
            self.models[str(model)] = {"version": str(p.get("hil.artifact.version", "")),
                                       "sha256": str(p.get("hil.artifact.sha256", ""))}
        for dataset in test.multi.get("hil.dataset", []):
            entry = json.loads(dataset)
            self.datasets[entry.pop("name")] = entry
        for name, value in p.items():
            if name.startswith("hil.fault."):
                self.faults.append({"nodeid": test.nodeid, "device": device, **json.loads(value)})
        outcome = _outcome(test)
        self.done.append({
            "nodeid": test.nodeid, "device": device, "model": model,
            "model_version": p.get("hil.artifact.version"), "model_sha256": p.get("hil.artifact.sha256"),
            "outcome": outcome,
            "category": p.get("hil.category") if outcome in ("failed", "infrastructure", "inconclusive") else None,
            "message": p.get("hil.message") if outcome != "passed" and outcome != "skipped" else test.skip_reason,
            "duration_s": round(test.duration, 3), "start": _iso(test.start), "stop": _iso(test.stop),
        })
        for raw_check in test.multi.get("hil.check", []):
            check = self._check(test, json.loads(raw_check), emulated)
            self.checks.append(check)
            self._check_texts.append(json.dumps(check))

    def _check(self, test: _Test, measured: dict[str, Any], emulated: bool) -> dict[str, Any]:
        p = test.props
        device = p.get("hil.device")
        seed = p.get("hil.seed")
        check = {
            "nodeid": test.nodeid, "device": device, "model": p.get("hil.artifact"),
            "model_version": p.get("hil.artifact.version"), "model_sha256": p.get("hil.artifact.sha256"),
            "emulated": emulated, "fingerprint": self.devices.get(str(device), {}).get("fingerprint"),
            "seed": int(seed) if seed is not None else None,
            "check": measured["name"], "value": measured["value"], "unit": measured.get("unit", ""),
            "limit": measured.get("limit"), "comparator": measured.get("comparator"),
            "verdict": measured.get("verdict"), "confidence": measured.get("confidence"),
            "lower_bound": measured.get("lower_bound"), "upper_bound": measured.get("upper_bound"),
            "samples": measured.get("samples"), "raw": self._raw(measured.get("raw")),
        }
        check["better"] = better_direction(check)
        return check

    def _raw(self, raw: dict[str, Any] | None) -> dict[str, Any] | None:
        """Inline the raw samples a test wrote next to the summary (user properties stay small)."""
        if raw is None:
            return None
        path = self.path.parent / raw["file"]
        try:
            lines = path.read_text().split()
            values = [float(v) for v in lines[1:]]  # first line: the column's name
        except (OSError, ValueError):
            return {"kind": raw.get("kind"), "quantile": raw.get("quantile"), "file": raw["file"], "values": None}
        return {"kind": raw.get("kind"), "quantile": raw.get("quantile"), "file": raw["file"], "values": values}

    # -- results ---------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {"passed": 0, "failed": 0, "infrastructure": 0, "inconclusive": 0, "skipped": 0}
        for test in self.done:
            out[test["outcome"]] += 1
        return out

    def exit_code(self, pytest_code: int) -> tuple[int, str]:
        """The run's exit code: pytest's, except that a run whose only problems are the lab's says 75."""
        counts = self.counts()
        if pytest_code not in (0, 1):
            return pytest_code, {2: "interrupted", 3: "internal_error", 4: "usage_error",
                                 5: "no_tests"}.get(pytest_code, "error")
        if counts["failed"]:
            return EXIT_PRODUCT_FAILURE, "product_failure"
        if counts["inconclusive"]:
            return EXIT_PRODUCT_FAILURE, "inconclusive"
        if counts["infrastructure"]:
            return EXIT_INFRASTRUCTURE, "infrastructure"
        return pytest_code, "passed" if pytest_code == 0 else "failed"

    def finish(self, pytest_code: int, *, no_devices: bool = False) -> int:
        """Record the end; `no_devices`: the run had device tests but its selection left none to run."""
        for test in list(self.tests.values()):  # reports without a teardown (interrupted): keep what is known
            self._record(test)
        self.tests.clear()
        code, meaning = (EXIT_NO_DEVICES, "no_devices") if no_devices else self.exit_code(pytest_code)
        self.exit = {"code": code, "meaning": meaning}
        self.finished_at = now_iso()
        self.write()
        return code

    def document(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "run_id": self.run_id, "started_at": self.started_at,
            "finished_at": self.finished_at, "complete": self.finished_at is not None, "host": self.host,
            "exit": self.exit, "counts": self.counts(), "devices": self.devices, "models": self.models,
            "datasets": self.datasets, "faults": self.faults, "tests": self.done, "checks": self.checks,
        }

    def write(self) -> None:
        """The whole document, rewritten after every test; the checks (last) are spliced in already encoded,
        which keeps a rewrite to milliseconds when they hold tens of thousands of samples."""
        if not self.active:
            return
        head = self.document()
        del head["checks"]
        text = json.dumps(head, indent=1).removesuffix("\n}")
        checks = "[\n  " + ",\n  ".join(self._check_texts) + "\n ]" if self._check_texts else "[]"
        write_bytes_atomic(self.path, f'{text},\n "checks": {checks}\n}}\n'.encode())
