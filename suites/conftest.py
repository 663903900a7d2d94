"""Shared wiring of the perf and accuracy suites: budgets, verdict context, runs measured once, verdict reporting.

Every test here runs once per device x artifact (through `deployed_model`). A latency run and an
eval run are measured once per device x model and shared by the tests that read them, so the
latency, cold-start and memory verdicts of one model come from the same process on the device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import allure
import numpy as np
import pytest

from hil.artifacts import Artifact, init_manifest, load_artifact, load_private_key, sha256_file, sign
from hil.bench import threads_for
from hil.budgets import (
    PERCENTILE_KEYS,
    BudgetExceeded,
    BudgetSpec,
    Context,
    InconclusiveMeasurement,
    Measurement,
    Verdict,
    assert_budget,
    budgets_for_tags,
    check_cv,
    check_percentile,
    combine,
)
from hil.conditions import temper
from hil.deploy import DeployedModel
from hil.report.allure_io import attach_csv, attach_json, attach_png, attach_text, budget_table, samples_csv
from hil.report.plots import latency_cdf_png, latency_histogram_png, percentile_marks
from hil.report.record import RawSamples, record_check, write_raw
from hil.runner import EvalRun, LatencyRun, StopWhen, run_eval, run_latency
from hil.stats import DEFAULT_CONFIDENCE, AdaptiveStop, LatencySummary, summarize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# Modest on purpose: the whole of suites/ on the emulated lab stays well under a minute and a half.
WARMUP = 50
MIN_ITERATIONS = 300
MIN_DURATION_S = 1.0
# An adaptive run goes on past the minimums only while its verdict is undecided. Its last look is
# at MAX_ITERATIONS (a sub-millisecond model gets there in a few seconds); MAX_DURATION_S only
# bounds models that take milliseconds per inference, which may then end before the first look
# (about 670 samples for p99 at 99%) and say INCONCLUSIVE with how many more samples it needs.
MAX_ITERATIONS = 50_000
MAX_DURATION_S = 30.0
CONFIDENCE = DEFAULT_CONFIDENCE
EVAL_BATCH = 64


Record = Callable[[str, object], None]


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
    """onnxruntime intra-op threads for runs on this device (see threads_for)."""
    return threads_for(deployed_model.device)


# -- verdicts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judge:
    """Records measurements (report properties, summary.json, an Allure budget table) and turns their
    verdicts into test outcomes."""

    context: Context
    node: pytest.Item
    raw: dict[str, dict[str, Any]]  # check name -> where its raw samples are (see hil.report.record)
    timing_warnings: tuple[str, ...] = ()  # the device's health warnings: a timing FAIL is then INCONCLUSIVE

    def __call__(self, *measurements: Measurement) -> None:
        """Record every measurement, then raise for the first FAIL, else the first INCONCLUSIVE."""
        measurements = tuple(temper(m, self.timing_warnings) for m in measurements)
        for m in measurements:
            self.node.user_properties.append((f"hil.measurement.{m.name}", str(m)))
            self.node.user_properties.append((f"hil.verdict.{m.name}", m.verdict.value))
            record_check(self.node, m, self.raw.get(m.name))
        attach_text("budgets", budget_table(m.to_dict() for m in measurements))
        order = {Verdict.FAIL: 0, Verdict.INCONCLUSIVE: 1, Verdict.PASS: 2}
        for m in sorted(measurements, key=lambda m: order[m.verdict]):
            assert_budget(m, self.context)


@pytest.fixture
def raw_samples() -> dict[str, dict[str, Any]]:
    """Filled by fixtures that measure samples (latency): check name -> raw samples for summary.json."""
    return {}


@pytest.fixture
def judge(budget_context: Context, request: pytest.FixtureRequest, raw_samples: dict[str, dict[str, Any]],
          timing_warnings: tuple[str, ...]) -> Judge:
    return Judge(budget_context, request.node, raw_samples, timing_warnings)


def percentile_verdicts(latencies_ms: np.ndarray, limits: dict[float, float],
                        stop: AdaptiveStop | None) -> list[Measurement]:
    """One verdict per percentile budget, on the samples of the adaptive run's last look.

    The bounds are taken at the run's Bonferroni-corrected confidence (hil.stats.AdaptiveStop), so
    stopping as soon as the driving percentile is decided does not inflate the error rate; for the
    driving percentile this is exactly hil.budgets.check_adaptive.
    """
    looks = len(stop.looks) if stop is not None else 1
    last = stop.last_look(len(latencies_ms)) if stop is not None else None
    judged = latencies_ms[:last] if last is not None else latencies_ms  # before any look: all, INCONCLUSIVE
    cv = check_cv(judged)
    return [combine(check_percentile(judged, q, limit, CONFIDENCE, looks=looks, name=f"latency_p{q:g}_ms"),
                   cv, judged, looks) for q, limit in sorted(limits.items())]


# -- latency: one run per device x model ----------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """A latency run with its summary and percentile verdicts (empty without a percentile budget)."""

    run: LatencyRun
    summary: LatencySummary
    percentiles: tuple[Measurement, ...]
    threads: int
    adaptive: bool
    raw: RawSamples | None = None  # where the samples went in the report directory

    @property
    def cold_start_ms(self) -> float:
        """Session creation plus the first inference: what a freshly started service waits."""
        return self.run.session.create_ms + self.run.cold_start_ms

    def attach(self) -> None:
        """The run in the report: summary, raw samples, histogram and CDF with the budgets, telemetry."""
        run = self.run
        title = f"{run.context.model} {run.context.version} on {run.context.device}"
        marks = percentile_marks(self.percentiles)
        attach_json("latency summary", {**dict(self.properties()), "stop": str(run.stop)})
        attach_csv("latencies (ms, run order)", samples_csv("latency_ms", run.latencies_ms))
        attach_png("latency histogram", latency_histogram_png(run.latencies_ms, title=title, budgets=marks))
        attach_png("latency CDF", latency_cdf_png(run.latencies_ms, title=title, budgets=marks))
        attach_json("runner telemetry", {"telemetry": [asdict(t) for t in run.telemetry],
                                         "throttling": run.throttling, "cpu": asdict(run.cpu),
                                         "memory": asdict(run.memory)})

    def properties(self) -> Iterator[tuple[str, object]]:
        s, run = self.summary, self.run
        for key in ("count", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "cv"):
            yield f"hil.latency.{key}", getattr(s, key)
        yield "hil.latency.throughput_ips", s.throughput_ips
        yield "hil.latency.threads", self.threads
        yield "hil.latency.stop", f"{run.stop.reason}{' (adaptive)' if self.adaptive else ''}"
        yield "hil.latency.providers", ",".join(run.session.providers)
        yield "hil.cold_start_ms", self.cold_start_ms
        yield "hil.session_create_ms", run.session.create_ms
        yield "hil.first_inference_ms", run.cold_start_ms
        yield "hil.peak_rss_mib", run.memory.peak_rss_mib


def measure_latency(deployed: DeployedModel, spec: BudgetSpec) -> Latency:
    """Adaptive when a percentile budget exists (the highest percentile drives the stop), else a fixed run."""
    threads = threads_for(deployed.device)
    limits = spec.percentile_limits
    if not limits:
        run = run_latency(deployed, warmup=WARMUP, min_iterations=MIN_ITERATIONS, min_duration_s=MIN_DURATION_S,
                          threads=threads)
        return Latency(run, _summary(run), (), threads, adaptive=False)
    q = max(limits)  # the tail takes the most samples to decide: once it is, the others are too
    stop = AdaptiveStop(q, limits[q], CONFIDENCE, max_samples=MAX_ITERATIONS)  # the looks the device uses
    run = run_latency(deployed, warmup=WARMUP, min_iterations=MIN_ITERATIONS, min_duration_s=MIN_DURATION_S,
                      max_iterations=MAX_ITERATIONS, max_duration_s=MAX_DURATION_S, threads=threads,
                      stop_when=StopWhen(q, limits[q], CONFIDENCE))
    return Latency(run, _summary(run), tuple(percentile_verdicts(run.latencies_ms, limits, stop)), threads, True)


def _summary(run: LatencyRun) -> LatencySummary:
    return summarize(run.latencies_ms, run.batch, run.cpu.wall_s or None)


@pytest.fixture(scope="session")
def _latency_runs() -> dict[tuple[str, str, BudgetSpec], Latency]:
    return {}


@pytest.fixture
def latency(deployed_model: DeployedModel, budgets: BudgetSpec, report_property: Record,
            _latency_runs: dict[tuple[str, str, BudgetSpec], Latency], hil_report_dir: Path,
            raw_samples: dict[str, dict[str, Any]]) -> Latency:
    """The model's latency run on this device, measured once and shared by the latency suite's tests."""
    key = (deployed_model.device.name, deployed_model.artifact.manifest.sha256, budgets)
    if key not in _latency_runs:
        manifest = deployed_model.artifact.manifest
        with allure.step(f"latency run of {manifest.name} {manifest.version} on {deployed_model.device.name}"):
            run = measure_latency(deployed_model, budgets)
        # The samples go to the report directory once; the tests sharing the run point at that file.
        raw = write_raw(hil_report_dir, deployed_model.device.name, manifest.name, "latency_ms",
                        run.run.latencies_ms, key=f"{key[0]} {key[1]}")
        _latency_runs[key] = dataclasses.replace(run, raw=raw)
    measured = _latency_runs[key]
    for name, value in measured.properties():
        report_property(name, value)
    raw_samples.update({name: measured.raw.for_quantile(q) for q, name in PERCENTILE_KEYS.items()})
    return measured


# -- accuracy: model facts and one eval run per device x model -----------------------------------


@pytest.fixture
def model_info(deployed_model: DeployedModel) -> dict[str, Any]:
    """The artifact's info.json (eval key, scores output, fp32 parent); skips an artifact without one."""
    path = deployed_model.artifact.directory / "info.json"
    if not path.is_file():
        pytest.skip(f"{deployed_model.artifact.label} has no info.json: no labelled eval data to judge it on")
    info: dict[str, Any] = json.loads(path.read_text())
    if info.get("sha256") != deployed_model.artifact.manifest.sha256:
        # Reference outputs of another build would judge the wrong model.
        pytest.fail(f"{path} describes model sha256 {info.get('sha256')}, the artifact has "
                    f"{deployed_model.artifact.manifest.sha256}: rebuild the fixtures (fixtures/build.py)")
    return info


