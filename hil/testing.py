"""hil's testing surface: everything the shipped suites use, for your own tests of your own model.

With hil installed, pytest loads its fixtures (hil.testing_plugin): `deployed_model` (one per device x
artifact), `budgets` (this device's budgets from the manifest), `judge` (records checks into summary.json,
the Allure budget table and JUnit; INCONCLUSIVE is an outcome of its own), `latency` (one latency run per
device x model, shared), `evaluation` (one eval run on the artifact's eval contract, shared),
`evaluate` (the same for another deployed model), and `releases` (another release of a model, signed
with a key this run alone trusts). What they return, and the checks to judge with, are imported from here:

    from hil.testing import Evaluation, Judge, Latency, accuracy_checks, check_max

    def test_my_detector(evaluation: Evaluation, budgets, judge: Judge) -> None:
        judged = accuracy_checks(evaluation, budgets)
        judge(*judged.checks)

See docs/writing-suites.md for a worked example.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hil.artifacts import Artifact, init_manifest, load_artifact, sign
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
    check_cv,
    check_max,
    check_min,
    check_percentile,
    check_relative_accuracy,
    combine,
    temper,
)
from hil.deploy import DeployedModel
from hil.eval_contract import EvalContract
from hil.evaluation import (
    Evaluation,
    Judged,
    NoEvalContract,
    accuracy_checks,
    agreement_checks,
    describe_inputs,
    evaluate,
    latency_inputs,
    parent_of,
    relative_accuracy_check,
    top_k_accuracy,
)
from hil.report.allure_io import attach_csv, attach_json, attach_png, attach_text, budget_table, samples_csv
from hil.report.plots import accuracy_vs_noise_png, latency_cdf_png, latency_histogram_png, percentile_marks
from hil.report.record import RawSamples, record_check, record_metric
from hil.runner import LatencyRun, StopWhen, run_latency
from hil.stats import DEFAULT_CONFIDENCE, AdaptiveStop, LatencySummary, summarize, top1_accuracy

__all__ = [
    "PERCENTILE_KEYS",
    "BudgetExceeded",
    "BudgetSpec",
    "Context",
    "DeployTo",
    "EvalContract",
    "Evaluate",
    "Evaluation",
    "InconclusiveMeasurement",
    "Judge",
    "Judged",
    "Latency",
    "LatencySettings",
    "Measurement",
    "NoEvalContract",
    "Record",
    "Releases",
    "Verdict",
    "accuracy_checks",
    "accuracy_vs_noise_png",
    "agreement_checks",
    "assert_budget",
    "attach_json",
    "attach_png",
    "attach_text",
    "check_max",
    "check_min",
    "check_percentile",
    "check_relative_accuracy",
    "evaluate",
    "latency_inputs",
    "measure_latency",
    "parent_of",
    "percentile_verdicts",
    "record_metric",
    "relative_accuracy_check",
    "top1_accuracy",
    "top_k_accuracy",
]


Record = Callable[[str, object], None]  # the `report_property` fixture: (name, value) into JUnit properties
Evaluate = Callable[[DeployedModel], Evaluation]  # the `evaluate_once` fixture
DeployTo = Callable[..., DeployedModel]  # the `deploy_to` fixture: (device, artifact, **deploy options)


# -- verdicts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judge:
    """Records measurements (JUnit properties, summary.json checks, an Allure budget table) and turns
    their verdicts into test outcomes: FAIL fails the test, INCONCLUSIVE is reported as its own outcome."""

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

    def metric(self, name: str, value: float, unit: str = "", samples: int | None = None) -> None:
        """A value measured without a budget: no verdict, but recorded and compared run to run by `hil gate`."""
        self.node.user_properties.append((f"hil.metric.{name}", value))
        record_metric(self.node, name, value, unit, samples=samples)


# -- latency -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencySettings:
    """How long a latency run measures. Modest defaults: the whole of suites/ stays quick on the lab.

    An adaptive run goes on past the minimums only while its verdict is undecided; its last look is at
    max_iterations. max_duration_s bounds models that take milliseconds per inference, which may then
    end before the first look (about 670 samples for p99 at 99%) and say INCONCLUSIVE with how many
    more samples they need.
    """

    warmup: int = 50
    min_iterations: int = 300
    min_duration_s: float = 1.0
    max_iterations: int = 50_000
    max_duration_s: float = 30.0
    confidence: float = DEFAULT_CONFIDENCE


def percentile_verdicts(latencies_ms: Any, limits: Mapping[float, float], stop: AdaptiveStop | None,
                        confidence: float = DEFAULT_CONFIDENCE) -> list[Measurement]:
    """One verdict per percentile budget, on the samples of the adaptive run's last look.

    The bounds are taken at the run's Bonferroni-corrected confidence (hil.stats.AdaptiveStop), so
    stopping as soon as the driving percentile is decided does not inflate the error rate; for the
    driving percentile the verdict is the one the device's AdaptiveStop reached.
    """
    looks = len(stop.looks) if stop is not None else 1
    last = stop.last_look(len(latencies_ms)) if stop is not None else None
    judged = latencies_ms[:last] if last is not None else latencies_ms  # before any look: all, INCONCLUSIVE
    cv = check_cv(judged)
    return [combine(check_percentile(judged, q, limit, confidence, looks=looks, name=f"latency_p{q:g}_ms"),
                    cv, judged, looks) for q, limit in sorted(limits.items())]


@dataclass(frozen=True)
class Latency:
    """A latency run with its summary and percentile verdicts (empty without a percentile budget)."""

    run: LatencyRun
    summary: LatencySummary
    percentiles: tuple[Measurement, ...]
    threads: int
    adaptive: bool
    inputs: str  # what was fed: the artifact's eval rows, or random data of the named dimensions
    raw: RawSamples | None = None  # where the samples went in the report directory

    @property
    def cold_start_ms(self) -> float:
        """Session creation plus the first inference: what a freshly started service waits."""
        return self.run.cold_start_ms

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
        yield "hil.latency.inputs", self.inputs
        yield "hil.cold_start_ms", self.cold_start_ms
        yield "hil.session_create_ms", run.session.create_ms
        yield "hil.first_inference_ms", run.first_inference_ms
        yield "hil.peak_rss_mib", run.memory.peak_rss_mib


def measure_latency(deployed: DeployedModel, spec: BudgetSpec, settings: LatencySettings = LatencySettings(),
                    dims: Mapping[str, int] | None = None) -> Latency:
    """Adaptive when a percentile budget exists (the highest percentile drives the stop), else a fixed run.
    Inputs: see latency_inputs (given `dims` override the eval rows with random data of that size)."""
    threads = threads_for(deployed.device)
    limits = spec.percentile_limits
    inputs = latency_inputs(deployed.artifact, dims)
    described = describe_inputs(deployed.artifact, dims)
    common = {"warmup": settings.warmup, "min_iterations": settings.min_iterations,
              "min_duration_s": settings.min_duration_s, "threads": threads, **inputs}
    if not limits:
        run = run_latency(deployed, **common)
        return Latency(run, _summary(run), (), threads, adaptive=False, inputs=described)
    q = max(limits)  # the tail takes the most samples to decide: once it is, the others are too
    stop = AdaptiveStop(q, limits[q], settings.confidence, max_samples=settings.max_iterations)  # the device's looks
    run = run_latency(deployed, **common, max_iterations=settings.max_iterations,
                      max_duration_s=settings.max_duration_s,
                      stop_when=StopWhen(q, limits[q], settings.confidence))
    verdicts = percentile_verdicts(run.latencies_ms, limits, stop, settings.confidence)
    return Latency(run, _summary(run), tuple(verdicts), threads, True, described)


def _summary(run: LatencyRun) -> LatencySummary:
    return summarize(run.latencies_ms, run.batch, run.cpu.wall_s or None)


# -- other releases of a model -------------------------------------------------------------------


class Releases:
    """Makes other releases of a model (deploy, rollback and full-disk tests), signed with a key made for
    this run: only this run trusts it (`trusted`), it is never written to disk, and it dies with the run.
    A lab that trusts only its own keys therefore never has to trust hil's demo key for these tests."""

    def __init__(self, lab_keys: list[Ed25519PublicKey]) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.trusted: list[Ed25519PublicKey] = [*lab_keys, self._key.public_key()]

    def make(self, artifact: Artifact, directory: Path, version: str) -> Artifact:
        """The same model as another release: new bytes (a metadata note) and version, signed by this run."""
        import onnx

        shutil.copytree(artifact.directory, directory)
        model = onnx.load(str(directory / "model.onnx"))
        onnx.helper.set_model_props(model, {"hil.release": version})
        onnx.save(model, str(directory / "model.onnx"))
        manifest = artifact.manifest
        if manifest.eval is not None and manifest.eval.parent is not None:
            # The copy lies elsewhere: point at the parent where it really is.
            parent = str(manifest.eval.parent_dir(artifact.directory))
            init_manifest(directory, manifest.name, version, eval={"parent": parent})
        else:
            init_manifest(directory, manifest.name, version)
        sign(directory, self._key)
        return load_artifact(directory)
