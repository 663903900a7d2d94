"""Unit tests for hil/budgets.py: measurements that read like OpenHTF, verdicts, assertions, specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hil.artifacts import BUDGET_KEYS, parse_manifest
from hil.budgets import (
    AdaptiveStop,
    BudgetExceeded,
    BudgetSpec,
    Context,
    InconclusiveMeasurement,
    Measurement,
    Verdict,
    assert_budget,
    budgets_for_tags,
    check_cv,
    check_max,
    check_min,
    check_percentile,
    check_relative_accuracy,
    combine,
)
from hil.errors import ConfigError, HilError, InfraError, ProductFailure
from hil.stats import percentile_bounds, percentile_verdict

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = Context(device="orin-nano-emu", model="digits-mlp", version="1.0.0", sha256="ab" * 32,
                  onnxruntime="1.20.1", emulated=True)


def _latencies(n: int, seed: int = 0, median: float = 8.0, sigma: float = 0.01) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(median), sigma, n)


# -- measurements ------------------------------------------------------------------------------------


def test_measurement_reads_like_openhtf() -> None:
    m = Measurement("latency_p99_ms", 10.3, "ms", 12.0, "<=", Verdict.PASS, confidence=0.99, lower_bound=9.9,
                    upper_bound=11.2, samples=700)
    assert str(m) == "latency_p99_ms <= 12.0: measured 10.3 ms (99% upper bound 11.2 ms, n=700): PASS"
    assert m.bound == 11.2 and m.passed


def test_fail_and_inconclusive_name_the_bounds_they_rest_on() -> None:
    fail = Measurement("latency_p99_ms", 13.4, "ms", 12.0, "<=", Verdict.FAIL, confidence=0.99, lower_bound=12.7,
                       upper_bound=14.1, samples=700)
    assert str(fail) == "latency_p99_ms <= 12.0: measured 13.4 ms (99% lower bound 12.7 ms, n=700): FAIL"
    assert fail.bound == 12.7
    unsure = Measurement("latency_p99_ms", 11.5, "ms", 12.0, "<=", Verdict.INCONCLUSIVE, confidence=0.99,
                         lower_bound=10.9, upper_bound=None, samples=300, more_samples=900)
    assert str(unsure) == ("latency_p99_ms <= 12.0: measured 11.5 ms (99% lower bound 10.9 ms, upper bound none yet, "
                           "n=300; about 900 more samples would likely decide): INCONCLUSIVE")


def test_single_value_measurements() -> None:
    assert str(check_max("cold_start_ms", 412.25, 500, "ms")) == "cold_start_ms <= 500.0: measured 412.2 ms: PASS"
    assert check_max("memory_mib", 300.0, 300.0, "MiB").verdict is Verdict.PASS  # on the limit is within it
    assert check_max("memory_mib", 300.5, 300.0, "MiB").verdict is Verdict.FAIL
    assert str(check_min("accuracy_top1", 0.93125, 0.93)) == "accuracy_top1 >= 0.93: measured 0.9313: PASS"
    assert check_min("accuracy_top1", 0.92, 0.93).verdict is Verdict.FAIL
    assert check_min("accuracy_top1", float("nan"), 0.93).verdict is Verdict.FAIL
    assert check_max("cold_start_ms", float("nan"), 500, "ms").verdict is Verdict.FAIL


def test_measurement_to_dict_is_json() -> None:
    m = check_percentile(_latencies(700), 99, 12.0)
    data = json.loads(json.dumps(m.to_dict()))
    assert data["verdict"] == "PASS" and data["text"] == str(m)
    assert data["samples"] == 700 and data["confidence"] == 0.99 and data["name"] == "latency_p99_ms"


# -- percentile checks -------------------------------------------------------------------------------


def test_check_percentile_pass_fail_inconclusive() -> None:
    x = _latencies(700)
    passed = check_percentile(x, 99, 12.0)
    assert passed.verdict is Verdict.PASS and passed.upper_bound is not None and passed.upper_bound <= 12.0
    failed = check_percentile(x, 99, 7.0)
    assert failed.verdict is Verdict.FAIL and failed.lower_bound is not None and failed.lower_bound > 7.0
    too_few = check_percentile(x[:200], 99, 12.0)
    assert too_few.verdict is Verdict.INCONCLUSIVE and too_few.upper_bound is None
    assert too_few.more_samples is not None and too_few.more_samples >= 459 - 200
    assert "more samples would likely decide" in str(too_few)
    assert passed.more_samples is None and failed.more_samples is None


def test_check_percentile_agrees_with_the_stats_verdict() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        x = rng.lognormal(0.0, 0.3, int(rng.integers(1, 1500)))
        limit, q = float(rng.uniform(1.2, 3.0)), float(rng.choice([50, 90, 95, 99]))
        m = check_percentile(x, q, limit)
        assert m.verdict is percentile_verdict(x, q, limit)
        b = percentile_bounds(x, q)
        assert (m.lower_bound, m.upper_bound, m.samples) == (b.lower, b.upper, x.size)
        assert m.value == pytest.approx(np.percentile(x, q, method="inverted_cdf"))


def test_check_percentile_names_and_sequential_looks() -> None:
    x = _latencies(1000)
    assert check_percentile(x, 95, 12.0).name == "latency_p95_ms"
    assert check_percentile(x, 99.9, 12.0).name == "latency_p99.9_ms"
    m = check_percentile(x, 99, 12.0, looks=5)
    plain = check_percentile(x, 99, 12.0)
    assert m.confidence == 0.99 and "sequential, 5 looks" in str(m)
    assert m.upper_bound is not None and plain.upper_bound is not None and m.upper_bound >= plain.upper_bound
    with pytest.raises(ValueError, match="looks"):
        check_percentile(x, 99, 12.0, looks=0)


def test_the_hosts_verdict_is_what_the_devices_stop_decided() -> None:
    from hil.testing import percentile_verdicts

    stop = AdaptiveStop(q=99, limit_ms=12.0)
    x = _latencies(stop.looks[0] + 10)
    assert stop.decide(x) is Verdict.PASS
    (m,) = percentile_verdicts(x, {99.0: 12.0}, stop)
    assert m.verdict is Verdict.PASS and m.samples == stop.looks[0]  # the samples after the look do not count
    assert f"{len(stop.looks)} looks" in str(m)
    (early,) = percentile_verdicts(x[:10], {99.0: 12.0}, stop)  # before the first look: all, undecided
    assert early.verdict is Verdict.INCONCLUSIVE


# -- noise -------------------------------------------------------------------------------------------


def test_check_cv_is_a_warning_never_a_fail() -> None:
    quiet = check_cv(_latencies(500, sigma=0.01))
    assert quiet.verdict is Verdict.PASS and quiet.name == "latency_cv_pct" and quiet.limit == 2.5
    noisy = check_cv(_latencies(500, sigma=0.2))
    assert noisy.verdict is Verdict.INCONCLUSIVE and "too noisy" in str(noisy)
    assert check_cv(_latencies(500, sigma=0.2), threshold=0.5).verdict is Verdict.PASS


def test_combine_turns_a_noisy_fail_into_inconclusive() -> None:
    x = _latencies(700, sigma=0.2)
    noisy = check_cv(x)
    failed = check_percentile(x, 99, 9.0)
    assert failed.verdict is Verdict.FAIL
    combined = combine(failed, noisy)
    assert combined.verdict is Verdict.INCONCLUSIVE
    assert "would FAIL but timings are too noisy" in str(combined) and "> 2.5%" in str(combined)
    passed = check_percentile(x, 99, 30.0)
    kept = combine(passed, noisy)
    assert kept.verdict is Verdict.PASS and "noisy timings" in kept.note
    quiet = check_cv(_latencies(700, sigma=0.01))
    assert combine(failed, quiet) is failed


def test_relative_accuracy_check() -> None:
    m = check_relative_accuracy(0.94, 0.96)
    assert m.verdict is Verdict.FAIL and m.limit == 0.99 and "int8 0.94 vs fp32 0.96" in str(m)
    assert check_relative_accuracy(0.955, 0.96).verdict is Verdict.PASS
    assert check_relative_accuracy(0.90, 0.96, min_ratio=0.9).verdict is Verdict.PASS


# -- assertions --------------------------------------------------------------------------------------


def test_assert_budget_returns_a_pass() -> None:
    m = check_max("cold_start_ms", 100.0, 500.0, "ms")
    assert assert_budget(m, CONTEXT) is m


def test_a_fail_is_a_product_failure_that_says_everything() -> None:
    m = check_percentile(_latencies(700), 99, 7.0)
    with pytest.raises(BudgetExceeded) as info:
        assert_budget(m, CONTEXT)
    assert isinstance(info.value, ProductFailure)
    message = str(info.value)
    for needed in (str(m), "orin-nano-emu (emulated)", "digits-mlp 1.0.0", "ab" * 32, "onnxruntime 1.20.1",
                   "99% lower bound", "n=700", "FAIL"):
        assert needed in message
    assert info.value.measurement is m and info.value.context is CONTEXT


def test_inconclusive_is_neither_a_product_failure_nor_infrastructure() -> None:
    m = check_percentile(_latencies(100), 99, 12.0)
    with pytest.raises(InconclusiveMeasurement) as info:
        assert_budget(m, CONTEXT)
    assert isinstance(info.value, HilError)
    assert not isinstance(info.value, ProductFailure | InfraError)
    assert "more samples would likely decide" in str(info.value) and "orin-nano-emu" in str(info.value)


def test_assert_budget_without_context() -> None:
    with pytest.raises(BudgetExceeded, match=r"^budget exceeded: memory_mib <= 200.0: measured 250.0 MiB: FAIL$"):
        assert_budget(check_max("memory_mib", 250.0, 200.0, "MiB"))


def test_real_device_context_is_not_labelled_emulated() -> None:
    real = Context("orin-01", "digits-cnn", "2.1.0", "cd" * 32, "1.17.3", emulated=False)
    assert "emulated" not in str(real) and str(real).startswith("device orin-01, model digits-cnn 2.1.0")


# -- budget specs ------------------------------------------------------------------------------------


def test_budget_keys_are_the_manifests() -> None:
    assert set(BudgetSpec.KEYS) == BUDGET_KEYS


def test_budgets_for_tags_strictest_wins() -> None:
    tables = {
        "jetson": {"latency_p99_ms": 5.0, "memory_mib": 300.0, "accuracy_top1": 0.93, "throughput_ips": 100.0},
        "orin": {"latency_p99_ms": 4.0, "memory_mib": 400.0, "accuracy_top1": 0.95, "throughput_ips": 50.0},
        "rpi": {"latency_p99_ms": 20.0},
    }
    spec = budgets_for_tags(tables, ["jetson", "orin", "untabled"])
    assert spec.limits() == {"latency_p99_ms": 4.0, "memory_mib": 300.0, "accuracy_top1": 0.95,
                             "throughput_ips": 100.0}
    assert spec.source("latency_p99_ms") == "orin" and spec.source("memory_mib") == "jetson"
    assert spec.source("accuracy_top1") == "orin" and spec.source("throughput_ips") == "jetson"
    assert spec.percentile_limits == {99.0: 4.0}
    assert budgets_for_tags(tables, ["orin", "jetson"]).limits() == spec.limits()  # order does not matter


def test_budgets_for_tags_with_nothing_that_applies() -> None:
    spec = budgets_for_tags({"rpi": {"latency_p99_ms": 20.0}}, ["jetson"])
    assert not spec and spec.limits() == {} and spec.source("latency_p99_ms") is None


def test_budgets_for_tags_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"budgets.jetson: unknown budget 'latency_p42_ms'"):
        budgets_for_tags({"jetson": {"latency_p42_ms": 3.0}}, ["jetson"])


def test_budgets_from_a_demo_manifest() -> None:
    path = ROOT / "fixtures" / "models" / "digits-mlp-int8" / "manifest.toml"
    manifest = parse_manifest(path.read_text(), path)
    for tag, table in manifest.budgets.items():
        spec = budgets_for_tags(manifest.budgets, [tag])
        assert spec.limits() == table and all(spec.source(k) == tag for k in table)


def test_noise_cannot_excuse_a_median_over_the_limit() -> None:
    rng = np.random.default_rng(11)
    # Every sample is slow (median 10 ms) and noisy: the limit of 5 ms is missed by the whole distribution.
    slow = 10.0 + rng.exponential(5.0, 1000)
    latency = check_percentile(slow, 99, 5.0)
    cv = check_cv(slow)
    assert latency.verdict is Verdict.FAIL and cv.verdict is Verdict.INCONCLUSIVE
    assert combine(latency, cv).verdict is Verdict.INCONCLUSIVE  # without the samples: noise wins
    kept = combine(latency, cv, slow)
    assert kept.verdict is Verdict.FAIL and "median" in kept.note
    # A fast median with a stalled tail over the limit stays INCONCLUSIVE: stalls may be the lab's.
    stalled = np.concatenate([np.full(980, 1.0), np.full(20, 50.0)])
    tail = check_percentile(stalled, 99, 5.0)
    assert tail.verdict is Verdict.FAIL
    assert combine(tail, check_cv(stalled), stalled).verdict is Verdict.INCONCLUSIVE
