"""The pytest plugin: devices.toml -> parametrized `device` fixture, markers, lab bring-up, quarantine.

Thin wiring only; the work is done by hil.pool (devices, leases, health, quarantine), hil.config,
hil.device and hil.lab.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import allure
import pytest

from hil.artifacts import Artifact, load_artifact
from hil.config import DEVICES_ENV, Inventory, load_inventory
from hil.deploy import DeployedModel, deploy_as_configured
from hil.device import Device
from hil.errors import CapabilityMissing, ConfigError, DeviceUnhealthy, InfraError, TransportError
from hil.faults.injector import FaultInjector
from hil.pool import AlreadyOut, DevicePool
from hil.report.allure_io import attach_json
from hil.report.run_info import RUN_INFO, RunInfo
from hil.xdist_scheduling import make_scheduler

log = logging.getLogger(__name__)

# summary.json, exit codes, Allure labels and categories; the testing surface's fixtures (hil.testing)
pytest_plugins = ["hil.report.pytest_plugin", "hil.testing_plugin"]

DEFAULT_DEVICES = "devices.toml"
_SESSION_KEY = pytest.StashKey[DevicePool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop devices")
    group.addoption("--hil-devices", metavar="PATH", default=None,
                    help=f"devices.toml describing the lab (default: ${DEVICES_ENV}, else ./{DEFAULT_DEVICES} "
                         "when present)")
    group.addoption("--hil-device", metavar="NAME", action="append", default=[],
                    help="run only on this device (repeatable); default: every device in devices.toml")
    group.addoption("--hil-no-lab", action="store_true", default=False,
                    help="do not bring the emulated lab up automatically")
    group.addoption("--hil-lease-timeout", metavar="SECONDS", type=float, default=300.0,
                    help="wait this long for a device another run holds, then report it busy (default: 300)")
    group.addoption("--hil-artifact", metavar="DIR", action="append", default=[],
                    help="artifact directory for `artifact`/`deployed_model` (repeatable); "
                         "default: [deploy] artifacts of devices.toml")
    group.addoption("--hil-allow-cpu-fallback", action="store_true", default=False,
                    help="deploy even when a model's execution providers are missing, running it on CPU")
    group.addoption("--hil-dim", metavar="NAME=SIZE", action="append", default=[],
                    help="time latency on random inputs with this named dimension (repeatable, e.g. seq=128) "
                         "instead of rows of the artifact's eval inputs")


def _inventory_path(config: pytest.Config) -> Path | None:
    """--hil-devices if given (it must then exist), else $HIL_DEVICES, else ./devices.toml when there is one."""
    given = config.getoption("--hil-devices") or os.environ.get(DEVICES_ENV)
    if given:
        return Path(given)
    default = Path(config.invocation_params.dir) / DEFAULT_DEVICES
    return default if default.is_file() else None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "emulated: tests on emulated devices (the embedded lab)")
    config.addinivalue_line("markers", "faults: suites that inject faults (network, clock, disk, sensor noise)")
    config.addinivalue_line("markers", "perf: performance suites (latency, cold start, memory, throughput)")
    config.addinivalue_line("markers", "accuracy: accuracy suites (outputs vs reference, top-1, int8 vs fp32)")
    config.addinivalue_line("markers", "hil_devices(count=2, tags=[]): the `devices` fixture gets that many devices "
                                       "having all the tags, leased together")
    path = _inventory_path(config)
    inventory = None
    if path is not None:
        try:
            inventory = load_inventory(path)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
        for tag in inventory.tags:
            config.addinivalue_line("markers", f"{tag}: devices tagged '{tag}' in {path.name}")
        for device in inventory.devices:
            config.addinivalue_line("markers", f"device_{device.name.replace('-', '_').replace('.', '_')}: "
                                               f"the device '{device.name}'")
    selected = config.getoption("--hil-device")
    if selected and inventory is None:
        raise pytest.UsageError(f"--hil-device given but there is no {DEFAULT_DEVICES}: pass --hil-devices PATH")
    if inventory is not None:
        try:
            selected = [d.name for d in inventory.select(list(dict.fromkeys(selected)))]
        except ConfigError as exc:
            raise pytest.UsageError(f"--hil-device: {exc}") from None
    session = DevicePool(inventory, selected, not config.getoption("--hil-no-lab"),
                         lease_timeout=config.getoption("--hil-lease-timeout"),
                         per_test_lease=hasattr(config, "workerinput"))
    worker_input = getattr(config, "workerinput", {})
    if "hil_run_id" in worker_input:
        session.run_id = worker_input["hil_run_id"]  # one run id for the whole run: leases, faults, summary
    config.stash[_SESSION_KEY] = session
    # The reporting plugin's view of the run (it does not import this module): session.devices is live.
    config.stash[RUN_INFO] = RunInfo(session.run_id, session.devices)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log) -> object:  # type: ignore[no-untyped-def]
    """pytest-xdist: one worker per device at a time (see hil.xdist_scheduling)."""
    return make_scheduler(config, log, hil_session(config).selected)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # type: ignore[no-untyped-def]
    """pytest-xdist: each worker gets the controller's run id."""
    node.workerinput["hil_run_id"] = hil_session(node.config).run_id


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None:
        session.close()


