"""The reporting half of hil's pytest plugin: summary.json, exit codes, Allure labels and categories.

Loaded by hil.plugin. Works the same with and without pytest-xdist: workers label and categorize
their tests; the controller (or the only process) writes summary.json, categories.json and
environment.properties, and sets the exit code.

It does not import hil.plugin (the layer above it): hil.plugin hands it the run's id and devices as a
RunInfo in config.stash[RUN_INFO] (hil.report.run_info) when it configures the session.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from hil.errors import HilError, InfraError
from hil.report.allure_io import attach_text, collection_labels, write_environment
from hil.report.categories import categorize, write_categories
from hil.report.run_info import RUN_INFO
from hil.report.summary import EXIT_INFRASTRUCTURE, SummaryWriter

log = logging.getLogger(__name__)

_REPORT_DIR = pytest.StashKey[Path]()
# Tests on a device (`device` or `devices`) collected, and left after -m / -k / --deselect: (before, after).
_DEVICE_TESTS = pytest.StashKey[tuple[int, int]]()
_WORKER_OUTPUT_KEY = "hil_device_tests"
MESSAGE_LIMIT = 4000  # characters of a failure kept in summary.json
LOG_TIMEOUT = 10.0

DEVICE_LOGS = ("uptime; echo; df -h . 2>/dev/null; echo; "
               "(journalctl -n 100 --no-pager 2>/dev/null || dmesg 2>/dev/null | tail -n 100 "
               "|| tail -n 100 /var/log/syslog 2>/dev/null || tail -n 100 /var/log/messages 2>/dev/null) | tail -n 100")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil")
    group.addoption("--hil-report-dir", metavar="DIR", default="reports",
                    help="where summary.json and raw measurements go (default: reports)")


def report_dir(config: pytest.Config) -> Path:
    return config.stash[_REPORT_DIR]


@pytest.hookimpl(trylast=True)  # after hil.plugin has made the session (its run id: RUN_INFO)
def pytest_configure(config: pytest.Config) -> None:
    directory = Path(config.getoption("--hil-report-dir"))
    if not directory.is_absolute():
        directory = Path(config.invocation_params.dir) / directory
    config.stash[_REPORT_DIR] = directory
    if not hasattr(config, "workerinput"):
        writer = SummaryWriter(directory / "summary.json", config.stash[RUN_INFO].run_id)
        config.pluginmanager.register(SummaryHooks(config, writer), "hil-summary")


@pytest.fixture(scope="session")
def hil_report_dir(request: pytest.FixtureRequest) -> Path:
    """The run's report directory (--hil-report-dir): summary.json, raw/ measurements."""
    return report_dir(request.config)


def _on_device(item: pytest.Item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "device" in params or "devices" in getattr(item, "fixturenames", ())


@pytest.hookimpl(wrapper=True)  # around every other implementation: -m and -k deselect in between
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):  # type: ignore[no-untyped-def]
    before = sum(map(_on_device, items))
    result = yield
    config.stash[_DEVICE_TESTS] = (before, sum(map(_on_device, items)))
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "device" in params:  # other tests keep allure-pytest's own labels
            collection_labels(item, params["device"])
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and _DEVICE_TESTS in session.config.stash:  # xdist: tell the controller
        workeroutput[_WORKER_OUTPUT_KEY] = list(session.config.stash[_DEVICE_TESTS])


def no_device_selected(config: pytest.Config) -> int | None:
    """How many device tests there were, when the selection left none of them to run; else None."""
    before, after = config.stash.get(_DEVICE_TESTS, (0, 0))
    return before if before and not after else None


def _allure_status(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return "failed" if excinfo.errisinstance((AssertionError, pytest.fail.Exception)) else "broken"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    excinfo = call.excinfo
    if excinfo is None or report.skipped or "hil.message" in dict(item.user_properties):
        return report
    message = excinfo.exconly()
    labels = [("hil.message", message[:MESSAGE_LIMIT])]
    category = categorize(_allure_status(excinfo), message)
    if category is not None:
        labels.append(("hil.category", category))
    # On the item too: later reports (teardown) copy the item's properties.
    item.user_properties.extend(labels)
    report.user_properties.extend(labels)
    if call.when == "call" and not excinfo.errisinstance(InfraError):
        _attach_device_logs(item)
    return report


def _attach_device_logs(item: pytest.Item) -> None:
    """What the device said around a failure; best effort, never the cause of another error."""
    name = dict(item.user_properties).get("hil.device")
    device = item.config.stash[RUN_INFO].devices.get(str(name)) if name else None
    if device is None:
        return
    try:
        result = device.run(DEVICE_LOGS, timeout=LOG_TIMEOUT, cwd=device.workdir)
        attach_text(f"device logs ({device.name})", result.stdout + result.stderr)
    except HilError as exc:
        log.warning("%s: could not fetch device logs: %s", device.name, exc)


class SummaryHooks:
    """Registered in the process that sees every report: the xdist controller, or the only process."""

    def __init__(self, config: pytest.Config, writer: SummaryWriter) -> None:
        self.config = config
        self.writer = writer

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.writer.add(report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist: each worker collected the device tests; the selection left none only if it did so on all."""
        before, after = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY, (0, 0))
        seen = self.config.stash.get(_DEVICE_TESTS, (0, 0))
        self.config.stash[_DEVICE_TESTS] = (max(seen[0], before), max(seen[1], after))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        nothing = no_device_selected(self.config) is not None and not self.writer.active
        if nothing and int(exitstatus) in (0, 1, 5):
            # Device tests were collected, the selection (-m, -k, --deselect) ran none: nothing was validated.
            self.writer.active = True  # a summary all the same, so no earlier run's summary.json passes a gate
            session.exitstatus = self.writer.finish(int(exitstatus), no_devices=True)
            return
        if not self.writer.active:
            return  # no test used a device (hil's own unit tests): no summary, pytest's exit code
        session.exitstatus = self.writer.finish(int(exitstatus))
        results = getattr(self.config.option, "allure_report_dir", None)
        if results:
            write_categories(Path(results))
            write_environment(Path(results), self.writer.document())

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int) -> None:
        writer = self.writer
        if writer.exit is None:
            return
        counts = writer.counts()
        terminalreporter.section("hil: results")
        terminalreporter.write_line(f"summary: {writer.path}  "
                                    f"({', '.join(f'{v} {k}' for k, v in counts.items() if v)})")
        code, meaning = writer.exit["code"], writer.exit["meaning"]
        hint = " (only the lab failed: retry the run; no verdict on the model)" if code == EXIT_INFRASTRUCTURE else ""
        if meaning == "no_devices":
            count = no_device_selected(self.config)
            hint = (f" (the selection left none of the {count} tests on devices to run: nothing was validated; "
                    "check -m / -k / --hil-device)")
        terminalreporter.write_line(f"exit code {code}: {meaning}{hint}")
