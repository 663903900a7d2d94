"""Unit tests for hil/ondevice/stats.py (hil.stats): percentiles, binomial bounds, verdict error rates, accuracy.

The error-rate tests draw many synthetic runs from distributions whose true p99 is known
(vectorised: one array of trials x samples per case) and count verdicts with the library's own
decision function; each rate is also compared with its exact binomial value, so a test that passes
only by luck, or a generator that does not match its CDF, shows up.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil import stats
from hil.ondevice import stats as ondevice_stats
from hil.stats import (
    AdaptiveStop,
    Verdict,
    agreement,
    binomial_cdf,
    binomial_sf,
    bound_ranks,
    min_samples_for_lower_bound,
    min_samples_for_upper_bound,
    nearest_rank,
    percentile,
    percentile_bounds,
    percentile_verdict,
    relative_accuracy,
    samples_to_decide,
    summarize,
    top1_accuracy,
    verdict_from_count,
)

STATS_PY = Path(ondevice_stats.__file__)  # the file itself; hil/stats.py only re-exports it
PHI = NormalDist()

# -- distributions with a known p99 -----------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    name: str
    draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]
    cdf: Callable[[float], float]
    lo: float
    hi: float

    def quantile(self, p: float) -> float:
        lo, hi = self.lo, self.hi
        for _ in range(200):  # bisection to float precision
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.cdf(mid) < p else (lo, mid)
        return hi


def _erlang3_cdf(y: float) -> float:
    return 0.0 if y <= 0 else 1.0 - math.exp(-y) * (1.0 + y + y * y / 2.0)


DISTS = [
    # Latency-like: 8 ms median, a moderate right tail.
    Dist("lognormal", lambda g, s: g.lognormal(math.log(8.0), 0.25, s),
         lambda x: PHI.cdf((math.log(x) - math.log(8.0)) / 0.25) if x > 0 else 0.0, 0.0, 100.0),
    # A heavy relative tail: p99 is 4.6x the mean.
    Dist("exponential", lambda g, s: g.exponential(2.0, s), lambda x: 1.0 - math.exp(-x / 2.0) if x > 0 else 0.0,
         0.0, 100.0),
    # A floor (the model's compute) plus queueing-like jitter.
    Dist("shifted_gamma", lambda g, s: 4.0 + g.gamma(3.0, 0.5, s), lambda x: _erlang3_cdf((x - 4.0) / 0.5),
         4.0, 100.0),
    # 10% of inferences in a slow mode (a cache miss, a frequency drop): p99 sits in the slow mode.
    Dist("bimodal", lambda g, s: np.where(g.random(s) < 0.9, g.normal(6.0, 0.3, s), g.normal(9.0, 0.5, s)),
         lambda x: 0.9 * PHI.cdf((x - 6.0) / 0.3) + 0.1 * PHI.cdf((x - 9.0) / 0.5), 0.0, 100.0),
]
DIST_IDS = [d.name for d in DISTS]


def _verdict_counts(within: np.ndarray, n: int, q: float = 99, confidence: float = 0.99) -> Counter[Verdict]:
    """The library's verdict for every trial, from how many of its n samples are within the limit."""
    values, counts = np.unique(within, return_counts=True)
    tally: Counter[Verdict] = Counter()
    for value, count in zip(values, counts, strict=True):
        tally[verdict_from_count(int(value), n, q, confidence)] += int(count)
    return tally


def _rates(dist: Dist, seed: int, trials: int, n: int, limit: float) -> dict[Verdict, float]:
    x = dist.draw(np.random.default_rng(seed), (trials, n))
    within = np.count_nonzero(x <= limit, axis=1)
    tally = _verdict_counts(within, n)
    return {v: tally[v] / trials for v in Verdict}


def _close(measured: float, expected: float, trials: int) -> bool:
    """Within 4 binomial standard errors (plus a hair for tiny rates)."""
    return abs(measured - expected) <= 4 * math.sqrt(max(expected * (1 - expected), 1e-6) / trials) + 1e-3


