"""Latency and accuracy statistics: pure functions of samples, standard library and numpy only.

This file is also shipped to devices next to the on-device runner (as `hil_stats.py`), which
imports it to stop a timed loop early. So it imports nothing from hil, nothing outside the standard
library and numpy, is written for Python 3.8+ (JetPack 5's interpreter; not tested there), and needs
numpy.typing only for type checkers (numpy < 1.20 has none). On the host it is imported as hil.stats,
which re-exports `__all__`: a public name added here goes into `__all__` too.

Percentiles are nearest rank: the q-th percentile of n samples is the k-th smallest with
k = ceil(q/100 * n), computed exactly for the decimal q the caller wrote. That is numpy's
`np.percentile(x, q, method="inverted_cdf")` except where numpy's float product n * (q/100) lands
just above an integer (numpy puts p99.9 of 1000 samples at rank 1000, we at rank 999).
MLPerf LoadGen's and onnxruntime_perf_test's summaries index `sorted[int(n * p)]` instead: the
same sample, except when n * p is a whole number, where they report one rank higher (for
n = 1000, p99 is the 991st sample there and the 990th here).

A percentile budget is decided with distribution-free confidence bounds from order statistics:
for any distribution, with true quantile xi_p = inf{x : F(x) >= p} and B ~ Binomial(n, p),
P(X_(k) < xi_p) <= P(B >= k) and P(X_(k) > xi_p) <= P(B <= k - 1). So the k-th smallest sample
is a one-sided upper bound at confidence c when P(B >= k) <= 1 - c, and a lower bound when
P(B <= k - 1) <= 1 - c. The only assumption is that the samples are independent draws from one
distribution: warm-up, throttling or drifting load break it, which is what the CV check is for.

Verdicts: PASS when the upper bound is within the limit (a wrong PASS has probability <= 1 - c),
FAIL when the lower bound is over it (a wrong FAIL has probability <= 1 - c), else INCONCLUSIVE.
Comparing the bounds with the limit is the same as counting the samples within it, which is what
`verdict_from_count` does in O(1) once the ranks are known; it is MLPerf LoadGen's Server-scenario
early-stopping test (n >= h_min(t) + t, with t samples over the limit, tolerance d = 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # numpy.typing needs numpy >= 1.20; devices may have older
    import numpy.typing as npt

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_CV_THRESHOLD",
    "DEFAULT_MIN_RELATIVE_ACCURACY",
    "SUMMARY_PERCENTILES",
    "AdaptiveStop",
    "Agreement",
    "Bounds",
    "LatencySummary",
    "Verdict",
    "agreement",
    "as_samples",
    "binomial_cdf",
    "binomial_sf",
    "bound_ranks",
    "coefficient_of_variation",
    "min_samples_for_lower_bound",
    "min_samples_for_upper_bound",
    "nearest_rank",
    "percentile",
    "percentile_bounds",
    "percentile_verdict",
    "relative_accuracy",
    "samples_to_decide",
    "summarize",
    "top1_accuracy",
    "verdict_from_count",
]

DEFAULT_CONFIDENCE = 0.99
DEFAULT_CV_THRESHOLD = 0.025  # trtexec-style "timings are unstable" warning level
DEFAULT_MIN_RELATIVE_ACCURACY = 0.99  # MLPerf: an int8 model keeps >= 99% of its fp32 parent's accuracy
SUMMARY_PERCENTILES = (50, 90, 95, 99)
# Half-width of the binomial window in standard deviations (+ a constant for tiny variances): by
# Bernstein's inequality the mass outside it is below 1e-25, far under any error rate anyone asks for.
_WINDOW_SDS = 40.0
_WINDOW_PAD = 40


class Verdict(str, Enum):  # noqa: UP042 - StrEnum is 3.11+, and this file must run on older device Pythons
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"

    def __str__(self) -> str:
        return self.value


# -- samples and nearest-rank percentiles ---------------------------------------------------------


def as_samples(samples: npt.ArrayLike) -> np.ndarray:
    """A non-empty 1-D float64 array of finite samples (a NaN latency is a runner bug, not a value)."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples must be finite numbers (found NaN or infinity)")
    return x


