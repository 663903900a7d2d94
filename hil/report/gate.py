"""`hil gate`: compare a run's reports/summary.json with a baseline, and fail the release on a regression.

    hil gate --baseline BASELINE.json [--current reports/summary.json] [--update] [--force]
             [--tolerance CHECK=VALUE ...] [--json OUT]

Both files are summary.json documents (schema hil.summary/1, see docs/summary-json.md). A check is
identified by (device, model, check), and each one gets a status:

    regressed       worse beyond both its tolerance and the run-to-run noise, or its verdict went PASS -> FAIL
    missing         in the baseline, not recorded by this run although its device took part in the run
    not comparable  measured in a different environment (fingerprint), emulated vs real, another unit...
    improved        better beyond both its tolerance and the run-to-run noise
    new             only in this run
    unchanged       everything else

Exit status: 1 when anything regressed or went missing, else 0; 2 when an input is unusable. With --strict
(recommended for release gates), also 1 when a check is not comparable or when nothing was compared: after
an onnxruntime or kernel update every check is "not comparable", and a plain gate would pass without
having checked anything. The gate always says how many checks it really compared.

Two checks are compared only when their fingerprint and `emulated` are equal. Emulated results are
never compared with real ones: an emulator's timings and memory say nothing about the hardware, so a
difference would be about the lab, not the model. A fingerprint mismatch lists the environment fields
(devices[...].environment) that differ. Checks of a device that is not in this run at all are "not
comparable" rather than "missing": a run on part of the lab is not a regression of the rest of it.

A regression is a change beyond BOTH a tolerance AND the noise, never a flat percentage alone:

* Both sides carry raw samples (raw.values and raw.quantile, at least 20 of them and the quantile
  below the maximum): the 95% percentile-bootstrap interval of the difference current - baseline of
  the nearest-rank quantile (2000 resamples, seeded, so a verdict is reproducible). Regressed when
  the whole interval lies on the worse side and the point difference exceeds the tolerance;
  improved symmetrically; else unchanged. The bootstrap is exact and O(resamples) after one sort:
  the k-th smallest of n draws with replacement is the sample at rank ceil(n * U) with U ~ Beta(k,
  n - k + 1), the k-th smallest of n uniforms, so no resampled array is ever built.
* Otherwise the tolerance alone decides (a single value carries no noise estimate).

A check whose verdict went PASS -> FAIL is a regression whatever the numbers say.

Tolerance defaults come from the registry of checks, hil.checks (docs/checks.md lists each check's
and why): the check's own, else, for a check the registry does not cover, an absolute one for a
fraction (no unit, both values in [0, 1]) and a relative one for anything else. `better` (from the
check's comparator) says which direction is worse.

--tolerance NAME=10% (relative to the baseline) or NAME=0.5 (absolute, in the check's unit) overrides
them; NAME may be an fnmatch pattern ('latency_*'). An exact name beats a pattern; among patterns the
last one given wins.

--update merges this run into the baseline file (temp file + os.replace): its checks replace the
baseline's for the same (device, model, check), all others are kept, so a run on part of the lab
never erases the rest. It refuses when the gate fails unless --force (the exit status still reports
the gate). Without a baseline file, --update creates it (every check is new).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from hil import checks
from hil.checks import FALLBACK_TOLERANCE as FALLBACK_TOLERANCE  # re-exported: the registry owns tolerances
from hil.checks import FRACTION_TOLERANCE as FRACTION_TOLERANCE
from hil.checks import Tolerance as Tolerance
from hil.errors import ConfigError
from hil.report.files import write_bytes_atomic
from hil.report.summary import SCHEMA
from hil.stats import nearest_rank

GATE_SCHEMA = "hil.gate/1"
DEFAULT_CURRENT = Path("reports/summary.json")
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
MIN_BOOTSTRAP_SAMPLES = 20  # fewer say little about a tail quantile, and a bootstrap of them would look sure
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Key = tuple[str, str, str]  # (device, model, check)


class Status(StrEnum):
    """Declared in table order: what fails the gate first."""

    REGRESSED = "regressed"
    MISSING = "missing"
    NOT_COMPARABLE = "not comparable"
    IMPROVED = "improved"
    NEW = "new"
    UNCHANGED = "unchanged"


FAILING = frozenset({Status.REGRESSED, Status.MISSING})
# --strict (for release gates): a check that could not be compared fails too, and so does comparing nothing.
FAILING_STRICT = FAILING | {Status.NOT_COMPARABLE}
COMPARED = frozenset({Status.REGRESSED, Status.IMPROVED, Status.UNCHANGED})
_ORDER = {status: i for i, status in enumerate(Status)}


# -- tolerances --------------------------------------------------------------------------------------


def parse_tolerance(text: str) -> tuple[str, Tolerance]:
    """'latency_*=10%' -> ('latency_*', 10% relative); 'accuracy_top1=0.01' -> absolute 0.01."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    relative = raw.endswith("%")
    try:
        value = float(raw[:-1] if relative else raw)
    except ValueError:
        value = math.nan
    if not sep or not name or not math.isfinite(value) or value < 0:
        raise ConfigError(f"--tolerance {text!r}: expected CHECK=PERCENT% (relative, e.g. 'latency_*=10%') or "
                          "CHECK=NUMBER (absolute, in the check's unit, e.g. accuracy_top1=0.01), not negative")
    return name, Tolerance(value / 100.0, "relative") if relative else Tolerance(value, "absolute")