@pytest.mark.parametrize("dist", DISTS, ids=DIST_IDS)
def test_generators_match_their_cdf_at_p99(dist: Dist) -> None:
    """The error-rate tests are only as good as the 'true p99' they use."""
    p99 = dist.quantile(0.99)
    assert dist.cdf(p99) == pytest.approx(0.99, abs=1e-9)
    x = dist.draw(np.random.default_rng(1), (400_000,))
    assert np.mean(x <= p99) == pytest.approx(0.99, abs=4 * math.sqrt(0.99 * 0.01 / x.size))


def test_lognormal_p99_is_the_closed_form() -> None:
    assert DISTS[0].quantile(0.99) == pytest.approx(math.exp(math.log(8.0) + 0.25 * PHI.inv_cdf(0.99)), rel=1e-9)


# -- nearest-rank percentiles -----------------------------------------------------------------------


@pytest.mark.parametrize("q", [50, 90, 95, 99, 100])
def test_percentile_matches_numpy_inverted_cdf(q: float) -> None:
    rng = np.random.default_rng(3)
    for n in range(1, 600):
        x = rng.normal(10.0, 2.0, n)
        assert percentile(x, q) == np.percentile(x, q, method="inverted_cdf"), n


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=400), st.integers(1, 1000))
def test_percentile_is_numpy_inverted_cdf_but_for_float_noise(values: list[float], tenths: int) -> None:
    """Same as numpy, except where numpy's float n*(q/100) lands just above a whole rank."""
    q = tenths / 10
    x = np.array(values)
    n = x.size
    exact = Fraction(tenths, 10) * n / 100
    numpy_noise = exact.denominator == 1 and n * (q / 100) != int(exact)
    expected = np.sort(x)[int(exact) - 1] if numpy_noise else np.percentile(x, q, method="inverted_cdf")
    assert percentile(x, q) == expected


def test_nearest_rank_reads_q_as_written() -> None:
    assert nearest_rank(1000, 99.9) == 999  # numpy's float arithmetic says 1000
    assert np.percentile(np.arange(1, 1001), 99.9, method="inverted_cdf") == 1000
    assert nearest_rank(100, 7) == 7  # 100 * 0.07 = 7.000000000000001 in floats
    assert nearest_rank(1, 0.1) == 1 and nearest_rank(3, 100) == 3


def test_nearest_rank_vs_onnxruntime_perf_test_indexing() -> None:
    """onnxruntime_perf_test and LoadGen print sorted[int(n * p)]: one rank higher when n*p is whole."""
    x = np.arange(1.0, 1001.0)
    assert percentile(x, 99) == 990.0
    assert x[int(1000 * 0.99)] == 991.0
    assert percentile(x[:999], 99) == x[: 999][int(999 * 0.99)] == 990.0  # n*p = 989.01: they agree


@pytest.mark.parametrize("bad", [0, -1, 100.5, float("nan")])
def test_percentile_rejects_q_outside_0_100(bad: float) -> None:
    with pytest.raises(ValueError, match="percentile q"):
        percentile([1.0, 2.0], bad)


@pytest.mark.parametrize("samples", [[], [1.0, float("nan")], [float("inf")]])
def test_samples_must_be_finite_and_present(samples: list[float]) -> None:
    with pytest.raises(ValueError, match="samples"):
        percentile(samples, 50)


# -- summary ----------------------------------------------------------------------------------------