def _check_q(q: float, allow_100: bool = True) -> float:
    q = float(q)
    if not (0.0 < q < 100.0 or (allow_100 and q == 100.0)):
        raise ValueError(f"percentile q must be in (0, {'100]' if allow_100 else '100)'}, got {q!r}")
    return q


def _alpha(confidence: float) -> float:
    """The error rate 1 - c that a tail probability must not exceed, plus room for float noise:
    a tail equal to 1 - c on paper (one sample over the limit for p99 at 99%: 0.01) counts as within."""
    return (1.0 - _check_confidence(confidence)) * (1.0 + 1e-9)


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    # Below 0.5 the lower bound could sit above the upper bound and PASS and FAIL could both hold.
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence!r}")
    return confidence


def nearest_rank(n: int, q: float) -> int:
    """The 1-based rank of the q-th percentile of n samples: ceil(q/100 * n), at least 1.

    q is read as the decimal it prints as (99.9 is 999/10), so float noise never moves the rank.
    """
    if n < 1:
        raise ValueError("no samples")
    exact = Fraction(repr(_check_q(q)))
    return max(1, math.ceil(exact * n / 100))


def percentile(samples: npt.ArrayLike, q: float) -> float:
    """Nearest-rank q-th percentile, q in (0, 100] (100 is the maximum)."""
    x = as_samples(samples)
    k = nearest_rank(x.size, q)
    return float(np.partition(x, k - 1)[k - 1])


@dataclass(frozen=True)
class LatencySummary:
    count: int
    min_ms: float
    mean_ms: float
    std_ms: float  # sample standard deviation (ddof=1); 0 for a single sample
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    throughput_ips: float  # inferences per second
    cv: float  # coefficient of variation std/mean, as a fraction (0.025 is 2.5%)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def coefficient_of_variation(samples: npt.ArrayLike) -> float:
    """std (ddof=1) / mean; 0 for one sample or an all-zero sample."""
    x = as_samples(samples)
    mean = float(np.mean(x))
    if x.size < 2 or mean == 0.0:
        return 0.0
    return float(np.std(x, ddof=1)) / abs(mean)


def summarize(latencies_ms: npt.ArrayLike, batch_size: int = 1, wall_time_s: float | None = None) -> LatencySummary:
    """Summary of per-inference latencies in milliseconds.

    Throughput is batch_size * count / wall_time_s when the runner measured the loop's wall time
    (it then includes the loop's own overhead), else batch_size * count / sum(latencies).
    """
    x = as_samples(latencies_ms)
    if np.any(x < 0):
        raise ValueError("latencies must not be negative")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    s = np.sort(x)
    n = s.size

    def pick(q: float) -> float:
        return float(s[nearest_rank(n, q) - 1])

    seconds = float(wall_time_s) if wall_time_s is not None else float(np.sum(s)) / 1000.0
    throughput = batch_size * n / seconds if seconds > 0 else math.inf
    return LatencySummary(
        count=n, min_ms=float(s[0]), mean_ms=float(np.mean(s)), std_ms=float(np.std(s, ddof=1)) if n > 1 else 0.0,
        p50_ms=pick(50), p90_ms=pick(90), p95_ms=pick(95), p99_ms=pick(99), max_ms=float(s[-1]),
        throughput_ips=throughput, cv=coefficient_of_variation(s))


# -- the binomial distribution ---------------------------------------------------------------------


