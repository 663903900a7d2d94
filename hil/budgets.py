"""Budgets and their verdicts: PASS, FAIL or INCONCLUSIVE, each stated like an OpenHTF measurement.

    latency_p99_ms <= 12.0: measured 10.3 ms (99% upper bound 11.2 ms, n=700): PASS

A percentile budget is judged on a confidence bound, never on the point estimate (see hil.stats);
cold start, memory, accuracy and throughput are single values compared with their limit.
Measurements are named after the manifest's budget keys, so a failure points at the line to read.
`assert_budget` turns a verdict into the exception the rest of hil understands: FAIL is a
ProductFailure (the model fell short), INCONCLUSIVE is not (the run could not tell).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from hil import checks
from hil.errors import ConfigError, HilError, ProductFailure
from hil.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_CV_THRESHOLD,
    DEFAULT_MIN_RELATIVE_ACCURACY,
    AdaptiveStop,
    Verdict,
    coefficient_of_variation,
    percentile,
    percentile_bounds,
    relative_accuracy,
    samples_to_decide,
)

__all__ = [
    "PERCENTILE_KEYS",
    "AdaptiveStop",
    "BudgetExceeded",
    "BudgetSpec",
    "Context",
    "InconclusiveMeasurement",
    "Measurement",
    "Verdict",
    "assert_budget",
    "budgets_for_tags",
    "check_budget",
    "check_cv",
    "check_max",
    "check_min",
    "check_percentile",
    "check_relative_accuracy",
    "combine",
    "temper",
]

AT_MOST = "<="
AT_LEAST = ">="


def format_value(value: float) -> str:
    """12.0 -> '12.0', 10.2999 -> '10.3', 0.93125 -> '0.9312': short, and a limit reads as written."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return f"{value:.4g}"


def _percent(confidence: float) -> str:
    return f"{confidence * 100:.10g}%"