def test_summary_of_1_to_100_ms() -> None:
    x = np.random.default_rng(0).permutation(np.arange(1.0, 101.0))
    s = summarize(x)
    assert (s.count, s.min_ms, s.p50_ms, s.p90_ms, s.p95_ms, s.p99_ms, s.max_ms) == (100, 1, 50, 90, 95, 99, 100)
    assert s.mean_ms == 50.5
    assert s.std_ms == pytest.approx(np.std(x, ddof=1))
    assert s.cv == pytest.approx(s.std_ms / 50.5)
    assert s.throughput_ips == pytest.approx(100 / 5.050)  # back-to-back: count / total seconds
    assert set(s.to_dict()) == {"count", "min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
                                "max_ms", "throughput_ips", "cv"}


def test_summary_throughput_from_wall_time_and_batch() -> None:
    s = summarize([2.0] * 50, batch_size=8, wall_time_s=0.125)
    assert s.throughput_ips == pytest.approx(8 * 50 / 0.125)
    assert (s.std_ms, s.cv) == (0.0, 0.0)


def test_summary_of_one_sample() -> None:
    s = summarize([4.0])
    assert (s.count, s.p99_ms, s.std_ms, s.cv, s.throughput_ips) == (1, 4.0, 0.0, 0.0, 250.0)


def test_summary_rejects_negative_latencies() -> None:
    with pytest.raises(ValueError, match="negative"):
        summarize([1.0, -0.5])


# -- the binomial distribution ----------------------------------------------------------------------


def _exact_cdf(k: int, n: int, p: Fraction) -> float:
    return float(sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1)))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 200), st.data(), st.integers(1, 999))
def test_binomial_cdf_and_sf_are_exact(n: int, data: st.DataObject, thousandths: int) -> None:
    k = data.draw(st.integers(-1, n + 1))
    p = Fraction(thousandths, 1000)
    exact = _exact_cdf(min(max(k, -1), n), n, p) if k >= 0 else 0.0
    assert binomial_cdf(k, n, float(p)) == pytest.approx(exact, rel=1e-9, abs=1e-12)
    assert binomial_sf(k + 1, n, float(p)) == pytest.approx(1.0 - exact, rel=1e-9, abs=1e-12)


def test_binomial_for_a_million_trials() -> None:
    n, p = 10**6, 0.99
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    assert binomial_cdf(int(mean), n, p) == pytest.approx(0.5, abs=0.01)
    assert binomial_cdf(int(mean - 2.326 * sd), n, p) == pytest.approx(0.01, rel=0.1)  # normal approximation
    for k in (985_000, 989_000, 990_000, 990_500, 991_000):
        assert binomial_cdf(k, n, p) + binomial_sf(k + 1, n, p) == pytest.approx(1.0, abs=1e-12)
    assert binomial_sf(n, n, p) == 0.0  # p^n = 10^-4365: a far tail reads as 0


# -- bounds ------------------------------------------------------------------------------------------


def _log_pmf(j: int, n: int, p: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p) + (n - j) * math.log1p(-p)


def _tail_ge(k: int, n: int, p: float) -> float:
    """P(B >= k), summed term by term: independent of the library's window and recurrence."""
    return math.fsum(math.exp(_log_pmf(j, n, p)) for j in range(max(k, 0), n + 1))


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 1500), st.sampled_from([50, 90, 95, 99, 99.9, 37.5]), st.sampled_from([0.9, 0.95, 0.99, 0.999]))
def test_bound_ranks_are_the_extreme_valid_order_statistics(n: int, q: float, confidence: float) -> None:
    p, alpha, eps = q / 100, 1 - confidence, 1e-9
    lower, upper = bound_ranks(n, q, confidence)
    if upper is None:  # not even the maximum is a bound
        assert _tail_ge(n, n, p) > alpha - eps
    else:  # X_(upper) is a bound and X_(upper-1) is not
        assert _tail_ge(upper, n, p) <= alpha + eps
        assert upper == 1 or _tail_ge(upper - 1, n, p) > alpha - eps
    below = lambda k: 1.0 - _tail_ge(k, n, p)  # P(B <= k - 1)  # noqa: E731
    if lower is None:
        assert below(1) > alpha - eps
    else:
        assert below(lower) <= alpha + eps
        assert lower == n or below(lower + 1) > alpha - eps


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=3000),
       st.sampled_from([50, 90, 95, 99]), st.sampled_from([0.9, 0.95, 0.99]))
