"""The fixtures and hooks of hil's testing surface (hil.testing), loaded by hil's pytest plugin.

Every fixture here runs once per device x artifact (through `deployed_model`). A latency run and an
eval run are measured once per device x model and shared by the tests that read them, so the
latency, cold-start and memory verdicts of one model come from the same process on the device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import allure
import pytest

from hil.artifacts import Artifact, load_artifact
from hil.bench import threads_for
from hil.budgets import PERCENTILE_KEYS, BudgetExceeded, BudgetSpec, Context, InconclusiveMeasurement, budgets_for_tags
from hil.config import Inventory
from hil.deploy import DeployedModel, deploy_as_configured, trusted_keys
from hil.device import Device
from hil.errors import HilError
from hil.eval_contract import EvalContract
from hil.evaluation import NoEvalContract, contract_of, evaluate
from hil.report.record import write_raw
from hil.testing import (
    DeployTo,
    Evaluate,
    Evaluation,
    Judge,
    Latency,
    LatencySettings,
    Record,
    Releases,
    measure_latency,
)


@pytest.fixture
def report_property(request: pytest.FixtureRequest) -> Record:
    """record_property without its xunit2 warning: (name, value) straight into the test's JUnit properties."""
    return lambda name, value: request.node.user_properties.append((name, value))


# -- budgets and context -------------------------------------------------------------------------


@pytest.fixture
def budgets(deployed_model: DeployedModel, report_property: Record) -> BudgetSpec:
    """The manifest's budgets for this device's tags (strictest per key when several tags set one)."""
    spec = budgets_for_tags(deployed_model.artifact.manifest.budgets, deployed_model.device.config.tags)
    for key, limit in spec.limits().items():
        report_property(f"hil.budget.{key}", f"{limit:g} (tag {spec.source(key)})")
    return spec


@pytest.fixture
def budget_context(deployed_model: DeployedModel, report_property: Record) -> Context:
    """What a verdict is about: device (labelled when emulated), model name/version/sha256, onnxruntime."""
    device, manifest = deployed_model.device, deployed_model.artifact.manifest
    context = Context(device.name, manifest.name, manifest.version, manifest.sha256,
                      device.facts().onnxruntime or "unknown", device.config.emulated)
    report_property("hil.emulated", str(context.emulated).lower())
    report_property("hil.onnxruntime", context.onnxruntime)
    return context


@pytest.fixture
def intra_op_threads(deployed_model: DeployedModel) -> int:
    """onnxruntime intra-op threads for runs on this device (see hil.bench.threads_for)."""
    return threads_for(deployed_model.device)


@pytest.fixture
def raw_samples() -> dict[str, dict[str, Any]]:
    """Filled by fixtures that measure samples (latency): check name -> raw samples for summary.json."""
    return {}


@pytest.fixture
def judge(budget_context: Context, request: pytest.FixtureRequest, raw_samples: dict[str, dict[str, Any]],
          timing_warnings: tuple[str, ...]) -> Judge:
    """judge(*measurements): record them (summary.json, Allure, JUnit), then FAIL / INCONCLUSIVE the test."""
    return Judge(budget_context, request.node, raw_samples, timing_warnings)


# -- latency: one run per device x model ----------------------------------------------------------


@pytest.fixture(scope="session")
def latency_settings() -> LatencySettings:
    """How long latency runs measure; override this fixture in your conftest.py to measure longer."""
    return LatencySettings()


@pytest.fixture(scope="session")
def _latency_runs() -> dict[tuple[str, str, BudgetSpec], Latency]:
    return {}


@pytest.fixture
def latency(deployed_model: DeployedModel, budgets: BudgetSpec, report_property: Record,
            _latency_runs: dict[tuple[str, str, BudgetSpec], Latency], hil_report_dir: Path,
            raw_samples: dict[str, dict[str, Any]], latency_settings: LatencySettings,
            request: pytest.FixtureRequest) -> Latency:
    """The model's latency run on this device, measured once and shared by the tests that read it."""
    key = (deployed_model.device.name, deployed_model.artifact.manifest.sha256, budgets)
    if key not in _latency_runs:
        manifest = deployed_model.artifact.manifest
        with allure.step(f"latency run of {manifest.name} {manifest.version} on {deployed_model.device.name}"):
            run = measure_latency(deployed_model, budgets, latency_settings, _dims(request.config) or None)
        # The samples go to the report directory once; the tests sharing the run point at that file.
        raw = write_raw(hil_report_dir, deployed_model.device.name, manifest.name, "latency_ms",
                        run.run.latencies_ms, key=f"{key[0]} {key[1]}")
        _latency_runs[key] = dataclasses.replace(run, raw=raw)
    measured = _latency_runs[key]
    for name, value in measured.properties():
        report_property(name, value)
    assert measured.raw is not None
    raw_samples.update({name: measured.raw.for_quantile(q) for q, name in PERCENTILE_KEYS.items()})
    return measured


def _dims(config: pytest.Config) -> dict[str, int]:
    from hil.eval_contract import parse_dims

    return parse_dims(config.getoption("--hil-dim"), "--hil-dim")


# -- accuracy: the artifact's eval contract, one eval run per device x model ------------------------


@pytest.fixture
def eval_contract(deployed_model: DeployedModel) -> EvalContract:
    """The artifact's [eval] contract; an artifact without one skips the test, saying why."""
    try:
        return contract_of(deployed_model.artifact)
    except NoEvalContract as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def _eval_runs() -> dict[tuple[str, str], Evaluation]:
    return {}