Evaluate = Callable[[DeployedModel, dict[str, Any]], EvalRun]


@pytest.fixture(scope="session")
def _eval_runs() -> dict[tuple[str, str], EvalRun]:
    return {}


@functools.cache
def _dataset_record(path: Path) -> str:
    """The eval set as summary.json's datasets list it: name, path and sha256 (hashed once per run)."""
    return json.dumps({"name": path.stem, "path": str(path.relative_to(FIXTURES.parent)),
                       "sha256": sha256_file(path)}, sort_keys=True)


@pytest.fixture
def device_eval(_eval_runs: dict[tuple[str, str], EvalRun], request: pytest.FixtureRequest) -> Evaluate:
    """run_eval over the model's labelled eval set, once per device x model (int8 tests reuse their parent's)."""

    def evaluate(deployed: DeployedModel, info: dict[str, Any]) -> EvalRun:
        key = (deployed.device.name, deployed.artifact.manifest.sha256)
        data = FIXTURES / info["eval_data"]  # info.json's paths are relative to fixtures/
        request.node.user_properties.append(("hil.dataset", _dataset_record(data)))
        if key not in _eval_runs:
            manifest = deployed.artifact.manifest
            with allure.step(f"eval run of {manifest.name} {manifest.version} on {deployed.device.name} ({data.name})"):
                _eval_runs[key] = run_eval(deployed, data, info["input"]["eval_key"], batch=EVAL_BATCH,
                                           threads=threads_for(deployed.device))
        return _eval_runs[key]

    return evaluate