def test_bounds_bracket_the_sample_percentile(values: list[float], q: float, confidence: float) -> None:
    b = percentile_bounds(values, q, confidence)
    point = percentile(values, q)
    assert b.lower is None or b.lower <= point
    assert b.upper is None or point <= b.upper
    assert b.lower_rank is None or b.upper_rank is None or b.lower_rank < b.upper_rank
    assert b.n == len(values)
    # More confidence, wider bounds (or none).
    wider = percentile_bounds(values, q, 1 - (1 - confidence) / 10)
    assert wider.lower is None or (b.lower is not None and wider.lower <= b.lower)
    assert b.upper is None or wider.upper is None or wider.upper >= b.upper
    assert wider.upper is None or b.upper is not None


def test_bounds_are_order_statistics_of_the_sample() -> None:
    x = np.random.default_rng(5).lognormal(2.0, 0.3, 700)
    b = percentile_bounds(x, 99, 0.99)
    s = np.sort(x)
    assert (b.lower_rank, b.upper_rank) == bound_ranks(700, 99, 0.99) == (686, 699)
    assert (b.lower, b.upper) == (s[685], s[698])


def test_bounds_need_enough_samples() -> None:
    b = percentile_bounds(np.ones(100), 99)
    assert b.upper is None and b.upper_rank is None and b.lower == 1.0
    assert percentile_bounds([3.0], 50).lower is None


@pytest.mark.parametrize(("q", "confidence"), [(100, 0.99), (0, 0.99), (99, 0.5), (99, 1.0), (99, 0.2)])
def test_bounds_reject_degenerate_arguments(q: float, confidence: float) -> None:
    with pytest.raises(ValueError):
        percentile_bounds([1.0, 2.0], q, confidence)


def test_bounds_for_a_million_samples_are_fast() -> None:
    import time

    x = np.random.default_rng(6).exponential(1.0, 10**6)
    started = time.perf_counter()
    lower, upper = bound_ranks(10**6, 99, 0.98765)  # a confidence nobody cached
    b = percentile_bounds(x, 99, 0.98765)
    assert time.perf_counter() - started < 1.0
    assert (b.lower_rank, b.upper_rank) == (lower, upper)
    true_p99 = -math.log(0.01)
    assert b.lower < true_p99 < b.upper  # type: ignore[operator]
    assert lower is not None and upper is not None and upper - lower < 600  # +-2.3 sd of Bin(1e6, .99)


# -- minimum sample counts ---------------------------------------------------------------------------

MIN_SAMPLES = {(90, 0.95): 29, (90, 0.99): 44, (95, 0.95): 59, (95, 0.99): 90, (99, 0.95): 299, (99, 0.99): 459}


@pytest.mark.parametrize(("key", "n"), MIN_SAMPLES.items(), ids=[f"p{q}@{c}" for q, c in MIN_SAMPLES])
def test_min_samples_for_upper_bound(key: tuple[float, float], n: int) -> None:
    q, confidence = key
    assert min_samples_for_upper_bound(q, confidence) == n
    assert n == math.ceil(math.log(1 - confidence) / math.log(q / 100))
    assert bound_ranks(n, q, confidence)[1] == n  # the maximum is the bound
    assert bound_ranks(n - 1, q, confidence)[1] is None


def test_mlperf_662_is_the_one_outlier_minimum() -> None:
    """LoadGen's p99 floor (662) and p90 floor (64) at 99%: the second-largest sample becomes a bound."""
    assert min_samples_for_upper_bound(99, 0.99, exceedances=1) == 662
    assert min_samples_for_upper_bound(90, 0.99, exceedances=1) == 64
    assert bound_ranks(662, 99, 0.99)[1] == 661
    assert bound_ranks(661, 99, 0.99)[1] == 661  # 661 samples: the maximum, not yet the second largest
    assert min_samples_for_upper_bound(99, 0.99, exceedances=0) == 459