def _binomial_window(n: int, p: float) -> tuple[int, np.ndarray]:
    """(lo, pmf[k - lo] for k in lo..hi): Binomial(n, p) where its mass is, 0 < p < 1.

    The log-pmf is anchored once with lgamma and carried across the window by the ratio
    pmf(k+1)/pmf(k) = (n-k)/(k+1) * p/(1-p), summed in log space: stable, vectorised, and
    O(sqrt(n)) work, so n = 10^6 costs well under a millisecond. The window holds all the mass
    but < 1e-25, so normalising it cancels the anchor's rounding (lgamma(10^6) ~ 1.3e7 carries
    ~1e-9 of it) and leaves ~1e-12 from the summed steps.
    """
    mean = n * p
    half = _WINDOW_SDS * math.sqrt(n * p * (1.0 - p)) + _WINDOW_PAD
    lo = max(0, math.floor(mean - half))
    hi = min(n, math.ceil(mean + half))
    log_p, log_q = math.log(p), math.log1p(-p)
    anchor = math.lgamma(n + 1) - math.lgamma(lo + 1) - math.lgamma(n - lo + 1) + lo * log_p + (n - lo) * log_q
    k = np.arange(lo, hi, dtype=np.float64)
    steps = np.log((n - k) / (k + 1.0)) + (log_p - log_q)
    log_pmf = anchor + np.concatenate(([0.0], np.cumsum(steps)))
    pmf = np.exp(log_pmf - np.max(log_pmf))
    return lo, pmf / np.sum(pmf)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(B <= k) for B ~ Binomial(n, p), to ~1e-12 absolute (not relative: far tails read as 0); O(sqrt(n))."""
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p == 0.0 or p == 1.0:
        return 1.0 if p == 0.0 else 0.0
    lo, pmf = _binomial_window(n, p)
    if k < lo:
        return 0.0
    return min(1.0, float(np.sum(pmf[: k - lo + 1])))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(B >= k) for B ~ Binomial(n, p), summed from the upper tail (accurate where it is tiny)."""
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.0 or p == 1.0:
        return 0.0 if p == 0.0 else 1.0
    lo, pmf = _binomial_window(n, p)
    return min(1.0, float(np.sum(pmf[max(0, k - lo):])))


# -- distribution-free bounds on a percentile ------------------------------------------------------


