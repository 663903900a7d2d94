"""Unit tests for hil/report/plots.py: every figure is a valid, small, deterministic 800 x 450 PNG, for
ordinary and awkward samples alike, and the CDF's steps meet each guide at the nearest-rank percentile."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from matplotlib.image import imread

from hil.budgets import BudgetSpec, check_budget, check_percentile
from hil.report import plots
from hil.report.plots import (
    PercentileMark,
    accuracy_vs_noise_png,
    latency_cdf_png,
    latency_histogram_png,
    percentile_marks,
)
from hil.stats import Verdict, percentile
from hil.testing import percentile_verdicts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LATENCY_PLOTS = [latency_histogram_png, latency_cdf_png]


def assert_png(data: bytes) -> None:
    assert isinstance(data, bytes)
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) < 150_000
    image = imread(io.BytesIO(data), format="png")
    assert image.shape[:2] == (450, 800)


def latencies(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.lognormal(np.log(1.6), 0.08, n)


def mark(x: np.ndarray, q: float, limit: float) -> PercentileMark:
    return PercentileMark.from_measurement(check_percentile(x, q, limit))


# -- latency figures -----------------------------------------------------------------------------


@pytest.mark.parametrize("plot", LATENCY_PLOTS)
def test_latency_plot_with_budgets(plot):
    x = latencies()
    assert_png(plot(x, title="resnet8 on jetson-01", budgets=[mark(x, 99, 2.0), mark(x, 50, 1.55)]))


@pytest.mark.parametrize("plot", LATENCY_PLOTS)
@pytest.mark.parametrize("samples", [[3.2], [1.7] * 500, [0.0, 0.0, 0.0], [0.001] * 10],
                         ids=["one", "500-equal", "all-zero", "tiny-equal"])
def test_latency_plot_single_and_equal_samples(plot, samples):
    x = np.array(samples)
    assert_png(plot(x, title="edge", budgets=[mark(x, 99, 2.0)]))
    assert_png(plot(x, title="edge", budgets=[]))


@pytest.mark.parametrize("plot", LATENCY_PLOTS)
def test_latency_plot_without_budgets(plot):
    assert_png(plot(latencies(), title="no budgets"))
    assert_png(plot(list(latencies(50)), title="a list", budgets=()))


@pytest.mark.parametrize("plot", LATENCY_PLOTS)
def test_latency_plot_with_huge_outliers(plot):
    x = np.concatenate([latencies(10_000), [250.0, 40.0, 5_000.0]])
    assert_png(plot(x, title="stalls", budgets=[mark(x, 99, 3.0), mark(x, 99.9, 2.5)]))


@pytest.mark.parametrize("plot", LATENCY_PLOTS)
def test_latency_plot_inconclusive_without_upper_bound(plot):
    x = latencies(100)
    m = mark(x, 99, 1.9)  # 100 samples are too few for any upper bound on p99
    assert m.verdict is Verdict.INCONCLUSIVE and m.upper_bound is None
    assert_png(plot(x, title="too few", budgets=[m]))


@pytest.mark.parametrize("plot", LATENCY_PLOTS)
def test_latency_plot_handbuilt_marks(plot):
    x = latencies(300)
    marks = [PercentileMark(quantile=99, limit=100.0, value=1.9),  # far budget: log x
             PercentileMark(quantile=100, limit=2.5, value=float(x.max()), verdict="PASS"),
             PercentileMark(quantile=90, limit=1.7, value=1.75, lower_bound=1.72, verdict=Verdict.FAIL)]
    assert_png(plot(x, title="hand-built", budgets=marks))


@pytest.mark.parametrize("plot", LATENCY_PLOTS)
def test_latency_plot_is_deterministic(plot):
    x = latencies()
    budgets = [mark(x, 99, 2.0)]
    assert plot(x, title="t", budgets=budgets) == plot(x, title="t", budgets=budgets)


@pytest.mark.parametrize("plot", LATENCY_PLOTS)
@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_latency_plot_rejects_bad_samples(plot, bad):
    with pytest.raises(ValueError):
        plot(np.array(bad), title="bad")


def test_png_has_no_software_stamp():
    data = latency_histogram_png(latencies(50), title="t")
    assert b"Software" not in data and b"matplotlib" not in data.lower()


def test_threads_draw_the_same_bytes():
    x = latencies()
    budgets = [mark(x, 99, 2.0)]
    expected = [f(x, title="t", budgets=budgets) for f in LATENCY_PLOTS]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: LATENCY_PLOTS[i % 2](x, title="t", budgets=budgets), range(4)))
    assert got == expected * 2


def test_no_pyplot():
    """Figures never go through pyplot, so nothing picks a backend or opens a display (run in a fresh
    interpreter: another test in this process may have imported pyplot)."""
    code = ("import sys, numpy as np; "
            "from hil.report.plots import latency_histogram_png, latency_cdf_png, accuracy_vs_noise_png; "
            "x = np.arange(1.0, 50.0); latency_histogram_png(x, title='t'); latency_cdf_png(x, title='t'); "
            "accuracy_vs_noise_png([0, 10], [0.5, 0.9], title='t', level_label='SNR (dB)', floor=0.8); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


# -- the CDF's steps -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 100, 1000, 50_000])
def test_ecdf_steps_meet_guides_at_nearest_rank(n):
    x = np.round(latencies(n, seed=n), 3)  # rounding makes ties
    u, below = plots._ecdf_steps(np.sort(x), [50, 90, 99, 99.9])
    assert below[-1] == n and np.all(np.diff(u) > 0) and np.all(np.diff(below) > 0)
    for q in (50, 90, 95, 99, 99.9, 100):
        crossing = u[np.flatnonzero(below * 100 >= q * n)[0]]  # first step with F >= q/100
        if n <= plots._MAX_STEPS or q in (50, 90, 99, 99.9, 100):
            assert crossing == percentile(x, q)


def test_ecdf_steps_are_thinned_for_large_samples_but_keep_the_tail():
    x = latencies(300_000, seed=3)
    s = np.sort(x)
    u, below = plots._ecdf_steps(s, [99.9])
    assert u.size < 15_000
    assert np.array_equal(u[-50:], s[-50:])  # the 50 slowest samples are each their own step
    assert u[np.flatnonzero(below * 1000 >= 999 * s.size)[0]] == percentile(x, 99.9)


def test_histogram_bins_hold_every_sample():
    x = np.concatenate([latencies(5000), [250.0]])
    for log in (False, True):
        edges = plots._bin_edges(x, log)
        assert edges[0] == x.min() and edges[-1] == x.max()
        assert plots._MIN_BINS <= edges.size - 1 <= plots._MAX_BINS
        assert np.histogram(x, bins=edges)[0].sum() == x.size


# -- accuracy against noise ------------------------------------------------------------------------


def test_accuracy_vs_noise():
    data = accuracy_vs_noise_png([40, 30, 20, 10, 5, 0], [0.95, 0.94, 0.91, 0.82, 0.6, 0.31],
                                 title="resnet8 int8: top-1 vs sensor noise", level_label="SNR (dB)", floor=0.9)
    assert_png(data)


@pytest.mark.parametrize("levels, accuracies, floor", [
    ([20.0], [1.0], None),  # one point, at the top
    ([0.0, 0.0], [0.0, 0.0], 0.5),  # repeated level, at the bottom
    ([0.1, 0.05, 0.2, 0.0], [0.7, 0.8, 0.5, 1.0], 1.0),  # unsorted levels (noise sigma), floor at 1
    (np.linspace(0, 1, 40), np.linspace(1, 0, 40), 0.0),  # too many points to label
])
def test_accuracy_vs_noise_edge_cases(levels, accuracies, floor):
    assert_png(accuracy_vs_noise_png(levels, accuracies, title="t", level_label="noise sigma", floor=floor))


@pytest.mark.parametrize("levels, accuracies, floor", [
    ([], [], None), ([1.0, 2.0], [0.5], None), ([1.0], [93.0], None), ([float("nan")], [0.5], None),
    ([1.0], [0.5], 90.0),
])
def test_accuracy_vs_noise_rejects_bad_input(levels, accuracies, floor):
    with pytest.raises(ValueError):
        accuracy_vs_noise_png(levels, accuracies, title="t", level_label="x", floor=floor)


# -- marks -----------------------------------------------------------------------------------------


def test_mark_from_measurement():
    x = latencies(1000)
    m = check_percentile(x, 99.9, 3.0)
    pm = PercentileMark.from_measurement(m)
    assert (pm.quantile, pm.limit, pm.value, pm.upper_bound, pm.lower_bound, pm.verdict, pm.confidence) == (
        99.9, 3.0, m.value, m.upper_bound, m.lower_bound, m.verdict, m.confidence)
    assert pm.name == "p99.9"
    assert PercentileMark.from_measurement(check_percentile(x, 95, 3.0, name="custom"), quantile=95).quantile == 95
    with pytest.raises(ValueError, match="quantile"):
        PercentileMark.from_measurement(check_percentile(x, 95, 3.0, name="custom"))


def test_percentile_marks_picks_the_latency_percentiles():
    x = latencies(1000)
    spec = BudgetSpec(latency_p50_ms=1.7, latency_p99_ms=2.0, memory_mib=100.0, throughput_ips=10.0)
    marks = percentile_marks([*percentile_verdicts(x, spec.percentile_limits, None),
                              check_budget("memory_mib", 50.0, 100.0)])
    assert [m.quantile for m in marks] == [50.0, 99.0]
    assert marks[1].limit == 2.0 and marks[1].value == percentile(x, 99)


@pytest.mark.parametrize("kwargs", [
    {"quantile": 0, "limit": 1.0, "value": 1.0}, {"quantile": 101, "limit": 1.0, "value": 1.0},
    {"quantile": 99, "limit": float("nan"), "value": 1.0}, {"quantile": 99, "limit": 1.0, "value": 1.0,
                                                            "upper_bound": float("inf")},
    {"quantile": 99, "limit": 1.0, "value": 1.0, "verdict": "MAYBE"},
])
def test_mark_validation(kwargs):
    with pytest.raises(ValueError):
        PercentileMark(**kwargs)