def test_min_samples_for_lower_bound() -> None:
    assert min_samples_for_lower_bound(99, 0.99) == 1  # one sample over the limit already says FAIL at 99%
    assert min_samples_for_lower_bound(50, 0.99) == 7  # 0.5^7 < 1%
    assert bound_ranks(7, 50, 0.99)[0] == 1 and bound_ranks(6, 50, 0.99)[0] is None


# -- verdict error rates: the heart of it -----------------------------------------------------------


@pytest.mark.parametrize("dist", DISTS, ids=DIST_IDS)
def test_false_pass_rate_when_the_true_p99_is_over_the_limit(dist: Dist) -> None:
    """Limit = 0.98 x true p99: every PASS is wrong; at 99% confidence they must stay under ~1%."""
    n, trials, limit = 1000, 2000, 0.98 * dist.quantile(0.99)
    rates = _rates(dist, seed=11, trials=trials, n=n, limit=limit)
    assert rates[Verdict.PASS] <= 0.015
    upper = bound_ranks(n, 99, 0.99)[1]
    assert upper is not None
    assert _close(rates[Verdict.PASS], binomial_sf(upper, n, dist.cdf(limit)), trials)


@pytest.mark.parametrize("dist", DISTS, ids=DIST_IDS)
def test_false_pass_rate_is_tight_on_the_limit(dist: Dist) -> None:
    """Limit = true p99 and n = 459: a PASS is (just) wrong, and happens 0.99^459 = 0.99% of the time."""
    n, trials, limit = 459, 20_000, dist.quantile(0.99)
    rates = _rates(dist, seed=12, trials=trials, n=n, limit=limit)
    expected = 0.99**459
    assert expected == pytest.approx(0.00992, abs=1e-5)
    assert rates[Verdict.PASS] <= 0.015
    assert _close(rates[Verdict.PASS], expected, trials)


@pytest.mark.parametrize("dist", DISTS, ids=DIST_IDS)
def test_false_fail_rate_when_the_true_p99_is_under_the_limit(dist: Dist) -> None:
    n, trials, limit = 1000, 5000, dist.quantile(0.99)  # on the limit is within it
    rates = _rates(dist, seed=13, trials=trials, n=n, limit=limit)
    lower = bound_ranks(n, 99, 0.99)[0]
    assert lower is not None
    expected = binomial_cdf(lower - 1, n, 0.99)
    assert expected <= 0.01
    assert rates[Verdict.FAIL] <= 0.015
    assert _close(rates[Verdict.FAIL], expected, trials)


# Power at n = 2000 depends only on how much mass lies above the limit: 1 - F(1.2 p99) is 0.11% for
# the lognormal but 0.40% for the exponential (whose p99 is 4.6x its mean), where 2000 samples
# PASS about 70% of the time.
POWER_FLOOR = {"lognormal": 0.99, "exponential": 0.6, "shifted_gamma": 0.99, "bimodal": 0.99}


@pytest.mark.parametrize("dist", DISTS, ids=DIST_IDS)
def test_power_when_the_true_p99_is_well_under_the_limit(dist: Dist) -> None:
    n, trials, limit = 2000, 1000, 1.2 * dist.quantile(0.99)
    rates = _rates(dist, seed=14, trials=trials, n=n, limit=limit)
    upper = bound_ranks(n, 99, 0.99)[1]
    assert upper is not None
    assert rates[Verdict.PASS] >= POWER_FLOOR[dist.name]
    assert rates[Verdict.FAIL] == 0
    assert _close(rates[Verdict.PASS], binomial_sf(upper, n, dist.cdf(limit)), trials)


