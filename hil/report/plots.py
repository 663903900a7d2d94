"""PNG figures for reports: latency histogram, latency CDF with its tail, accuracy against sensor noise.

Each function returns the bytes of one PNG (8 x 4.5 in at 100 dpi, 800 x 450 px) and touches no
global state: figures are `matplotlib.figure.Figure` objects drawn by their own `FigureCanvasAgg`,
never pyplot, so they are safe from threads and xdist workers and never open a display. The PNGs
carry no software or time stamp, so the same inputs give the same bytes on one machine.

Percentiles are nearest rank, as in hil.stats: the CDF is the empirical F(x) = #(samples <= x) / n,
drawn as a right-continuous step, so the p99 guide meets the curve exactly at the reported p99.
A budget is drawn as a solid line, the measured percentile dashed (histogram) or as a dot on the
curve (CDF), and its confidence bounds dotted (upper) and dash-dotted (lower); the legend sits
outside the plot so it never covers data.

    marks = percentile_marks(latency.percentiles)  # a hil.testing.Latency's verdicts
    png = latency_histogram_png(latencies_ms, title="resnet8 on jetson-01", budgets=marks)
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter

from hil import checks
from hil.budgets import format_value
from hil.stats import Verdict, as_samples, nearest_rank

if TYPE_CHECKING:
    import numpy.typing as npt

    from hil.budgets import Measurement

__all__ = ["PercentileMark", "accuracy_vs_noise_png", "latency_cdf_png", "latency_histogram_png", "percentile_marks"]

FIGSIZE = (8.0, 4.5)  # inches
DPI = 100
_PNG_METADATA: dict[str, Any] = {"Software": None}  # no version stamp; Agg writes no time stamp
_WIDE_RANGE = 10.0  # log-scale x when the largest value is at least this many times the smallest
_VISIBLE_RATIO = 100.0  # log-scale counts when the smallest non-empty bin would be < 1% of the tallest
_MAX_BINS = 120
_MIN_BINS = 10
_MAX_STEPS = 10_000  # ECDFs with more distinct values are thinned to steps no one could tell apart

_SAMPLES_COLOR = "#9aa5b1"
_CURVE_COLOR = "#22262b"
_MARK_COLORS = ("#1f77b4", "#d95f02", "#7b3294", "#1b9e77", "#e7298a", "#a6761d")
_FAIL_COLOR = "#c62828"
_PASS_COLOR = "#2e7d32"
_LEGEND = {"fontsize": 8, "title_fontsize": 8, "framealpha": 0.95}

_QUANTILE_IN_NAME = re.compile(r"(?:^|_)p(\d+(?:\.\d+)?)(?:_|$)")


@dataclass(frozen=True)
class PercentileMark:
    """One percentile budget to draw: its limit, the measured percentile and its confidence bounds.

    quantile is in percent, as everywhere in hil.stats (99 for p99). value, upper_bound and
    lower_bound are in the samples' unit (ms); a bound is None when there were too few samples for
    it. confidence (optional) only labels the bounds.
    """

    quantile: float
    limit: float
    value: float
    upper_bound: float | None = None
    lower_bound: float | None = None
    verdict: Verdict = Verdict.INCONCLUSIVE
    confidence: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < float(self.quantile) <= 100.0:
            raise ValueError(f"quantile is a percentage in (0, 100], got {self.quantile!r}")
        for name in ("limit", "value", "upper_bound", "lower_bound"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(float(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        object.__setattr__(self, "verdict", Verdict(self.verdict))

    @property
    def name(self) -> str:
        """'p99', 'p99.9'."""
        return f"p{float(self.quantile):g}"

    @classmethod
    def from_measurement(cls, m: Measurement, quantile: float | None = None) -> PercentileMark:
        """The mark of a percentile Measurement (check_percentile's); quantile defaults to the one
        in its name (latency_p99_ms -> 99)."""
        if quantile is None:
            match = _QUANTILE_IN_NAME.search(m.name)
            if match is None:
                raise ValueError(f"no percentile in measurement name {m.name!r}: pass quantile=")
            quantile = float(match.group(1))
        return cls(quantile=float(quantile), limit=float(m.limit), value=float(m.value), upper_bound=m.upper_bound,
                   lower_bound=m.lower_bound, verdict=m.verdict, confidence=m.confidence)


def percentile_marks(measurements: Iterable[Measurement]) -> list[PercentileMark]:
    """Marks for the latency percentile measurements among `measurements` (e.g. budgets.evaluate's)."""
    return [PercentileMark.from_measurement(m, q) for m in measurements if (q := checks.quantile(m.name)) is not None]


# -- public figures ----------------------------------------------------------------------------------


def latency_histogram_png(latencies_ms: npt.ArrayLike, *, title: str, budgets: Sequence[PercentileMark] = ()) -> bytes:
    """A histogram of the latencies with each budget, measured percentile and confidence bound marked.

    The x axis turns logarithmic (log-spaced bins) when the values span a factor of 10 or more, and
    the counts when rare bins would be too short to see, so a single stall is never invisible.
    """
    x = as_samples(latencies_ms)
    fig, ax = _figure()
    lo, hi = _extent(x, budgets)
    log_x = lo > 0 and hi / lo >= _WIDE_RANGE
    edges = _bin_edges(x, log_x)
    lo, hi = min(lo, float(edges[0])), max(hi, float(edges[-1]))  # a lone bin is wider than the samples
    counts, _ = np.histogram(x, bins=edges)
    nonzero = counts[counts > 0]
    log_y = bool(nonzero.max() >= _VISIBLE_RATIO * nonzero.min())
    ax.stairs(counts, edges, fill=True, color=_SAMPLES_COLOR, baseline=0.5 if log_y else 0.0,
              label=f"samples ({x.size:,})")
    ax.stairs(counts, edges, color="#5b6670", linewidth=0.6, baseline=0.5 if log_y else 0.0)
    if log_y:
        ax.set_yscale("log")
        ax.set_ylim(0.7, nonzero.max() * 2.0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_ylabel("samples per bin (log scale)")
    else:
        ax.set_ylim(0, nonzero.max() * 1.08)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("samples per bin")
    _set_latency_x(ax, lo, hi, log_x)
    ax.set_xlabel("latency (ms)" + (", log scale" if log_x else ""))
    handles = [ax.get_legend_handles_labels()[0][0]]
    for i, mark in enumerate(budgets):
        handles += _vertical_marks(ax, mark, _MARK_COLORS[i % len(_MARK_COLORS)], value_style="dashed")
    ax.grid(True, axis="y", which="major", alpha=0.3)
    ax.set_title(title, fontsize=11, loc="left")
    _legend(fig, handles, _summary(x))
    return _png(fig)


def latency_cdf_png(latencies_ms: npt.ArrayLike, *, title: str, budgets: Sequence[PercentileMark] = ()) -> bytes:
    """The empirical CDF (left) and its tail as the share of slower samples on a log scale (right).

    Each budgeted quantile gets a horizontal guide (F = 0.99 on the left, 1% slower on the right)
    that meets the step curve at the nearest-rank percentile, where a dot marks the measured value.
    The tail panel starts at the median (or the leftmost mark) so p99 and beyond are readable.
    """
    x = as_samples(latencies_ms)
    s = np.sort(x)
    n = s.size
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    body, tail = fig.subplots(1, 2, width_ratios=(1.0, 1.15))
    lo, hi = _extent(x, budgets)
    log_x = lo > 0 and hi / lo >= _WIDE_RANGE
    u, below = _ecdf_steps(s, [m.quantile for m in budgets])
    left, right = _padded(lo, hi, log_x)
    xs = np.concatenate(([left], u, [right]))
    cdf = np.concatenate(([0], below, [n])) / n
    slower = np.concatenate(([n], n - below, [0])) / n
    body.step(xs, cdf, where="post", color=_CURVE_COLOR, linewidth=1.4,
              label=f"empirical CDF ({n:,} sample{'s' if n != 1 else ''})")
    tail.step(xs, slower, where="post", color=_CURVE_COLOR, linewidth=1.4)

    median = float(s[max(1, math.ceil(n / 2)) - 1])
    tail_lo = min([median, *(v for m in budgets for v in _mark_values(m))])
    if tail_lo >= hi:  # all samples equal and no mark above them
        tail_lo = lo
    guide_levels = [1.0 - m.quantile / 100.0 for m in budgets if m.quantile < 100]
    y_floor = 10 ** math.floor(math.log10(min([0.5 / n, *(g / 2.0 for g in guide_levels if g > 0)])))

    handles = [body.get_legend_handles_labels()[0][0]]
    for i, mark in enumerate(budgets):
        color = _MARK_COLORS[i % len(_MARK_COLORS)]
        handles += _vertical_marks(body, mark, color, value_style=None)
        _vertical_marks(tail, mark, color, value_style=None)
        q = mark.quantile / 100.0
        for ax, level in ((body, q), (tail, 1.0 - q)):
            if level <= 0:
                continue
            ax.axhline(level, color=color, linewidth=0.8, alpha=0.6, zorder=1)
            ax.annotate(mark.name, (0.01, level), xycoords=("axes fraction", "data"), xytext=(0, 2),
                        textcoords="offset points", fontsize=7, color=color, va="bottom")
        body.plot([mark.value], [q], "o", color=color, markersize=5, zorder=4)
        if q < 1:
            tail.plot([mark.value], [1.0 - q], "o", color=color, markersize=5, zorder=4)

    _set_latency_x(body, lo, hi, log_x, max_ticks=5)
    body.set_ylim(-0.02, 1.02)
    body.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    body.set_ylabel("samples at or below (F)")
    body.set_xlabel("latency (ms)" + (", log scale" if log_x else ""))
    body.set_title("all samples", fontsize=9)

    tail_log_x = tail_lo > 0 and hi / tail_lo >= _WIDE_RANGE
    _set_latency_x(tail, tail_lo, hi, tail_log_x, max_ticks=5)
    tail.set_yscale("log")
    tail.set_ylim(y_floor, 1.3)
    tail.yaxis.set_major_locator(LogLocator(base=10, numticks=12))
    tail.yaxis.set_major_formatter(FuncFormatter(_percent_tick))
    tail.yaxis.set_minor_formatter(NullFormatter())
    tail.set_ylabel("samples slower (1 \N{MINUS SIGN} F, log)")
    tail.set_xlabel("latency (ms)" + (", log scale" if tail_log_x else ""))
    tail.set_title("tail, from the median", fontsize=9)
    for ax in (body, tail):
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(title, fontsize=11, x=0.01, horizontalalignment="left")
    _legend(fig, handles, _summary(x))
    return _png(fig)


def accuracy_vs_noise_png(levels: Sequence[float], accuracies: Sequence[float], *, title: str,
                          level_label: str, floor: float | None = None) -> bytes:
    """Accuracy (a fraction, 0..1) at each noise level, points joined in level order.

    level_label names the x axis with its unit ("SNR (dB)"). With a floor, it is drawn as the
    budget line and points under it are drawn red.
    """
    x = np.asarray(levels, dtype=np.float64).reshape(-1)
    y = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if x.size == 0 or x.size != y.size:
        raise ValueError(f"need as many accuracies as levels, at least one: got {x.size} levels, {y.size} accuracies")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("levels and accuracies must be finite numbers")
    if np.any((y < 0) | (y > 1)):
        raise ValueError("accuracies are fractions in [0, 1] (not percentages)")
    if floor is not None and not 0.0 <= float(floor) <= 1.0:
        raise ValueError(f"floor is a fraction in [0, 1], got {floor!r}")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    fig, ax = _figure()
    ax.plot(x, y, "-", color=_CURVE_COLOR, linewidth=1.4, zorder=2)
    below = np.zeros(x.size, dtype=bool) if floor is None else y < floor
    ax.plot(x[~below], y[~below], "o", color=_PASS_COLOR if floor is not None else _CURVE_COLOR, markersize=6,
            zorder=3, clip_on=False, label="accuracy" + (" (at or above floor)" if floor is not None else ""))
    handles = [ax.get_legend_handles_labels()[0][0]]
    if below.any():
        handles += ax.plot(x[below], y[below], "X", color=_FAIL_COLOR, markersize=8, zorder=3, clip_on=False,
                           label=f"below floor ({int(below.sum())} of {x.size})")
    if floor is not None:
        handles += [ax.axhline(float(floor), color=_FAIL_COLOR, linestyle="--", linewidth=1.5, zorder=1,
                               label=f"budget floor {format_value(float(floor))}")]
    if x.size <= 12:  # few enough points to print their values
        for xi, yi in zip(x, y, strict=True):
            ax.annotate(f"{yi:.3f}", (xi, yi), xytext=(0, 10 if yi < 0.96 else -16), textcoords="offset points",
                        ha="center", fontsize=7, color="#333", annotation_clip=False)
    span = float(x[-1] - x[0])
    pad = span * 0.05 if span > 0 else max(abs(float(x[0])) * 0.05, 0.5)
    ax.set_xlim(float(x[0]) - pad, float(x[-1]) + pad)
    ax.set_ylim(0.0, 1.0)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=10))
    ax.set_xlabel(level_label)
    ax.set_ylabel("accuracy (fraction correct)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=11, loc="left")
    _legend(fig, handles, None)
    return _png(fig)


# -- helpers -----------------------------------------------------------------------------------------


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.canvas.print_png(buf, metadata=_PNG_METADATA)  # type: ignore[attr-defined]
    return buf.getvalue()


def _mark_values(mark: PercentileMark) -> list[float]:
    return [float(v) for v in (mark.limit, mark.value, mark.upper_bound, mark.lower_bound) if v is not None]


def _extent(x: np.ndarray, marks: Sequence[PercentileMark]) -> tuple[float, float]:
    values = [float(x.min()), float(x.max()), *(v for m in marks for v in _mark_values(m))]
    return min(values), max(values)


def _padded(lo: float, hi: float, log: bool) -> tuple[float, float]:
    if log:
        f = (hi / lo) ** 0.04
        return lo / f, hi * f
    span = hi - lo
    pad = span * 0.04 if span > 0 else max(abs(lo) * 0.05, 0.01)
    return lo - pad, hi + pad


def _set_latency_x(ax: Axes, lo: float, hi: float, log: bool, max_ticks: int = 9) -> None:
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=_log_subs(*_padded(lo, hi, log), max_ticks), numticks=30))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(*_padded(lo, hi, log))