def parse_tolerances(texts: Iterable[str]) -> dict[str, Tolerance]:
    """The --tolerance options in the order given (a repeated name keeps its last value)."""
    overrides: dict[str, Tolerance] = {}
    for text in texts:
        name, tolerance = parse_tolerance(text)
        overrides.pop(name, None)  # re-insert so "last pattern given wins" also holds for repeats
        overrides[name] = tolerance
    return overrides


def tolerance_for(check: str, unit: str, values: Iterable[float],
                  overrides: Mapping[str, Tolerance] | None = None) -> Tolerance:
    """The tolerance of a check: an override (exact name, else the last matching pattern), else the registry's."""
    overrides = overrides or {}
    if check in overrides:
        return overrides[check]
    for pattern, tolerance in reversed(overrides.items()):
        if fnmatch.fnmatchcase(check, pattern):
            return tolerance
    return checks.default_tolerance(check, unit, values)


# -- the bootstrap -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapResult:
    """The nearest-rank q-th percentile of each side, their difference and its bootstrap interval."""

    baseline: float
    current: float
    difference: float  # current - baseline
    low: float
    high: float
    q: float
    confidence: float
    resamples: int


def _sorted_samples(samples: npt.ArrayLike, what: str) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"{what} samples must be a non-empty list of finite numbers")
    return np.sort(x)