@pytest.mark.parametrize("dist", DISTS, ids=DIST_IDS)
def test_too_few_samples_are_inconclusive(dist: Dist) -> None:
    """200 samples cannot show a p99 is under any limit at 99%: never PASS, mostly INCONCLUSIVE."""
    rates = _rates(dist, seed=15, trials=1000, n=200, limit=1.2 * dist.quantile(0.99))
    assert rates[Verdict.PASS] == 0
    assert rates[Verdict.INCONCLUSIVE] >= 0.95


def test_percentile_verdict_is_the_bounds_against_the_limit() -> None:
    rng = np.random.default_rng(16)
    for _ in range(200):
        x = rng.lognormal(0.0, 0.4, int(rng.integers(1, 1500)))
        limit = float(rng.uniform(1.5, 4.0))
        b = percentile_bounds(x, 99)
        expected = (Verdict.PASS if b.upper is not None and b.upper <= limit
                    else Verdict.FAIL if b.lower is not None and b.lower > limit else Verdict.INCONCLUSIVE)
        assert percentile_verdict(x, 99, limit) is expected


def test_verdict_from_count_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="within"):
        verdict_from_count(11, 10, 99)


# -- how many more samples --------------------------------------------------------------------------


def test_samples_to_decide_is_zero_once_decided() -> None:
    x = np.random.default_rng(17).lognormal(0.0, 0.1, 1000)
    assert percentile_verdict(x, 99, 10.0) is Verdict.PASS
    assert samples_to_decide(x, 99, 10.0) == 0
    assert samples_to_decide(x, 99, 0.5) == 0  # FAIL