@lru_cache(maxsize=4096)
def bound_ranks(n: int, q: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[int | None, int | None]:
    """(lower_rank, upper_rank), 1-based ranks of the order statistics that bound the q-th percentile.

    upper_rank is the smallest k with P(B >= k) <= 1 - c; lower_rank the largest k with
    P(B <= k - 1) <= 1 - c (B ~ Binomial(n, q/100)). Either is None when n is too small for it.
    Exact (up to ~1e-12 in the probabilities), cached, and O(sqrt(n)).
    """
    if n < 1:
        raise ValueError("no samples")
    p = _check_q(q, allow_100=False) / 100.0
    alpha = _alpha(confidence)
    lo, pmf = _binomial_window(n, p)
    hi = lo + pmf.size - 1
    cdf = np.cumsum(pmf)  # cdf[i] = P(B <= lo + i); below lo it is ~0
    sf = np.cumsum(pmf[::-1])[::-1]  # sf[i] = P(B >= lo + i); above hi it is 0
    # Largest j with P(B <= j) <= alpha; j = lo - 1 when none in the window (P(B <= lo - 1) ~ 0).
    j = lo + int(np.searchsorted(cdf, alpha, side="right")) - 1
    lower = j + 1 if j + 1 >= 1 else None
    # Smallest k with P(B >= k) <= alpha; k = hi + 1 when none in the window (P(B >= hi + 1) ~ 0).
    below = np.flatnonzero(sf <= alpha)
    k = lo + int(below[0]) if below.size else hi + 1
    upper = k if k <= n else None
    return lower, upper


@dataclass(frozen=True)
class Bounds:
    """One-sided confidence bounds on the q-th percentile, each at `confidence` on its own."""

    lower: float | None
    upper: float | None
    lower_rank: int | None
    upper_rank: int | None
    n: int
    q: float
    confidence: float


def percentile_bounds(samples: npt.ArrayLike, q: float, confidence: float = DEFAULT_CONFIDENCE) -> Bounds:
    """Distribution-free lower and upper confidence bounds on the q-th percentile (0 < q < 100).

    Together they form a two-sided interval at confidence 2c - 1 (98% for c = 0.99).
    """
    x = as_samples(samples)
    lower_rank, upper_rank = bound_ranks(x.size, float(q), float(confidence))
    ranks = [k - 1 for k in (lower_rank, upper_rank) if k is not None]
    part = np.partition(x, ranks) if ranks else x
    return Bounds(
        lower=float(part[lower_rank - 1]) if lower_rank is not None else None,
        upper=float(part[upper_rank - 1]) if upper_rank is not None else None,
        lower_rank=lower_rank, upper_rank=upper_rank, n=int(x.size), q=float(q), confidence=float(confidence))


def verdict_from_count(within: int, n: int, q: float, confidence: float = DEFAULT_CONFIDENCE) -> Verdict:
    """The verdict on "q-th percentile <= limit" from n samples of which `within` are <= limit.

    upper bound <= limit  <=>  within >= upper_rank;  lower bound > limit  <=>  within < lower_rank.
    """
    if not 0 <= within <= n:
        raise ValueError(f"need 0 <= within <= n, got within={within}, n={n}")
    lower_rank, upper_rank = bound_ranks(int(n), float(q), float(confidence))
    if upper_rank is not None and within >= upper_rank:
        return Verdict.PASS
    if lower_rank is not None and within < lower_rank:
        return Verdict.FAIL
    return Verdict.INCONCLUSIVE


def percentile_verdict(samples: npt.ArrayLike, q: float, limit: float,
                       confidence: float = DEFAULT_CONFIDENCE) -> Verdict:
    """PASS / FAIL / INCONCLUSIVE for "the q-th percentile is <= limit"; O(n), no sort."""
    x = as_samples(samples)
    return verdict_from_count(int(np.count_nonzero(x <= limit)), int(x.size), q, confidence)


def min_samples_for_upper_bound(q: float, confidence: float = DEFAULT_CONFIDENCE, exceedances: int = 0) -> int:
    """Smallest n for which the (exceedances+1)-th largest sample is an upper bound on the q-th percentile.

    With exceedances = 0 the bound is the sample maximum: P(max < xi_p) = p^n <= 1 - c, so
    n = ceil(ln(1 - c) / ln p). Below this no sample can PASS a q-th percentile budget:

        percentile   95% confidence   99% confidence
        p90                29               44
        p95                59               90
        p99               299              459

    MLPerf LoadGen asks for 662 queries before it reports a p99 early-stopping estimate at 99%
    confidence. 459 is LoadGen's own h_min(t=0) (its Server-scenario test passes 459 queries with
    none over the target, exactly as we do); 662 is h_min(t=1) + 1, the n at which a run may have
    one query over the limit and still pass, i.e. min_samples_for_upper_bound(99, 0.99, exceedances=1).
    LoadGen's SingleStream/MultiStream estimate insists on that one-outlier margin (it tests with t
    overlatency queries but reports the t-th largest latency, one rank more conservative than the
    order-statistic argument needs), so its floor is 662 where the exact bound starts at 459.
    """
    p = _check_q(q, allow_100=False) / 100.0
    alpha = _alpha(confidence)
    if exceedances < 0:
        raise ValueError(f"exceedances must be >= 0, got {exceedances}")

    def enough(n: int) -> bool:  # P(at most `exceedances` of n samples lie above xi_p) <= alpha
        return n > exceedances and binomial_cdf(exceedances, n, 1.0 - p) <= alpha

    hi = max(exceedances + 1, math.ceil(math.log(alpha) / math.log(p)))
    while not enough(hi):
        hi *= 2
    lo = exceedances  # not enough: no sample can bound anything with all of them discarded
    while hi - lo > 1:  # the condition is monotone in n
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


def min_samples_for_lower_bound(q: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """Smallest n for which the sample minimum is a lower bound on the q-th percentile: (1-p)^n <= 1 - c."""
    p = _check_q(q, allow_100=False) / 100.0
    alpha = _alpha(confidence)
    n = max(1, math.ceil(math.log(alpha) / math.log1p(-p)))
    while n > 1 and binomial_cdf(0, n - 1, p) <= alpha:  # float rounding in the logs, either way
        n -= 1
    while binomial_cdf(0, n, p) > alpha:
        n += 1
    return n


def samples_to_decide(samples: npt.ArrayLike, q: float, limit: float, confidence: float = DEFAULT_CONFIDENCE,
                      power: float = 0.8, max_total: int = 10**7) -> int | None:
    """About how many more samples would decide an INCONCLUSIVE percentile verdict; 0 if it is decided.

    A planning estimate, not a promise: it assumes the share of samples within the limit stays
    at what was seen, shrunk toward 1/2 as (within + 0.5)/(n + 1) so that a small clean sample does
    not promise too much, and returns the smallest total N (minus n) at which a fresh run of N
    samples would decide with probability `power`. None when the observed share sits on q/100
    (the percentile is at the limit: no sample size decides it) or N would exceed max_total.
    """
    x = as_samples(samples)
    n = int(x.size)
    within = int(np.count_nonzero(x <= limit))
    if verdict_from_count(within, n, q, confidence) is not Verdict.INCONCLUSIVE:
        return 0
    p = float(q) / 100.0
    rate = (within + 0.5) / (n + 1.0)
    if rate == p:
        return None

    def decides(total: int) -> bool:
        lower_rank, upper_rank = bound_ranks(total, float(q), float(confidence))
        if rate > p:
            return upper_rank is not None and binomial_sf(upper_rank, total, rate) >= power
        return lower_rank is not None and binomial_cdf(lower_rank - 1, total, rate) >= power

    lo, hi = n, max(2 * n, 16)
    while not decides(hi):
        if hi >= max_total:
            return None
        lo, hi = hi, min(2 * hi, max_total)
    while hi - lo > 1:  # the condition is monotone but for the binomial's discreteness: close enough
        mid = (lo + hi) // 2
        if decides(mid):
            hi = mid
        else:
            lo = mid
    return max(1, hi - n)


# -- adaptive stopping ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptiveStop:
    """Stop a timed loop as soon as a percentile budget is decided, without inflating the error rate.

    Deciding again after every batch and stopping at the first PASS would turn a 1% false-PASS
    rate into several percent (each look is another chance for a lucky sample). So the verdict is
    only taken at fixed looks (min_samples, then x growth, ..., max_samples), each on exactly the
    first `look` samples and at confidence 1 - (1 - c)/len(looks) (Bonferroni): the chance of any
    wrong verdict over the whole run stays <= 1 - c, and the bound reported at the stop is a valid
    c-confidence bound. A larger growth means fewer looks, each with more of the error budget,
    at the price of coarser stopping points.

        stop = AdaptiveStop(q=99, limit_ms=12.0)
        samples = []
        while (verdict := stop.decide(samples)) is None:
            samples.extend(run_batch(stop.next_look(len(samples)) - len(samples)))

    min_samples defaults to the smallest n whose maximum can PASS at the per-look confidence.
    """

    q: float
    limit_ms: float
    confidence: float = DEFAULT_CONFIDENCE
    min_samples: int | None = None
    max_samples: int = 10_000
    growth: float = 2.0

    def __post_init__(self) -> None:
        _check_q(self.q, allow_100=False)
        _check_confidence(self.confidence)
        if not self.growth > 1.0:
            raise ValueError(f"growth must be > 1, got {self.growth}")
        if self.min_samples is not None and not 1 <= self.min_samples <= self.max_samples:
            raise ValueError(f"need 1 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}")
        needed = min_samples_for_upper_bound(self.q, self.look_confidence)
        if self.max_samples < needed:
            raise ValueError(f"max_samples={self.max_samples} can never PASS p{self.q:g} at "
                             f"{self.look_confidence:.6g} confidence per look: that needs >= {needed} samples")

    def _schedule(self, first: int) -> tuple[int, ...]:
        looks = [min(first, self.max_samples)]
        while looks[-1] * self.growth < self.max_samples:
            looks.append(max(looks[-1] + 1, math.ceil(looks[-1] * self.growth)))
        # A last look just past the one before would spend a share of the error budget on a few
        # more samples: move that look to max_samples instead.
        if len(looks) > 1 and self.max_samples < looks[-1] * math.sqrt(self.growth):
            looks[-1] = self.max_samples
        elif looks[-1] < self.max_samples:
            looks.append(self.max_samples)
        return tuple(looks)

    @cached_property
    def looks(self) -> tuple[int, ...]:
        """The sample counts at which a verdict is taken."""
        if self.min_samples is not None:
            return self._schedule(self.min_samples)
        # Size the first look for the per-look confidence of the schedule that starts at the plain
        # minimum; starting later only removes looks, so that confidence stays sufficient.
        alpha = 1.0 - self.confidence
        plain = self._schedule(min_samples_for_upper_bound(self.q, self.confidence))
        return self._schedule(min_samples_for_upper_bound(self.q, 1.0 - alpha / len(plain)))

    @property
    def look_confidence(self) -> float:
        """The confidence of each look's bounds (Bonferroni over the looks)."""
        return 1.0 - (1.0 - self.confidence) / len(self.looks)

    def next_look(self, n: int) -> int | None:
        """The sample count of the next look at or after n (None past the last one)."""
        for look in self.looks:
            if look >= n:
                return look
        return None

    def last_look(self, n: int) -> int | None:
        """The largest look <= n: the samples a verdict at n is taken on."""
        done = [look for look in self.looks if look <= n]
        return done[-1] if done else None

    def decide(self, samples: npt.ArrayLike) -> Verdict | None:
        """PASS or FAIL once decided, INCONCLUSIVE when the last look did not decide, None to keep going."""
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        look = self.last_look(int(x.size))
        if look is None:
            return None
        verdict = percentile_verdict(x[:look], self.q, self.limit_ms, self.look_confidence)
        if verdict is Verdict.INCONCLUSIVE and look < self.looks[-1]:
            return None
        return verdict


# -- accuracy ---------------------------------------------------------------------------------------


def _rows(outputs: npt.ArrayLike, what: str) -> np.ndarray:
    a = np.asarray(outputs, dtype=np.float64)
    if a.ndim < 2 or a.shape[0] == 0:
        raise ValueError(f"{what} must be (samples, classes...) scores, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def top1_accuracy(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Share of samples whose arg-max score is the label. scores: (N, C) scores or (N,) predicted labels."""
    s = np.asarray(scores)
    y = np.asarray(labels).reshape(-1)
    predicted = s.reshape(-1) if s.ndim == 1 else _rows(s, "scores").argmax(axis=1)
    if predicted.shape[0] != y.shape[0] or y.size == 0:
        raise ValueError(f"need one label per sample: {predicted.shape[0]} predictions, {y.shape[0]} labels")
    return float(np.mean(predicted == y))


@dataclass(frozen=True)
class Agreement:
    """How closely device outputs follow the host reference outputs, per sample then aggregated."""

    top1_agreement: float  # share of samples with the same arg-max class
    max_abs_error: float  # over every element
    cosine_similarity: float  # mean over samples
    min_cosine_similarity: float  # the worst sample
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(device_outputs: npt.ArrayLike, reference_outputs: npt.ArrayLike) -> Agreement:
    """Compare (N, C...) device outputs with the reference outputs of the same inputs.

    Cosine similarity of two all-zero rows is 1, of a zero and a non-zero row 0. Non-finite device
    outputs propagate as NaN, which fails any budget on them.
    """
    d = _rows(device_outputs, "device outputs")
    r = _rows(reference_outputs, "reference outputs")
    if d.shape != r.shape:
        raise ValueError(f"device outputs {d.shape} and reference outputs {r.shape} differ in shape")
    dot = np.sum(d * r, axis=1)
    norms = np.linalg.norm(d, axis=1) * np.linalg.norm(r, axis=1)
    both_zero = ~np.any(d, axis=1) & ~np.any(r, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return Agreement(
        top1_agreement=float(np.mean(d.argmax(axis=1) == r.argmax(axis=1))),
        max_abs_error=float(np.max(np.abs(d - r))), cosine_similarity=float(np.mean(cosine)),
        min_cosine_similarity=float(np.min(cosine)), count=int(d.shape[0]))


def relative_accuracy(int8_accuracy: float, fp32_accuracy: float) -> float:
    """int8 accuracy as a fraction of its fp32 parent's (MLPerf accepts >= 0.99)."""
    if not fp32_accuracy > 0:
        raise ValueError(f"fp32 accuracy must be > 0, got {fp32_accuracy}")
    return float(int8_accuracy) / float(fp32_accuracy)