def bootstrap_quantiles(sorted_samples: np.ndarray, q: float, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` draws of the nearest-rank q-th percentile of a resample (with replacement) of sorted_samples.

    Exactly the distribution of resampling whole arrays, without building them: a resample's k-th
    smallest is the sample at rank ceil(n * U_(k)), U_(k) ~ Beta(k, n - k + 1) being the k-th
    smallest of n uniforms (ceil is monotone, so it keeps their order).
    """
    n = sorted_samples.size
    k = nearest_rank(n, q)
    u = rng.beta(k, n - k + 1, size=resamples)
    ranks = np.clip(np.ceil(u * n).astype(np.int64), 1, n)  # clip: u rounds to 0 or 1 once in a blue moon
    return sorted_samples[ranks - 1]


def bootstrap_difference(baseline: npt.ArrayLike, current: npt.ArrayLike, q: float, *,
                         resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                         seed: int = DEFAULT_SEED) -> BootstrapResult:
    """Percentile-bootstrap interval (two-sided, `confidence`) of current - baseline for the q-th percentile.

    The two sides are resampled independently (they are separate runs); seeded, so reproducible.
    """
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    b = _sorted_samples(baseline, "baseline")
    c = _sorted_samples(current, "current")
    rng = np.random.default_rng(seed)
    diffs = bootstrap_quantiles(c, q, resamples, rng) - bootstrap_quantiles(b, q, resamples, rng)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    qb, qc = float(b[nearest_rank(b.size, q) - 1]), float(c[nearest_rank(c.size, q) - 1])
    return BootstrapResult(baseline=qb, current=qc, difference=qc - qb, low=float(low), high=float(high),
                           q=float(q), confidence=confidence, resamples=resamples)


# -- comparing two summaries -------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One (device, model, check) of the baseline and/or the current run, and what the gate makes of it."""

    device: str
    model: str
    check: str
    status: Status
    reason: str
    unit: str = ""
    better: str | None = None
    baseline: float | None = None  # the recorded values
    current: float | None = None
    difference: float | None = None  # current - baseline (of the raw samples' quantile when bootstrapped)
    relative_change: float | None = None  # difference / |baseline|
    interval: tuple[float, float] | None = None  # bootstrap interval of the difference
    confidence: float | None = None
    tolerance: str | None = None  # the rule, e.g. "10%"
    tolerance_amount: float | None = None  # the rule applied here, in the check's unit
    method: str | None = None  # "bootstrap" or "tolerance"
    baseline_verdict: str | None = None
    current_verdict: str | None = None

    @property
    def key(self) -> Key:
        return self.device, self.model, self.check

    @property
    def fails_gate(self) -> bool:
        return self.status in FAILING

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = [_finite(v) for v in value]
            elif isinstance(value, float):
                value = _finite(value)
            out[name] = str(value) if isinstance(value, Status) else value
        return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN or infinity


def _number(value: Any) -> float | None:
    """A finite float, or None (a bool is not a measurement)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _key(check: Mapping[str, Any]) -> Key:
    return str(check["device"]), str(check["model"]), str(check["check"])


def _checks_by_key(doc: Mapping[str, Any]) -> dict[Key, Mapping[str, Any]]:
    # A repeated key keeps the last entry: checks are appended as tests finish, so it is the latest.
    return {_key(c): c for c in doc.get("checks") or []}


def _devices_in(doc: Mapping[str, Any]) -> set[str]:
    devices = set(doc.get("devices") or {})
    for entry in [*(doc.get("tests") or []), *(doc.get("checks") or [])]:
        if isinstance(entry, Mapping) and entry.get("device"):
            devices.add(str(entry["device"]))
    return devices


def _environment(doc: Mapping[str, Any], device: str) -> Mapping[str, Any] | None:
    entry = (doc.get("devices") or {}).get(device)
    env = entry.get("environment") if isinstance(entry, Mapping) else None
    return env if isinstance(env, Mapping) else None


def environment_diff(device: str, baseline_doc: Mapping[str, Any], current_doc: Mapping[str, Any]) -> str:
    """'onnxruntime 1.20.1 -> 1.21.0; cpus 1.5 -> 2': the device's environment fields that differ."""
    before, after = _environment(baseline_doc, device), _environment(current_doc, device)
    if before is None or after is None:
        return "environment not recorded in " + ("either file" if before is after else
                                                  "the baseline" if before is None else "this run")
    missing = "(none)"
    diffs = [f"{k} {before.get(k, missing)} -> {after.get(k, missing)}"
             for k in sorted(set(before) | set(after)) if before.get(k, missing) != after.get(k, missing)]
    return "; ".join(diffs) or "the recorded environment fields are equal (the fingerprint covers more)"


def _direction(check: Mapping[str, Any]) -> str | None:
    better = check.get("better")
    if better in ("lower", "higher"):
        return str(better)
    return {"<=": "lower", ">=": "higher"}.get(str(check.get("comparator")))  # a budget's ceiling or floor


def _raw(check: Mapping[str, Any]) -> tuple[list[Any], float] | None:
    raw = check.get("raw")
    if not isinstance(raw, Mapping):
        return None
    values, q = raw.get("values"), _number(raw.get("quantile"))
    if not isinstance(values, list) or q is None or not 0.0 < q <= 100.0:
        return None
    return values, q


def _bootstrappable(b: tuple[list[Any], float] | None, c: tuple[list[Any], float] | None) -> str | None:
    """None when the raw samples of both sides support a bootstrap, else why not (for the reason)."""
    if b is None or c is None:
        return "no raw samples" if b is c else f"no raw samples in {'the baseline' if b is None else 'this run'}"
    if b[1] != c[1]:
        return f"raw samples are of different quantiles (p{b[1]:g} vs p{c[1]:g})"
    for values in (b[0], c[0]):
        n = len(values)
        if n < MIN_BOOTSTRAP_SAMPLES or nearest_rank(n, b[1]) >= n:
            return f"too few raw samples ({n}) to bootstrap p{b[1]:g}"
        if any(_number(v) is None for v in values):
            return "raw samples are not all finite numbers"
    return None


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" + (f" {unit}" if unit else "")


def _signed(value: float, unit: str = "") -> str:
    return f"{value:+.4g}" + (f" {unit}" if unit else "")


def _beyond(amount: float, tolerance: float, scale: float) -> bool:
    """amount > tolerance, with room for float noise (10% of 1.0 must not flag a rise to exactly 1.1)."""
    return amount > tolerance + 1e-9 * scale


def compare(baseline_doc: Mapping[str, Any], current_doc: Mapping[str, Any],
            tolerances: Mapping[str, Tolerance] | None = None, *, resamples: int = DEFAULT_RESAMPLES,
            confidence: float = DEFAULT_CONFIDENCE, seed: int = DEFAULT_SEED) -> list[Comparison]:
    """Every (device, model, check) of either document, judged; sorted by status (failing first), then key."""
    baseline, current = _checks_by_key(baseline_doc), _checks_by_key(current_doc)
    in_run = _devices_in(current_doc)
    results: list[Comparison] = []
    for key in sorted(baseline.keys() | current.keys()):
        b, c = baseline.get(key), current.get(key)
        if b is None:
            assert c is not None
            results.append(_only(key, c, Status.NEW, "not in the baseline", current_side=True))
        elif c is None:
            if key[0] in in_run:
                results.append(_only(key, b, Status.MISSING, "in the baseline but not recorded by this run "
                                     "(test removed or deselected, or the run did not get to it)"))
            else:
                results.append(_only(key, b, Status.NOT_COMPARABLE, f"device '{key[0]}' is not part of this run: "
                                     "its baseline is kept, not judged"))
        else:
            results.append(_compare_pair(key, b, c, baseline_doc, current_doc, tolerances, resamples, confidence,
                                         seed))
    return sorted(results, key=lambda r: (_ORDER[r.status], r.key))


def _only(key: Key, check: Mapping[str, Any], status: Status, reason: str, current_side: bool = False) -> Comparison:
    """A check on one side only: its value and verdict go in that side's columns."""
    value, verdict = _number(check.get("value")), check.get("verdict")
    sides = {"current": value, "current_verdict": verdict} if current_side else \
        {"baseline": value, "baseline_verdict": verdict}
    return Comparison(*key, status=status, reason=reason, unit=str(check.get("unit") or ""),
                      better=_direction(check), **sides)


def _compare_pair(key: Key, b: Mapping[str, Any], c: Mapping[str, Any], baseline_doc: Mapping[str, Any],
                  current_doc: Mapping[str, Any], tolerances: Mapping[str, Tolerance] | None, resamples: int,
                  confidence: float, seed: int) -> Comparison:
    unit = str(c.get("unit") or "")
    base = Comparison(*key, status=Status.NOT_COMPARABLE, reason="", unit=unit, better=_direction(c) or _direction(b),
                      baseline=_number(b.get("value")), current=_number(c.get("value")),
                      baseline_verdict=b.get("verdict"), current_verdict=c.get("verdict"))
    # Whether the two measured the same thing comes first: a verdict change in another environment says nothing.
    if bool(b.get("emulated")) != bool(c.get("emulated")):
        which = "emulated baseline vs real device now" if b.get("emulated") else "real baseline vs emulated now"
        return replace(base, reason=f"{which}: an emulator's numbers say nothing about real hardware, so emulated "
                                    "results are never compared with real ones")
    if b.get("fingerprint") != c.get("fingerprint"):
        return replace(base, reason=f"fingerprint {b.get('fingerprint')} -> {c.get('fingerprint')}, environment "
                                    f"differs: {environment_diff(key[0], baseline_doc, current_doc)}")
    if str(b.get("unit") or "") != unit:
        return replace(base, reason=f"unit changed from {b.get('unit')!r} to {unit!r}")
    judged = _judge_numbers(base, b, c, tolerances, resamples, confidence, seed)
    if base.baseline_verdict == "PASS" and base.current_verdict == "FAIL":
        return replace(judged, status=Status.REGRESSED,
                       reason=f"verdict PASS -> FAIL: a regression whatever the numbers ({judged.reason})")
    return judged


def _judge_numbers(base: Comparison, b: Mapping[str, Any], c: Mapping[str, Any],
                   tolerances: Mapping[str, Tolerance] | None, resamples: int, confidence: float,
                   seed: int) -> Comparison:
    if base.baseline is None or base.current is None:
        side = "either file" if base.baseline is base.current else "the baseline" if base.baseline is None else \
            "this run"
        return replace(base, reason=f"no finite value in {side}")
    if base.better is None:
        return replace(base, reason="no direction recorded ('better' is neither lower nor higher)")
    limit = _number(c.get("limit"))
    tolerance = tolerance_for(base.check, base.unit, (base.baseline, base.current), tolerances)
    raw_b, raw_c = _raw(b), _raw(c)
    why_not = _bootstrappable(raw_b, raw_c)
    if why_not is None:
        assert raw_b is not None and raw_c is not None
        result = bootstrap_difference(raw_b[0], raw_c[0], raw_b[1], resamples=resamples, confidence=confidence,
                                      seed=seed)
        return _judge_bootstrap(base, result, tolerance, limit)
    return _judge_tolerance(base, tolerance, limit, why_not)


def _judge_bootstrap(base: Comparison, result: BootstrapResult, tolerance: Tolerance,
                     limit: float | None) -> Comparison:
    sign = 1.0 if base.better == "lower" else -1.0  # worse = sign * difference > 0
    amount = tolerance.amount(result.baseline, limit)
    worse = sign * result.difference
    worse_low, worse_high = sorted((sign * result.low, sign * result.high))
    interval = f"{result.confidence * 100:g}% interval [{_signed(result.low)}, {_signed(result.high, base.unit)}]"
    within = _tolerance_text(tolerance, amount, base.unit)
    scale = max(abs(result.baseline), abs(result.current))
    if worse_low > 0 and _beyond(worse, amount, scale):
        status, reason = Status.REGRESSED, f"worse: {interval} excludes 0 and the change exceeds {within}"
    elif worse_high < 0 and _beyond(-worse, amount, scale):
        status, reason = Status.IMPROVED, f"better: {interval} excludes 0 and the change exceeds {within}"
    elif worse_low > 0 or worse_high < 0:
        status, reason = Status.UNCHANGED, f"a real but small change: {interval} excludes 0, within {within}"
    else:
        status, reason = Status.UNCHANGED, f"run-to-run noise: {interval} includes 0"
    return replace(base, status=status, reason=f"p{result.q:g} of the raw samples, {reason}",
                   difference=result.difference, relative_change=_relative(result.difference, result.baseline),
                   interval=(result.low, result.high), confidence=result.confidence, tolerance=str(tolerance),
                   tolerance_amount=amount, method="bootstrap")


def _judge_tolerance(base: Comparison, tolerance: Tolerance, limit: float | None, why_not: str) -> Comparison:
    assert base.baseline is not None and base.current is not None
    difference = base.current - base.baseline
    worse = difference if base.better == "lower" else -difference
    amount = tolerance.amount(base.baseline, limit)
    scale = max(abs(base.baseline), abs(base.current))
    if _beyond(worse, amount, scale):
        status, verb = Status.REGRESSED, "worse beyond"
    elif _beyond(-worse, amount, scale):
        status, verb = Status.IMPROVED, "better beyond"
    else:
        status, verb = Status.UNCHANGED, "within"
    reason = f"{verb} {_tolerance_text(tolerance, amount, base.unit)}; tolerance only: {why_not}"
    return replace(base, status=status, reason=reason, difference=difference,
                   relative_change=_relative(difference, base.baseline), tolerance=str(tolerance),
                   tolerance_amount=amount, method="tolerance")


def _tolerance_text(tolerance: Tolerance, amount: float, unit: str) -> str:
    """'the 10% tolerance (0.041 ms)'; an absolute tolerance is its own amount."""
    if tolerance.kind == "absolute":
        return f"the {_fmt(amount, unit)} tolerance"
    return f"the {tolerance} tolerance ({_fmt(amount, unit)})"


def _relative(difference: float, baseline: float) -> float | None:
    return difference / abs(baseline) if baseline != 0 else None


def compared(comparisons: Iterable[Comparison]) -> int:
    """How many checks were really compared with the baseline (regressed, improved or unchanged)."""
    return sum(c.status in COMPARED for c in comparisons)


def gate_passed(comparisons: Sequence[Comparison], strict: bool = False) -> bool:
    """No regression or missing check; with `strict`, also no check that was not comparable, and at
    least one compared (after an onnxruntime or kernel update every check is "not comparable": a plain
    gate passes, a strict one says that nothing was checked)."""
    if strict:
        return compared(comparisons) > 0 and not any(c.status in FAILING_STRICT for c in comparisons)
    return not any(c.fails_gate for c in comparisons)


def exit_code(comparisons: Sequence[Comparison], strict: bool = False) -> int:
    return EXIT_OK if gate_passed(comparisons, strict) else EXIT_FAILED


# -- updating the baseline ---------------------------------------------------------------------------


def empty_summary() -> dict[str, Any]:
    """The baseline of a lab that has none yet."""
    return {"schema": SCHEMA, "devices": {}, "models": {}, "datasets": {}, "faults": [], "tests": [], "checks": []}


def merge_baseline(baseline_doc: Mapping[str, Any], current_doc: Mapping[str, Any]) -> dict[str, Any]:
    """The current run laid over the baseline: its checks (and tests, devices, models...) replace the
    baseline's with the same identity, the rest is kept, so a run on part of the lab erases nothing else."""
    current_keys = {_key(c) for c in current_doc.get("checks") or []}
    current_tests = {t.get("nodeid") for t in current_doc.get("tests") or []}
    merged = dict(current_doc)  # run_id, host, exit...: of the run that last touched the baseline
    merged["schema"] = SCHEMA
    merged["checks"] = [c for c in baseline_doc.get("checks") or [] if _key(c) not in current_keys] + \
        list(current_doc.get("checks") or [])
    merged["tests"] = [t for t in baseline_doc.get("tests") or [] if t.get("nodeid") not in current_tests] + \
        list(current_doc.get("tests") or [])
    merged["faults"] = [f for f in baseline_doc.get("faults") or [] if f.get("nodeid") not in current_tests] + \
        list(current_doc.get("faults") or [])
    for table in ("devices", "models", "datasets"):
        merged[table] = {**(baseline_doc.get(table) or {}), **(current_doc.get(table) or {})}
    counts = dict.fromkeys(("passed", "failed", "infrastructure", "inconclusive", "skipped"), 0)
    for test in merged["tests"]:
        outcome = str(test.get("outcome"))
        counts[outcome] = counts.get(outcome, 0) + 1
    merged["counts"] = counts  # recounted, so the merged file stays a consistent summary
    return merged


def write_json_atomic(path: Path, doc: Any) -> None:
    """JSON written atomically (hil.report.files), keeping a shared baseline's mode; ConfigError if it cannot be."""
    try:
        write_bytes_atomic(path, (json.dumps(doc, indent=2) + "\n").encode(), keep_mode=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}; check the directory exists and is "
                          "writable") from exc


# -- reading summaries -------------------------------------------------------------------------------


def load_summary(path: Path, role: str, advice: str) -> dict[str, Any]:
    """A summary.json document, checked enough that compare() can trust its shape; ConfigError otherwise.

    role names the file in messages ("baseline"), advice says what to do about a bad one.
    """
    where = f"{role} {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist; {advice}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} cannot be read ({exc}); {advice}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                          f"{advice}") from None
    validate_summary(doc, where, advice)
    return doc


def validate_summary(doc: Any, where: str, advice: str) -> None:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} is not a summary.json document (a JSON object); {advice}")
    if doc.get("schema") != SCHEMA:
        raise ConfigError(f"{where} has schema {doc.get('schema')!r}, expected {SCHEMA!r}; {advice}")
    for table in ("devices", "models", "datasets"):
        if not isinstance(doc.get(table, {}), dict):
            raise ConfigError(f"{where}: '{table}' is not an object; {advice}")
    for table in ("checks", "tests", "faults"):
        entries = doc.get(table, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"{where}: '{table}' is not a list of objects; {advice}")
    for i, check in enumerate(doc.get("checks", [])):
        for field in ("device", "model", "check"):
            if not isinstance(check.get(field), str) or not check[field]:
                raise ConfigError(f"{where}: checks[{i}] has no '{field}' name; {advice}")


# -- output -----------------------------------------------------------------------------------------


_HEADER = ("STATUS", "DEVICE", "MODEL", "CHECK", "BASELINE", "CURRENT", "CHANGE", "REASON")


def _change(c: Comparison) -> str:
    if c.difference is None:
        return "-"
    text = _signed(c.difference, c.unit)
    return text + (f" ({c.relative_change * 100:+.1f}%)" if c.relative_change is not None else "")


def render_table(comparisons: Sequence[Comparison]) -> str:
    """A fixed-width table in the order given (compare() puts what fails the gate first)."""
    if not comparisons:
        return "no checks in either file"
    rows = [(str(c.status), c.device, c.model, c.check, _fmt(c.baseline, c.unit), _fmt(c.current, c.unit),
             _change(c), c.reason) for c in comparisons]
    widths = [max(len(row[i]) for row in [_HEADER, *rows]) for i in range(len(_HEADER) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
             for row in [_HEADER, *rows]]
    return "\n".join(lines)


def tally(comparisons: Iterable[Comparison]) -> dict[str, int]:
    counts = dict.fromkeys((str(s) for s in Status), 0)
    for c in comparisons:
        counts[str(c.status)] += 1
    return counts


def tally_line(comparisons: Sequence[Comparison], strict: bool = False) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in tally(comparisons).items())
    mode = " (strict)" if strict else ""
    return (f"gate {'passed' if gate_passed(comparisons, strict) else 'FAILED'}{mode}: {counts} "
            f"({len(comparisons)} checks, {compared(comparisons)} compared with the baseline)")


def gate_report(comparisons: Sequence[Comparison], baseline: Path, current: Path,
                strict: bool = False) -> dict[str, Any]:
    """The comparison as a JSON document (schema hil.gate/1), for machines."""
    return {"schema": GATE_SCHEMA, "baseline": str(baseline), "current": str(current), "strict": strict,
            "passed": gate_passed(comparisons, strict), "exit_code": exit_code(comparisons, strict),
            "compared": compared(comparisons), "tally": tally(comparisons),
            "comparisons": [c.to_dict() for c in comparisons]}


# -- the command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `hil gate` (hil.cli is the one command line; this module only declares them)."""
    parser.add_argument("--baseline", type=Path, required=True, metavar="BASELINE.json",
                        help="the baseline summary.json to compare with (created by --update)")
    parser.add_argument("--current", type=Path, default=DEFAULT_CURRENT, metavar="SUMMARY.json",
                        help=f"this run's summary (default: {DEFAULT_CURRENT})")
    parser.add_argument("--update", action="store_true",
                        help="merge this run into the baseline file (refused when the gate fails, unless --force)")
    parser.add_argument("--force", action="store_true", help="with --update: update even when the gate fails")
    parser.add_argument("--tolerance", action="append", default=[], metavar="CHECK=VALUE",
                        help="override a tolerance: CHECK=10%% (relative) or CHECK=0.5 (absolute, in the check's "
                             "unit); CHECK may be a pattern like 'latency_*'; repeatable")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the comparison as JSON to OUT")
    parser.add_argument("--strict", action="store_true",
                        help="also fail when a check is not comparable, or when no check was compared at all "
                             "(recommended for release gates)")
    return parser


_CURRENT_ADVICE = "point --current at the reports/summary.json a hil test run wrote (run the suites first)"


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`hil gate` on parsed arguments; raises ConfigError on unusable input (the caller prints it, exit 2)."""
    out, err = out or sys.stdout, err or sys.stderr
    overrides = parse_tolerances(args.tolerance)
    current = load_summary(args.current, "current results", _CURRENT_ADVICE)
    baseline_path: Path = args.baseline
    baseline_advice = ("fix or delete it, or point --baseline at a summary.json (recreate it from a good run with "
                       "--update)")
    if baseline_path.exists():
        baseline = load_summary(baseline_path, "baseline", baseline_advice)
    elif args.update:
        baseline = empty_summary()
    else:
        raise ConfigError(f"baseline {baseline_path} does not exist; create it from this run with "
                          f"`hil gate --baseline {baseline_path} --current {args.current} --update`")
    comparisons = compare(baseline, current, overrides)
    if current.get("complete") is False:
        print(f"note: {args.current} is of a run that did not finish (complete: false)", file=out)
    print(render_table(comparisons), file=out)
    print(tally_line(comparisons, args.strict), file=out)
    if not args.strict and comparisons and not compared(comparisons):
        print("hil gate: warning: no check was compared with the baseline (all new or not comparable): this "
              "gate checked nothing; release gates should use --strict", file=err)
    if args.json is not None:
        write_json_atomic(args.json, gate_report(comparisons, baseline_path, args.current, args.strict))
    if args.update:
        _update(baseline_path, baseline, current, comparisons, args.force, out, err, args.strict)
    return exit_code(comparisons, args.strict)


def _update(path: Path, baseline: Mapping[str, Any], current: Mapping[str, Any], comparisons: Sequence[Comparison],
            force: bool, out: TextIO, err: TextIO, strict: bool = False) -> None:
    counts = tally(comparisons)
    failing = f"{counts[Status.REGRESSED]} regressed, {counts[Status.MISSING]} missing"
    if not gate_passed(comparisons, strict) and not force:
        print(f"hil gate: not updating {path}: the gate failed ({failing}); pass --force with --update to make "
              "this run the baseline anyway", file=err)
        return
    merged = merge_baseline(baseline, current)
    write_json_atomic(path, merged)
    written = len(current.get("checks") or [])
    kept = len(merged["checks"]) - written
    forced = f" despite the failed gate ({failing})" if not gate_passed(comparisons, strict) else ""
    print(f"baseline {path} updated{forced}: {written} checks from this run, {kept} kept from the baseline",
          file=out)