def test_samples_to_decide_meets_its_own_promise() -> None:
    """All 300 samples within the limit: the estimate is where a run decides with ~80% probability."""
    x = np.full(300, 5.0)
    more = samples_to_decide(x, 99, 10.0)
    assert more is not None and more > 459 - 300
    rate = 300.5 / 301  # the shrunk share within the limit the estimate plans with
    total = 300 + more
    upper = bound_ranks(total, 99, 0.99)[1]
    assert upper is not None and binomial_sf(upper, total, rate) >= 0.8
    fewer = total - max(1, more // 10)
    upper_fewer = bound_ranks(fewer, 99, 0.99)[1]
    assert upper_fewer is None or binomial_sf(upper_fewer, fewer, rate) < 0.8


def test_samples_to_decide_grows_as_the_percentile_nears_the_limit() -> None:
    x = np.random.default_rng(18).lognormal(0.0, 0.25, 300)
    p99 = float(np.exp(0.25 * PHI.inv_cdf(0.99)))
    estimates = [samples_to_decide(x, 99, factor * p99) for factor in (1.6, 1.3, 1.15)]
    assert all(e is not None for e in estimates)
    assert estimates == sorted(estimates)  # type: ignore[type-var]


def test_samples_to_decide_gives_up_on_the_limit() -> None:
    x = np.concatenate([np.full(99, 1.0), [2.0]])  # share within 1.5 after shrinking: 99.5/101 < .99
    assert samples_to_decide(x, 99, 1.5, max_total=2000) is None


def test_samples_to_decide_for_a_likely_fail() -> None:
    """5 of 300 over the limit leans to FAIL without deciding it; the estimate plans the FAIL."""
    x = np.concatenate([np.full(295, 1.0), np.full(5, 3.0)])
    assert percentile_verdict(x, 99, 2.0) is Verdict.INCONCLUSIVE
    more = samples_to_decide(x, 99, 2.0)
    assert more is not None and more > 0
    total, rate = 300 + more, 295.5 / 301
    lower = bound_ranks(total, 99, 0.99)[0]
    assert lower is not None and binomial_cdf(lower - 1, total, rate) >= 0.8


# -- adaptive stopping ------------------------------------------------------------------------------


def test_adaptive_stop_default_schedule() -> None:
    stop = AdaptiveStop(q=99, limit_ms=12.0)
    assert stop.looks == (619, 1238, 2476, 4952, 10_000)
    assert stop.look_confidence == pytest.approx(1 - 0.01 / 5)
    assert min_samples_for_upper_bound(99, stop.look_confidence) <= stop.looks[0]


def test_adaptive_stop_decides_only_at_looks_on_the_first_samples() -> None:
    stop = AdaptiveStop(q=99, limit_ms=10.0, min_samples=500, max_samples=2000)
    assert stop.looks == (500, 1000, 2000)
    clean = np.full(1000, 5.0)
    assert stop.decide(clean[:499]) is None
    assert stop.next_look(499) == 500 and stop.next_look(501) == 1000 and stop.next_look(2001) is None
    assert stop.decide(clean[:500]) is None  # 500 clean samples: not enough at 99.67% per look
    assert stop.decide(clean) is Verdict.PASS
    # Samples after the last look do not count until the next one: a late outlier changes nothing.
    assert stop.decide(np.concatenate([clean, np.full(50, 99.0)])) is Verdict.PASS
    slow = np.full(500, 20.0)
    assert stop.decide(slow) is Verdict.FAIL
    borderline = np.where(np.arange(2000) % 125 == 0, 20.0, 5.0)  # 0.8% over the limit, spread out
    assert stop.decide(borderline[:1000]) is None
    assert stop.decide(borderline) is Verdict.INCONCLUSIVE


def test_adaptive_stop_does_not_waste_a_look_just_before_the_last() -> None:
    assert AdaptiveStop(q=99, limit_ms=1.0, min_samples=600, max_samples=5000).looks == (600, 1200, 2400, 5000)
    assert AdaptiveStop(q=99, limit_ms=1.0, min_samples=600, max_samples=5200).looks == (600, 1200, 2400, 5200)
    assert AdaptiveStop(q=99, limit_ms=1.0, min_samples=600, max_samples=7000).looks == (600, 1200, 2400, 4800,
                                                                                          7000)
    assert AdaptiveStop(q=99, limit_ms=1.0, min_samples=1000, max_samples=1000).looks == (1000,)
    assert AdaptiveStop(q=99, limit_ms=1.0, min_samples=1000, max_samples=1000).look_confidence == 0.99


def test_adaptive_stop_rejects_a_maximum_that_can_never_pass() -> None:
    with pytest.raises(ValueError, match="can never PASS"):
        AdaptiveStop(q=99, limit_ms=5.0, max_samples=400)
    with pytest.raises(ValueError, match="growth"):
        AdaptiveStop(q=99, limit_ms=5.0, growth=1.0)


def test_adaptive_stop_keeps_the_false_pass_rate() -> None:
    """Stopping at the first decided look, over the whole run, still errs <= 1% when p99 = limit.

    Deciding at the full 99% after every ~10% more samples instead (what a naive loop does) errs
    several times as often (5% over a 10,000-sample run); the Bonferroni split over the looks
    keeps the whole run under 1%.
    """
    dist, trials = DISTS[0], 2000
    stop = AdaptiveStop(q=99, limit_ms=dist.quantile(0.99), max_samples=5000)
    x = dist.draw(np.random.default_rng(19), (trials, stop.looks[-1]))
    within = np.cumsum(x <= stop.limit_ms, axis=1, dtype=np.int32)
    verdicts = np.full(trials, None, dtype=object)
    for look in stop.looks:
        open_ = np.flatnonzero(verdicts == None)  # noqa: E711 - elementwise on an object array
        for i in open_:
            v = verdict_from_count(int(within[i, look - 1]), look, 99, stop.look_confidence)
            if v is not Verdict.INCONCLUSIVE or look == stop.looks[-1]:
                verdicts[i] = v
    for i in range(20):  # the vectorised replay is what decide() does
        assert stop.decide(x[i]) is verdicts[i]
    false_pass = np.mean(verdicts == Verdict.PASS)
    assert false_pass <= 0.01


# -- accuracy ---------------------------------------------------------------------------------------


def test_top1_accuracy_from_scores_or_labels() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 0])
    assert top1_accuracy(scores, labels) == 0.75
    assert top1_accuracy(np.array([1, 0, 1, 0]), labels) == 0.75
    with pytest.raises(ValueError, match="one label per sample"):
        top1_accuracy(scores, labels[:3])