# -- reporting: a verdict's own message, and INCONCLUSIVE as its own kind --------------------------

_INCONCLUSIVE = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if call.excinfo is None or not call.excinfo.errisinstance((BudgetExceeded, InconclusiveMeasurement)):
        return report
    # The message carries the measurement, bound, n and context: a traceback through the suite adds nothing.
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


# -- tests that apply to one kind of model only ----------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "model_kind(kind): collect only for artifacts whose info.json kind is "
                                       "`kind` (fp32, int8)")


def _model_kind(artifact_dir: Path) -> str | None:
    path = artifact_dir / "info.json"
    return json.loads(path.read_text()).get("kind") if path.is_file() else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test for int8 models is not collected for an fp32 one (deselected, not a skip that looks like
    missing work)."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("model_kind")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if marker is None or "artifact" not in params:
            keep.append(item)
            continue
        (keep if _model_kind(Path(params["artifact"])) == marker.args[0] else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# -- another release of a model (deploy, rollback, full-disk suites) --------------------------------

DEMO_KEY = Path(__file__).resolve().parents[1] / "fixtures" / "keys" / "demo-ed25519.pem"


def _another_release(artifact: Artifact, directory: Path, version: str) -> Artifact:
    """The same model as another release: new bytes (a metadata note), a new version, signed with the DEMO
    key (the default lab trusts it; a real lab's suites would take a release from its pipeline)."""
    import onnx

    shutil.copytree(artifact.directory, directory)
    model = onnx.load(str(directory / "model.onnx"))
    onnx.helper.set_model_props(model, {"hil.release": version})
    onnx.save(model, str(directory / "model.onnx"))
    manifest = artifact.manifest
    init_manifest(directory, manifest.name, version, manifest.providers, manifest.budgets)
    sign(directory, load_private_key(DEMO_KEY))
    return load_artifact(directory)


@pytest.fixture
def another_release() -> Callable[[Artifact, Path, str], Artifact]:
    """make(artifact, directory, version): another signed release of the same model."""
    return _another_release