@functools.cache
def _dataset_record(model: str, relative: str, path: Path, sha256: str) -> str:
    """The eval set as summary.json's datasets list it: name (model/file), path and sha256."""
    return json.dumps({"name": f"{model}/{relative}", "path": str(path), "sha256": sha256}, sort_keys=True)


@pytest.fixture
def evaluate_once(_eval_runs: dict[tuple[str, str], Evaluation], request: pytest.FixtureRequest) -> Evaluate:
    """evaluate_once(deployed): the eval run of any deployed model (an int8 model's parent, say), once per
    device x model and shared."""

    def run(deployed: DeployedModel) -> Evaluation:
        contract = contract_of(deployed.artifact)
        key = (deployed.device.name, deployed.artifact.manifest.sha256)
        path = deployed.artifact.directory / contract.data
        record = _dataset_record(deployed.artifact.manifest.name, contract.data, path,
                                 contract.files.get(contract.data, ""))
        request.node.user_properties.append(("hil.dataset", record))
        if key not in _eval_runs:
            manifest = deployed.artifact.manifest
            with allure.step(f"eval run of {manifest.name} {manifest.version} on {deployed.device.name} "
                             f"({contract.data})"):
                _eval_runs[key] = evaluate(deployed, threads=threads_for(deployed.device))
        return _eval_runs[key]

    return run


@pytest.fixture
def evaluation(deployed_model: DeployedModel, eval_contract: EvalContract, evaluate_once: Evaluate,
               report_property: Record) -> Evaluation:
    """This model's eval run on this device (its artifact's eval contract), measured once and shared."""
    result = evaluate_once(deployed_model)
    report_property("hil.eval.samples", len(result.outputs))
    report_property("hil.eval.task", eval_contract.task)
    return result


# -- other releases ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def releases(hil_inventory: Inventory) -> Releases:
    """releases.make(artifact, directory, version): another release signed by this run's own key;
    deploy it with `deploy_to`, or with releases.trusted (the lab's trusted keys and this run's key)."""
    return Releases(trusted_keys(hil_inventory.deploy))


@pytest.fixture
def deploy_to(hil_inventory: Inventory, releases: Releases, request: pytest.FixtureRequest) -> DeployTo:
    """deploy_to(device, artifact, **deploy_options): deployed as `deployed_model` is (the lab's keep and
    free-space settings, --hil-allow-cpu-fallback), trusting the lab's keys and this run's releases."""

    def run(device: Device, artifact: Artifact, **options: Any) -> DeployedModel:
        options = {"allow_provider_fallback": request.config.getoption("--hil-allow-cpu-fallback"), **options}
        return DeployedModel(device, artifact, deploy_as_configured(hil_inventory.deploy, device, artifact,
                                                                    trusted=releases.trusted, **options))

    return run


# -- tests that apply to some eval contracts only ----------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil_eval(field, without=None): collect only for artifacts whose [eval] "
                                       "contract sets `field` (e.g. parent, reference), or (without=) does not; "
                                       "artifacts without a contract keep the test, which skips saying so")


def _contract_fields(artifact_dir: Path) -> set[str] | None:
    """The fields the artifact's contract sets; None when it has no contract (or cannot be read)."""
    try:
        contract = load_artifact(artifact_dir).manifest.eval
    except HilError:
        return None  # the artifact fixture will say what is wrong with it
    return None if contract is None else {k for k, v in vars(contract).items() if v is not None}


def _applies(marker: pytest.Mark, fields: set[str] | None) -> bool:
    if fields is None:
        return True
    wanted, unwanted = (marker.args[0] if marker.args else None), marker.kwargs.get("without")
    return (wanted is None or wanted in fields) and (unwanted is None or unwanted not in fields)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test for int8 models (`hil_eval("parent")`) is not collected for an fp32 one: deselected, not a
    skip that looks like missing work. An artifact without any contract keeps the test, which then skips
    saying the artifact has no [eval]."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("hil_eval")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if marker is None or "artifact" not in params:
            keep.append(item)
            continue
        (keep if _applies(marker, _contract_fields(Path(params["artifact"]))) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# -- reporting: a verdict's own message, and INCONCLUSIVE as its own kind --------------------------

_INCONCLUSIVE = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if call.excinfo is None or not call.excinfo.errisinstance((BudgetExceeded, InconclusiveMeasurement)):
        return report
    # The message carries the measurement, bound, n and context: a traceback through the test adds nothing.
    inconclusive = call.excinfo.errisinstance(InconclusiveMeasurement)
    kind = "INCONCLUSIVE (neither PASS nor FAIL: not a verdict on the model)" if inconclusive else "FAIL"
    report.longrepr = f"{kind}: {call.excinfo.value}"
    label = ("hil.verdict", "INCONCLUSIVE" if inconclusive else "FAIL")
    item.user_properties.append(label)
    report.user_properties.append(label)
    if inconclusive:
        item.config.stash.setdefault(_INCONCLUSIVE, []).append(f"{item.nodeid}: {call.excinfo.value}")
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    undecided = config.stash.get(_INCONCLUSIVE, [])
    if undecided:
        terminalreporter.section("hil: inconclusive measurements (neither PASS nor FAIL: measure longer)")
        for line in undecided:
            terminalreporter.write_line(line)