def _percent_tick(y: float, _pos: int | None = None) -> str:
    """1 -> '100%', 0.001 -> '0.1%', 1e-7 -> '$10^{-5}$%' (decimals past 0.001% are unreadable)."""
    if y <= 0:
        return ""
    if y * 100 >= 1e-3:
        return f"{y * 100:.10g}%"
    return f"$10^{{{round(math.log10(y * 100))}}}$%"


def _log_subs(lo: float, hi: float, max_ticks: int) -> tuple[float, ...]:
    """The densest of 1-2-5, 1-3 and 1 ticks per decade that puts at most max_ticks labels in [lo, hi]."""
    for subs in ((1.0, 2.0, 5.0), (1.0, 3.0), (1.0,)):
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        if sum(lo <= s * 10.0**d <= hi for d in decades for s in subs) <= max_ticks:
            return subs
    return (1.0,)


def _bin_edges(x: np.ndarray, log: bool) -> np.ndarray:
    """Freedman-Diaconis bins (in log10 when log), clipped to _MIN_BINS.._MAX_BINS; one bin for equal samples."""
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        if log:
            return np.array([lo / 1.02, hi * 1.02])
        half = max(abs(lo) * 0.01, 0.005)
        return np.array([lo - half, hi + half])
    t = np.log10(x) if log else x
    q75, q25 = np.percentile(t, [75, 25])
    width = 2.0 * float(q75 - q25) / x.size ** (1.0 / 3.0)
    span = float(t.max() - t.min())
    count = math.ceil(span / width) if width > 0 else math.ceil(math.log2(x.size) + 1)  # else Sturges
    count = min(_MAX_BINS, max(_MIN_BINS, count))
    edges = np.geomspace(lo, hi, count + 1) if log else np.linspace(lo, hi, count + 1)
    edges[0], edges[-1] = lo, hi  # exact ends, so rounding never drops the extreme samples
    return edges