@dataclass(frozen=True)
class Measurement:
    """A named value with units, its limit and verdict; percentiles add their bounds and sample count.

    confidence is the overall confidence of the bounds (for an adaptive run, over all its looks).
    more_samples estimates how many further samples would likely decide an INCONCLUSIVE one.
    """

    name: str
    value: float
    unit: str
    limit: float
    comparator: str  # "<=" or ">="
    verdict: Verdict
    confidence: float | None = None
    lower_bound: float | None = None
    upper_bound: float | None = None
    samples: int | None = None
    more_samples: int | None = None
    note: str = ""

    @property
    def bound(self) -> float | None:
        """The bound the verdict rests on: the upper one for PASS, the lower one for FAIL."""
        if self.verdict is Verdict.FAIL:
            return self.lower_bound
        return self.upper_bound

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    def _with_unit(self, value: float) -> str:
        return f"{format_value(value)} {self.unit}" if self.unit else format_value(value)

    def _bounds_text(self) -> str:
        if self.confidence is None:
            return ""
        c = _percent(self.confidence)
        if self.verdict is Verdict.PASS and self.upper_bound is not None:
            return f"{c} upper bound {self._with_unit(self.upper_bound)}"
        if self.verdict is Verdict.FAIL and self.lower_bound is not None:
            return f"{c} lower bound {self._with_unit(self.lower_bound)}"
        lower = "none" if self.lower_bound is None else self._with_unit(self.lower_bound)
        upper = "none yet" if self.upper_bound is None else self._with_unit(self.upper_bound)
        return f"{c} lower bound {lower}, upper bound {upper}"

    def __str__(self) -> str:
        details = [self._bounds_text()]
        if self.samples is not None:
            details.append(f"n={self.samples}")
        text = ", ".join(d for d in details if d)
        extra = [text] if text else []
        if self.verdict is Verdict.INCONCLUSIVE and self.more_samples:
            extra.append(f"about {self.more_samples} more samples would likely decide")
        if self.note:
            extra.append(self.note)
        tail = f" ({'; '.join(extra)})" if extra else ""
        return (f"{self.name} {self.comparator} {format_value(self.limit)}: measured {self._with_unit(self.value)}"
                f"{tail}: {self.verdict}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["verdict"] = self.verdict.value
        data["text"] = str(self)
        return data


def _compare(value: float, limit: float, comparator: str) -> Verdict:
    ok = value <= limit if comparator == AT_MOST else value >= limit
    return Verdict.PASS if ok else Verdict.FAIL  # NaN compares False: a NaN measurement fails


def check_max(name: str, value: float, limit: float, unit: str = "") -> Measurement:
    """value <= limit (cold start, memory, latency of a single event)."""
    return Measurement(name, float(value), unit, float(limit), AT_MOST, _compare(value, limit, AT_MOST))


def check_min(name: str, value: float, limit: float, unit: str = "") -> Measurement:
    """value >= limit (accuracy, throughput)."""
    return Measurement(name, float(value), unit, float(limit), AT_LEAST, _compare(value, limit, AT_LEAST))


def check_percentile(latencies_ms: npt.ArrayLike, q: float, limit_ms: float, confidence: float = DEFAULT_CONFIDENCE,
                     looks: int = 1, name: str | None = None) -> Measurement:
    """The q-th percentile latency <= limit_ms, decided on distribution-free bounds at `confidence`.

    looks > 1 says these samples are one of several looks of a sequential run (see AdaptiveStop):
    the bounds are then taken at 1 - (1 - confidence)/looks so that `confidence` holds overall.
    """
    if looks < 1:
        raise ValueError(f"looks must be >= 1, got {looks}")
    per_look = 1.0 - (1.0 - confidence) / looks
    bounds = percentile_bounds(latencies_ms, q, per_look)
    if bounds.upper is not None and bounds.upper <= limit_ms:
        verdict = Verdict.PASS
    elif bounds.lower is not None and bounds.lower > limit_ms:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.INCONCLUSIVE
    more = samples_to_decide(latencies_ms, q, limit_ms, per_look) if verdict is Verdict.INCONCLUSIVE else None
    return Measurement(
        name=name or f"latency_p{q:g}_ms", value=percentile(latencies_ms, q), unit="ms", limit=float(limit_ms),
        comparator=AT_MOST, verdict=verdict, confidence=float(confidence), lower_bound=bounds.lower,
        upper_bound=bounds.upper, samples=bounds.n, more_samples=more,
        note=f"sequential, {looks} looks" if looks > 1 else "")


def check_cv(latencies_ms: npt.ArrayLike, threshold: float = DEFAULT_CV_THRESHOLD) -> Measurement:
    """A warning-kind check: the timings' coefficient of variation is at most `threshold` (a fraction).

    Never FAIL: noisy timings say the lab (throttling, background load) may be in the figure, not
    that the model is slow. Its verdict is PASS or INCONCLUSIVE, and `combine` applies it.
    """
    cv = coefficient_of_variation(latencies_ms)
    verdict = Verdict.PASS if cv <= threshold else Verdict.INCONCLUSIVE
    note = "" if verdict is Verdict.PASS else "timings too noisy to trust"
    return Measurement("latency_cv_pct", cv * 100.0, "%", threshold * 100.0, AT_MOST, verdict, note=note)


def combine(latency: Measurement, cv: Measurement, latencies_ms: npt.ArrayLike | None = None,
            looks: int = 1) -> Measurement:
    """A latency verdict tempered by the noise check.

    Noisy timings turn FAIL into INCONCLUSIVE (the excess may be the lab's); a PASS stays PASS (the
    bound held even with the noise in it), with the noise noted. INCONCLUSIVE stays so. Given the
    samples, a FAIL stands despite the noise when even the median's lower bound is over the limit:
    stalls only add latency to some samples, they cannot lift the median (`looks`: the adaptive run's
    number of looks, for the same Bonferroni-corrected confidence as the verdict).
    """
    if cv.verdict is Verdict.PASS:
        return latency
    noise = f"cv {format_value(cv.value)}% > {format_value(cv.limit)}%"
    if latency.verdict is Verdict.FAIL:
        if latencies_ms is not None and latency.limit is not None:
            per_look = 1.0 - (1.0 - (latency.confidence or DEFAULT_CONFIDENCE)) / max(1, looks)
            median = percentile_bounds(latencies_ms, 50, per_look).lower
            if median is not None and median > latency.limit:
                return dataclasses.replace(latency, note=_join(
                    latency.note, f"noisy timings ({noise}) but even the median's lower bound "
                                  f"{format_value(median)} ms is over the limit: tail stalls cannot explain it"))
        return dataclasses.replace(latency, verdict=Verdict.INCONCLUSIVE,
                                   note=_join(latency.note, f"would FAIL but timings are too noisy: {noise}"))
    return dataclasses.replace(latency, note=_join(latency.note, f"noisy timings: {noise}"))


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def temper(measurement: Measurement, warnings: Sequence[str]) -> Measurement:
    """A timing FAIL measured under unreliable conditions is INCONCLUSIVE: the lab may be to blame.

    `warnings` are the device's timing warnings (CPU governor, thermal headroom: hil.conditions, probed by
    Device.timing_warnings); which checks are timings is the check registry's word (hil.checks.is_timing).
    """
    if not warnings or measurement.verdict is not Verdict.FAIL or not checks.is_timing(measurement.name):
        return measurement
    warned = "would FAIL, but the device warned: " + "; ".join(warnings)
    return dataclasses.replace(measurement, verdict=Verdict.INCONCLUSIVE, note=_join(measurement.note, warned))


def check_relative_accuracy(int8_accuracy: float, fp32_accuracy: float,
                            min_ratio: float = DEFAULT_MIN_RELATIVE_ACCURACY) -> Measurement:
    """int8 accuracy >= min_ratio x its fp32 parent's (MLPerf: 99%)."""
    m = check_min("accuracy_relative_to_fp32", relative_accuracy(int8_accuracy, fp32_accuracy), min_ratio)
    return dataclasses.replace(m, note=f"int8 {format_value(int8_accuracy)} vs fp32 {format_value(fp32_accuracy)}")


# -- context and assertions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What a verdict is about: where it was measured and on exactly which model and runtime."""

    device: str
    model: str
    version: str
    sha256: str
    onnxruntime: str
    emulated: bool

    def __str__(self) -> str:
        where = f"{self.device} (emulated)" if self.emulated else self.device
        return (f"device {where}, model {self.model} {self.version} (sha256 {self.sha256}), "
                f"onnxruntime {self.onnxruntime}")


class BudgetExceeded(ProductFailure):
    """A budget was missed with confidence: the model under test is too slow, too big or too inaccurate."""

    def __init__(self, measurement: Measurement, context: Context | None = None) -> None:
        super().__init__(_message("budget exceeded", measurement, context))
        self.measurement = measurement
        self.context = context


class InconclusiveMeasurement(HilError):
    """The samples could not tell PASS from FAIL (too few, or too noisy); not a verdict on the model."""

    def __init__(self, measurement: Measurement, context: Context | None = None) -> None:
        super().__init__(_message("inconclusive", measurement, context))
        self.measurement = measurement
        self.context = context


def _message(what: str, measurement: Measurement, context: Context | None) -> str:
    return f"{what}: {measurement}" + (f" [{context}]" if context is not None else "")


def assert_budget(measurement: Measurement, context: Context | None = None) -> Measurement:
    """Return the measurement if it passed; raise BudgetExceeded on FAIL, InconclusiveMeasurement otherwise."""
    if measurement.verdict is Verdict.FAIL:
        raise BudgetExceeded(measurement, context)
    if measurement.verdict is Verdict.INCONCLUSIVE:
        raise InconclusiveMeasurement(measurement, context)
    return measurement


# -- budget specs from a manifest ---------------------------------------------------------------------

# From the registry (hil.checks): the keys whose limit is a ceiling (lower is better, so a smaller limit
# is stricter) and those whose limit is a floor, and the latency percentiles among them.
_BUDGETS = {c.name: c for c in checks.budget_checks()}
_CEILINGS = tuple(key for key, c in _BUDGETS.items() if c.better == "lower")
_FLOORS = tuple(key for key, c in _BUDGETS.items() if c.better == "higher")
PERCENTILE_KEYS = {q: key for key in _BUDGETS if (q := checks.quantile(key)) is not None}


@dataclass(frozen=True)
class BudgetSpec:
    """The budgets that apply to one device; None where no tag of the device sets one.

    sources records which tag each limit came from, as (key, tag) pairs.
    """

    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    cold_start_ms: float | None = None
    memory_mib: float | None = None
    accuracy_top1: float | None = None
    throughput_ips: float | None = None
    accuracy_top1_at_20db_snr: float | None = None  # robustness: top-1 with Gaussian sensor noise at 20 dB SNR
    sources: tuple[tuple[str, str], ...] = ()

    KEYS = tuple(_BUDGETS)  # registry order: the ceilings come first

    @property
    def percentile_limits(self) -> dict[float, float]:
        """{q: limit_ms} for the latency percentiles that have a budget."""
        limits = {q: getattr(self, key) for q, key in PERCENTILE_KEYS.items()}
        return {q: v for q, v in limits.items() if v is not None}

    def source(self, key: str) -> str | None:
        """The device tag whose budgets table set `key`."""
        return dict(self.sources).get(key)

    def limits(self) -> dict[str, float]:
        """The budgets that are set, by manifest key."""
        return {key: getattr(self, key) for key in self.KEYS if getattr(self, key) is not None}

    def __bool__(self) -> bool:
        return bool(self.limits())


# The fields stay typed attributes (suites read budgets.memory_mib), so they cannot be generated from the
# registry; a budget key added to or removed from hil.checks without its field fails here, at import.
if {f.name for f in dataclasses.fields(BudgetSpec)} - {"sources"} != set(BudgetSpec.KEYS):
    raise RuntimeError(f"hil.budgets.BudgetSpec fields do not match the budget keys of hil.checks "
                       f"({', '.join(BudgetSpec.KEYS)}): add or remove a field")


def budgets_for_tags(manifest_budgets: Mapping[str, Mapping[str, float]], tags: Iterable[str]) -> BudgetSpec:
    """Merge the manifest's budget tables for a device's tags into one spec.

    When two tags set the same key the strictest limit wins: the smallest ceiling (latency,
    cold start, memory) and the largest floor (accuracy, throughput), so a device that is both a
    "jetson" and an "orin" must meet both tables. On a tie the first tag in `tags` is the source.
    Tags without a table add nothing; a device with no matching tag gets an empty (falsy) spec.
    """
    merged: dict[str, float] = {}
    sources: dict[str, str] = {}
    for tag in tags:
        for key, raw in (manifest_budgets.get(tag) or {}).items():
            if key not in BudgetSpec.KEYS:
                raise ConfigError(f"manifest budgets.{tag}: unknown budget '{key}' "
                                  f"(known: {', '.join(sorted(BudgetSpec.KEYS))})")
            value = float(raw)
            if key in merged:
                stricter = value < merged[key] if key in _CEILINGS else value > merged[key]
                if not stricter:
                    continue
            merged[key] = value
            sources[key] = tag
    return BudgetSpec(**merged, sources=tuple(sorted(sources.items())))


def check_budget(key: str, value: float, limit: float) -> Measurement:
    """A single-value budget: compared as the registry says (a ceiling or a floor), in the registry's unit."""
    entry = _BUDGETS[key]
    return (check_max if entry.better == "lower" else check_min)(key, value, limit, entry.unit)