def hil_session(config: pytest.Config) -> DevicePool:
    """This process's pool of devices (hil.pool)."""
    return config.stash[_SESSION_KEY]


@contextlib.contextmanager
def _skip_when_out() -> Iterator[None]:
    """A device already out of the run: its first test reported why (an error); the others skip."""
    try:
        yield
    except AlreadyOut as exc:
        pytest.skip(str(exc))



def _artifact_dirs(config: pytest.Config) -> list[Path]:
    given = config.getoption("--hil-artifact")
    if given:
        return [Path(d) for d in given]
    inventory = hil_session(config).inventory
    return inventory.artifact_dirs() if inventory is not None else []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "artifact" in metafunc.fixturenames:
        dirs = _artifact_dirs(metafunc.config)
        metafunc.parametrize("artifact", [pytest.param(d, id=d.name) for d in dirs], indirect=True)
    if "device" not in metafunc.fixturenames:
        return
    session = hil_session(metafunc.config)
    if session.inventory is None:
        return  # the fixture itself explains what is missing
    params = []
    for name in session.selected:
        config = session.inventory.get(name)
        marks = [getattr(pytest.mark, tag) for tag in config.tags]
        params.append(pytest.param(name, id=name, marks=marks))
    metafunc.parametrize("device", params, indirect=True)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> Iterator[Device]:
    """The device this test runs on; the test runs once per selected device."""
    session = hil_session(request.config)
    if session.inventory is None or not hasattr(request, "param"):
        raise pytest.UsageError(f"the 'device' fixture needs a {DEFAULT_DEVICES}: pass --hil-devices PATH")
    name: str = request.param
    request.node.user_properties.append(("hil.device", name))
    if not session.per_test_lease:
        with _skip_when_out():
            acquired = session.acquire(name)  # leased for the whole run
        yield _report_facts(request, acquired)
        return
    # A pytest-xdist worker holds a device for a test, or a run of consecutive tests of that device
    # (released in pytest_runtest_teardown): workers can then share a device in turns, however xdist
    # spreads the tests. Everything, the first health check and the sweep of old faults included,
    # happens under the lease.
    with _skip_when_out():
        session.hold_for_test(name)
        acquired = session.acquire(name)
    yield _report_facts(request, acquired)


def _report_facts(request: pytest.FixtureRequest, dev: Device) -> Device:
    facts = dev.facts().summary()
    for key, value in facts.items():
        request.node.user_properties.append((f"hil.facts.{key}", value))
    attach_json(f"device facts ({dev.name})", facts)
    return dev


@pytest.fixture
def timing_warnings(request: pytest.FixtureRequest, device: Device) -> tuple[str, ...]:
    """What the health check found that makes timings on `device` unreliable (CPU governor, thermal headroom):
    with any, a latency FAIL is reported INCONCLUSIVE (hil.budgets.temper)."""
    warnings = hil_session(request.config).timing.get(device.name, ())
    for i, warning in enumerate(warnings):
        request.node.user_properties.append((f"hil.health.timing_warning.{i}", warning))
    return warnings


@pytest.fixture
def devices(request: pytest.FixtureRequest) -> Iterator[list[Device]]:
    """Several devices for one test, as `@pytest.mark.hil_devices(count=2, tags=["jetson"])` asks (default:
    2 devices, any tags), in name order, leased together (all or none, so runs cannot deadlock)."""
    session = hil_session(request.config)
    if session.inventory is None:
        raise pytest.UsageError(f"the 'devices' fixture needs a {DEFAULT_DEVICES}: pass --hil-devices PATH")
    marker = request.node.get_closest_marker("hil_devices")
    count = int(marker.kwargs.get("count", 2)) if marker else 2
    tags = set(marker.kwargs.get("tags", ())) if marker else set()
    fitting = [n for n in session.selected if tags <= set(session.inventory.get(n).tags)]
    usable = [n for n in fitting if n not in session.broken]
    if len(usable) < count:
        wanted = f"{count} devices" + (f" tagged {', '.join(sorted(tags))}" if tags else "")
        out = [n for n in fitting if n in session.broken]
        pytest.skip(f"needs {wanted}; this run has {len(usable)} usable ({', '.join(usable) or 'none'})"
                    + (f"; out of the run: {', '.join(out)}" if out else ""))
    chosen = usable[:count]
    request.node.user_properties.append(("hil.device", ",".join(chosen)))
    with _skip_when_out():
        leased, leases = session.acquire_together(chosen)
    try:
        yield leased
    finally:
        for lease in leases:
            lease.device.close_console()
            lease.release()