def _ecdf_steps(s: np.ndarray, quantiles: Iterable[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(u, below): the distinct values of the sorted samples s and how many samples are <= each, so
    F(u[i]) = below[i] / n. With more than _MAX_STEPS values, steps no one could see at 800 px are
    dropped, but never the nearest-rank step of a quantile in `quantiles` (its guide meets the curve there)."""
    u, counts = np.unique(s, return_counts=True)
    below = np.cumsum(counts)
    if u.size <= _MAX_STEPS:
        return u, below
    must = [int(np.searchsorted(below, nearest_rank(int(s.size), q))) for q in quantiles]
    return _thin_steps(u, below, int(s.size), must)


def _thin_steps(u: np.ndarray, below: np.ndarray, n: int, must: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Keep the steps where F crosses a 1/4000 grid or the share of slower samples a 0.5% log grid (so the
    far tail keeps every step), both ends, and the indices in `must`."""
    keep = np.zeros(u.size, dtype=bool)
    keep[[0, -1, *must]] = True
    slower = (n - below).astype(np.float64)
    with np.errstate(divide="ignore"):
        log_slower = np.where(slower > 0, np.log(np.maximum(slower, 1.0) / n), -np.inf)
    keys = (np.floor(below * 4000.0 / n), np.floor(log_slower / math.log(1.005)))
    for key in keys:
        change = key[1:] != key[:-1]
        keep[1:] |= change
        keep[:-1] |= change
    return u[keep], below[keep]


def _vertical_marks(ax: Axes, mark: PercentileMark, color: str, value_style: str | None) -> list[Any]:
    """Lines for the limit, the measured value (when value_style is a line style) and each bound; their handles."""
    c = "" if mark.confidence is None else f"{mark.confidence * 100:.10g}% "
    handles = [ax.axvline(mark.limit, color=color, linewidth=2.2, zorder=3,
                          label=f"{mark.name} budget {format_value(mark.limit)} ms: {mark.verdict.value}")]
    if value_style is not None:
        handles.append(ax.axvline(mark.value, color=color, linestyle=value_style, linewidth=1.4, zorder=3,
                                  label=f"{mark.name} measured {format_value(mark.value)} ms"))
    else:
        handles.append(Line2D([], [], linestyle="none", marker="o", color=color, markersize=5,
                              label=f"{mark.name} measured {format_value(mark.value)} ms"))
    if mark.upper_bound is not None:
        handles.append(ax.axvline(mark.upper_bound, color=color, linestyle=":", linewidth=1.6, zorder=3,
                                  label=f"{mark.name} {c}upper bound {format_value(mark.upper_bound)} ms"))
    else:
        handles.append(Line2D([], [], linestyle="none", label=f"{mark.name} upper bound: none (n too small)"))
    if mark.lower_bound is not None:
        handles.append(ax.axvline(mark.lower_bound, color=color, linestyle="-.", linewidth=1.2, zorder=3,
                                  label=f"{mark.name} {c}lower bound {format_value(mark.lower_bound)} ms"))
    return handles


def _summary(x: np.ndarray) -> str:
    s = np.sort(x)
    median = float(s[max(1, math.ceil(s.size / 2)) - 1])
    head = f"{s.size:,} sample{'s' if s.size != 1 else ''} (ms)"
    return f"{head}\nmin {format_value(s[0])}, median {format_value(median)}, max {format_value(s[-1])}"


def _legend(fig: Figure, handles: list[Any], title: str | None) -> None:
    fig.legend(handles=handles, labels=[h.get_label() for h in handles], loc="outside right upper", title=title,
               **_LEGEND)