def test_agreement_of_identical_and_perturbed_outputs() -> None:
    rng = np.random.default_rng(20)
    ref = rng.normal(size=(64, 10))
    same = agreement(ref, ref)
    assert (same.top1_agreement, same.max_abs_error, same.count) == (1.0, 0.0, 64)
    assert same.cosine_similarity == pytest.approx(1.0) and same.min_cosine_similarity == pytest.approx(1.0)
    scaled = agreement(2 * ref, ref)  # same direction, same classes, different values
    assert scaled.top1_agreement == 1.0 and scaled.cosine_similarity == pytest.approx(1.0)
    assert scaled.max_abs_error == pytest.approx(np.max(np.abs(ref)))
    flipped = agreement(-ref, ref)
    assert flipped.cosine_similarity == pytest.approx(-1.0) and flipped.top1_agreement < 0.2
    assert set(same.to_dict()) == {"top1_agreement", "max_abs_error", "cosine_similarity",
                                   "min_cosine_similarity", "count"}


def test_agreement_with_zero_and_orthogonal_rows() -> None:
    a = agreement(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    assert a.cosine_similarity == pytest.approx(1 / 3)  # 1 (both zero), 0 (orthogonal), 0 (one zero)
    assert a.min_cosine_similarity == 0.0


def test_agreement_propagates_nan_outputs() -> None:
    a = agreement(np.array([[np.nan, 1.0]]), np.array([[0.0, 1.0]]))
    assert math.isnan(a.max_abs_error)


def test_agreement_rejects_mismatched_or_flat_outputs() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        agreement(np.zeros((4, 10)), np.zeros((4, 9)))
    with pytest.raises(ValueError, match="samples, classes"):
        agreement(np.zeros(4), np.zeros(4))


def test_relative_accuracy() -> None:
    assert relative_accuracy(0.95, 0.96) == pytest.approx(0.98958, abs=1e-5)
    with pytest.raises(ValueError, match="fp32"):
        relative_accuracy(0.5, 0.0)


# -- shipped to devices: standalone ------------------------------------------------------------------


# Its imports and its Python 3.8 grammar: tests/test_ondevice.py, for every file in hil/ondevice/.


def test_hil_stats_re_exports_the_on_device_module() -> None:
    """hil.stats, the host's import path, is hil/ondevice/stats.py's __all__ (the same objects); __all__ leaves
    none of that module's public names out, so a function added there is importable from hil.stats."""
    tree = ast.parse(STATS_PY.read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    defined |= {target.id for node in tree.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    assert set(ondevice_stats.__all__) == {name for name in defined if not name.startswith("_")}
    assert stats.__all__ == ondevice_stats.__all__
    assert all(getattr(stats, name) is getattr(ondevice_stats, name) for name in ondevice_stats.__all__)


def test_stats_runs_as_a_lone_file(tmp_path: Path) -> None:
    """As the runner uses it: copied next to it as hil_stats.py, with hil itself not importable."""
    (tmp_path / "hil_stats.py").write_text(STATS_PY.read_text())
    code = ("import sys; sys.modules['hil'] = None\n"
            "import hil_stats as s\n"
            "b = s.percentile_bounds([1.0] * 500, 99)\n"
            "stop = s.AdaptiveStop(99, 2.0)\n"
            "print(b.lower, b.upper, s.percentile_verdict([1.0] * 500, 99, 2.0), stop.decide([1.0] * 700))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.0", "1.0", "PASS", "PASS"]