@pytest.fixture
def artifact(request: pytest.FixtureRequest) -> Artifact:
    """A signed model artifact, verified on the host; tests run once per artifact."""
    if not hasattr(request, "param"):
        raise pytest.UsageError("no artifacts: set [deploy] artifacts in devices.toml or pass --hil-artifact DIR")
    loaded = load_artifact(request.param)
    request.node.user_properties += [("hil.artifact", loaded.manifest.name),
                                     ("hil.artifact.version", loaded.manifest.version),
                                     ("hil.artifact.sha256", loaded.manifest.sha256)]
    return loaded


@pytest.fixture
def deployed_model(request: pytest.FixtureRequest, device: Device, artifact: Artifact) -> DeployedModel:
    """`artifact` deployed and active on `device` (a no-op when it already is)."""
    inventory = hil_session(request.config).inventory
    assert inventory is not None
    manifest = artifact.manifest
    with allure.step(f"deploy {manifest.name} {manifest.version} to {device.name}"):
        result = deploy_as_configured(inventory.deploy, device, artifact,
                                      allow_provider_fallback=request.config.getoption("--hil-allow-cpu-fallback"))
        attach_json("deploy", result.summary())
    if result.fallback:
        log.warning("%s", result.fallback)
    request.node.user_properties += [(f"hil.deploy.{k}", v) for k, v in result.summary().items()
                                     if k in ("model_path", "already_active", "transferred_bytes", "providers",
                                              "fallback", "seconds")]
    return DeployedModel(device, artifact, result)


@pytest.fixture(scope="session")
def hil_inventory(request: pytest.FixtureRequest) -> Inventory:
    """The parsed devices.toml of this run."""
    inventory = hil_session(request.config).inventory
    if inventory is None:
        raise pytest.UsageError(f"no {DEFAULT_DEVICES}: pass --hil-devices PATH")
    return inventory


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    """xdist: after a test's fixtures are torn down, give its device back unless the next test uses it too."""
    result = yield
    session = hil_session(item.config)
    held = session.worker_lease
    if held is not None:
        params = getattr(getattr(nextitem, "callspec", None), "params", {})
        if params.get("device") != held.device.name:
            session.release_worker_lease()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(CapabilityMissing):
        # The device cannot take it (no root, no iptables...): not attempted, so a skip with the reason.
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")
        return report
    if call.excinfo is not None and call.excinfo.errisinstance(DeviceUnhealthy):
        # Our own verdict on the device: the message says it all, a traceback through hil would not help.
        report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
    if call.excinfo is not None and call.excinfo.errisinstance(InfraError):
        # Not a verdict on the model: label it, and take the device out so its other tests do not stall.
        # On the item too: JUnit XML takes its properties from the teardown report, a copy of the item's.
        label = ("hil.infrastructure", str(call.excinfo.value))
        item.user_properties.append(label)
        report.user_properties.append(label)
        name = dict(item.user_properties).get("hil.device")
        # A broken connection takes the device out whatever the phase; other infrastructure errors
        # (a full disk for one big model, say) only when they strike the test itself.
        if name and (call.when == "call" or call.excinfo.errisinstance(TransportError)):
            hil_session(item.config).mark_broken(str(name), str(call.excinfo.value))
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    session = config.stash.get(_SESSION_KEY, None)
    if session is None:
        return
    if session.swept:
        terminalreporter.section("hil: faults an earlier run left applied, undone before testing")
        for name, entries in sorted(session.swept.items()):
            for entry in entries:
                terminalreporter.write_line(f"{name}: {entry}")
    if session.broken:
        terminalreporter.section("hil: devices out of this run (infrastructure, not product failures)")
        for name, reason in sorted(session.broken.items()):
            terminalreporter.write_line(f"{name}: {reason}")


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Iterator[FaultInjector]:
    """Inject faults on devices: `with faults.network_drop(device): ...`. Every fault is undone when its
    block ends, and at the latest when the test ends; each is recorded in the report."""
    injector = FaultInjector(hil_session(request.config).run_id)
    try:
        yield injector
    finally:
        injector.close()
        for i, event in enumerate(injector.events):
            request.node.user_properties.append((f"hil.fault.{i}", json.dumps(asdict(event), sort_keys=True)))
