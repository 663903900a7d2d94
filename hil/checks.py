"""The one registry of checks: every measured quantity hil judges, and what each one means.

A check is a named value judged against a limit (`latency_p99_ms <= 12.0`). What the rest of hil
needs to know about a name lives here and nowhere else: its unit, which direction is better,
whether its value depends on the device's speed or load (timing-sensitive), whether a manifest
may set it as a budget ([budgets.TAG] tables), the gate's default tolerance for it, and one line
for the docs. hil.artifacts (budget keys), hil.budgets (ceilings, floors, units), hil.report.gate
(tolerances) and hil.report.categories (timing checks) derive their tables from it.

A name is either exact or a pattern: `<q>` and `<N>` stand for a number (`latency_p<q>_ms` is
latency_p99.9_ms too), `*` for any text (`latency_*`). `get` tries the exact names first, then
the patterns in registry order, so a specific pattern is listed before the family that contains it.

docs/checks.md is `markdown()`; regenerate it with `python -m hil.checks > docs/checks.md`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CHECKS",
    "FALLBACK_TOLERANCE",
    "FRACTION_TOLERANCE",
    "Check",
    "Tolerance",
    "budget_checks",
    "budget_keys",
    "default_tolerance",
    "get",
    "is_timing",
    "markdown",
    "quantile",
]

Better = Literal["lower", "higher"]
ToleranceKind = Literal["relative", "absolute", "limit"]

_NUMBER = r"\d+(?:\.\d+)?"  # what f"{q:g}" writes for a percentile or an SNR: 99, 99.9, 40
_PLACEHOLDER = re.compile(r"<\w+>|\*")


@dataclass(frozen=True)
class Tolerance:
    """How far a check may move between two runs before the gate counts the move.

    kind "relative": value x |baseline| (0.1 is 10%); "absolute": value in the check's unit;
    "limit": value x |limit| (falls back to 100% relative when the check has no limit).
    """

    value: float
    kind: ToleranceKind = "relative"

    def amount(self, baseline: float, limit: float | None = None) -> float:
        """The tolerance in the check's unit for this baseline value."""
        if self.kind == "absolute":
            return self.value
        if self.kind == "limit":
            return self.value * abs(limit) if limit is not None else abs(baseline)
        return self.value * abs(baseline)

    def __str__(self) -> str:
        if self.kind == "absolute":
            return f"{self.value:g}"
        return f"{self.value * 100:g}%" + (" of the limit" if self.kind == "limit" else "")

    def describe(self) -> str:
        """'10% relative', '0.00001 absolute', '10% of the limit': for people, so no exponent notation."""
        if self.kind == "absolute":
            return f"{self.value:.10f}".rstrip("0").rstrip(".") + " absolute"
        return f"{self.value * 100:g}% " + ("of the limit" if self.kind == "limit" else "relative")


# Checks the registry does not name: a fraction moves in steps of samples, anything else by its size.
FRACTION_TOLERANCE = Tolerance(0.005, "absolute")  # 5 in 1000 samples
FALLBACK_TOLERANCE = Tolerance(0.10)


@dataclass(frozen=True)
class Check:
    """One check, or a pattern of them (see the module docstring for `<q>` and `*`).

    timing: the value depends on the device's speed or load, so it says little on an emulated or
    unhealthy device (a timing FAIL there is INCONCLUSIVE). budget: a manifest may set it in a
    [budgets.TAG] table; only exact names can be budget keys.
    """

    name: str
    unit: str  # "" for fractions and other unitless values
    better: Better
    tolerance: Tolerance
    description: str
    timing: bool = False
    budget: bool = False
    why_tolerance: str = ""  # for the docs: why the gate allows this much
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.better not in ("lower", "higher"):
            raise ValueError(f"check {self.name}: better must be 'lower' or 'higher', got {self.better!r}")
        if self.budget and self.is_pattern:
            raise ValueError(f"check {self.name}: a pattern cannot be a manifest budget key")
        object.__setattr__(self, "_compiled", re.compile(self.regex))

    @property
    def is_pattern(self) -> bool:
        return _PLACEHOLDER.search(self.name) is not None

    @property
    def regex(self) -> str:
        """The names it covers as a regular expression that Python and Allure (JavaScript) both read."""
        parts: list[str] = []
        last = 0
        for m in _PLACEHOLDER.finditer(self.name):
            parts += [re.escape(self.name[last:m.start()]), ".*" if m.group() == "*" else _NUMBER]
            last = m.end()
        return "".join([*parts, re.escape(self.name[last:])])

    @property
    def comparator(self) -> str:
        """'<=' when lower is better (the limit is a ceiling), '>=' when higher is (a floor)."""
        return "<=" if self.better == "lower" else ">="

    def matches(self, name: str) -> bool:
        return self._compiled.fullmatch(name) is not None


_WHY_LATENCY = "with raw samples on both sides the change must also be beyond the run-to-run noise (bootstrap)"
_WHY_FRACTION = "a fraction on a fixed data set: 0.005 is 5 in 1000 samples"


def _latency_percentile(q: int) -> Check:
    return Check(f"latency_p{q}_ms", "ms", "lower", Tolerance(0.10),
                 f"{q}th percentile latency of one inference (nearest rank), judged on its confidence bounds",
                 timing=True, budget=True, why_tolerance=_WHY_LATENCY)


# Registry order is docs order, BudgetSpec.KEYS order (ceilings first) and pattern precedence.
CHECKS: tuple[Check, ...] = (
    # -- manifest budget keys
    *(_latency_percentile(q) for q in (50, 90, 95, 99)),
    Check("cold_start_ms", "ms", "lower", Tolerance(0.25),
          "session creation plus the first inference", timing=True, budget=True,
          why_tolerance="one sample per run: no noise estimate, and cold starts are noisy"),
    Check("memory_mib", "MiB", "lower", Tolerance(0.10),
          "peak resident memory of the inference process (runtime, session, timed loop)", budget=True),
    Check("accuracy_top1", "", "higher", Tolerance(0.005, "absolute"),
          "top-1 accuracy on the manifest's eval data", budget=True, why_tolerance=_WHY_FRACTION),
    Check("throughput_ips", "ips", "higher", Tolerance(0.10),
          "items per second (the latency run's, or the best batch size's in the throughput suite)",
          timing=True, budget=True),
    Check("accuracy_top1_at_20db_snr", "", "higher", Tolerance(0.005, "absolute"),
          "top-1 accuracy with Gaussian sensor noise at 20 dB SNR (robustness)", budget=True,
          why_tolerance=_WHY_FRACTION),
    # -- checks the suites judge against their own limits
    Check("latency_p<q>_ms", "ms", "lower", Tolerance(0.10),
          "any other latency percentile, e.g. `hil bench --limit-ms` at p99.9", timing=True,
          why_tolerance=_WHY_LATENCY),
    Check("latency_cv_pct", "%", "lower", Tolerance(0.50),
          "spread of the timings (coefficient of variation); never FAILs, too high makes a latency FAIL "
          "INCONCLUSIVE", timing=True, why_tolerance="itself noisy, and as much the lab's as the model's"),
    Check("max_abs_error", "", "lower", Tolerance(0.10, "limit"),
          "largest absolute difference from the reference outputs",
          why_tolerance="deterministic (same model and environment, same outputs), so any change is real: what "
                        "matters is how much of the limit it uses (no limit recorded: 100% relative, it doubled)"),
    Check("mean_abs_error", "", "lower", Tolerance(0.10, "limit"),
          "regression: mean absolute error of the outputs against the labels (limit: the [eval] tolerance)",
          why_tolerance="deterministic on the same model, data and environment: what matters is how much of "
                        "the tolerance it uses"),
    Check("min_cosine_similarity", "", "higher", Tolerance(1e-5, "absolute"),
          "cosine similarity to the reference outputs, of the worst sample",
          why_tolerance="deterministic too: a tenth of the 1 - 0.9999 margin the accuracy suite allows"),
    Check("top1_agreement", "", "higher", Tolerance(0.005, "absolute"),
          "fraction of samples whose top-1 class matches the reference's", why_tolerance=_WHY_FRACTION),
    Check("accuracy_relative_to_fp32", "", "higher", Tolerance(0.005, "absolute"),
          "int8 model's accuracy as a fraction of its fp32 parent's (MLPerf: at least 0.99)",
          why_tolerance=_WHY_FRACTION),
    Check("accuracy_drop_at_<N>db_snr", "", "lower", Tolerance(0.005, "absolute"),
          "clean top-1 accuracy minus top-1 accuracy with sensor noise at N dB SNR", why_tolerance=_WHY_FRACTION),
    Check("accuracy_max_rise_as_snr_falls", "", "lower", Tolerance(0.005, "absolute"),
          "largest rise of top-1 accuracy from a higher SNR to a lower one (noise should not help)",
          why_tolerance=_WHY_FRACTION),
    # -- families: names no entry above covers
    Check("latency_*", "ms", "lower", Tolerance(0.10), "any other latency figure", timing=True),
    Check("accuracy_*", "", "higher", Tolerance(0.005, "absolute"), "any other accuracy fraction",
          why_tolerance=_WHY_FRACTION),
    Check("*agreement*", "", "higher", Tolerance(0.005, "absolute"), "any other agreement fraction",
          why_tolerance=_WHY_FRACTION),
)


def _index(checks: Iterable[Check]) -> dict[str, Check]:
    """Exact names to their checks; a name registered twice is a mistake in this file, caught at import."""
    index: dict[str, Check] = {}
    for check in checks:
        if check.name in index:
            raise ValueError(f"hil.checks: check {check.name!r} is registered twice")
        index[check.name] = check
    return {name: check for name, check in index.items() if not check.is_pattern}


_EXACT = _index(CHECKS)
_PATTERNS = tuple(c for c in CHECKS if c.is_pattern)


def get(name: str) -> Check | None:
    """The check that covers `name`: its exact entry, else the first pattern that matches, else None."""
    exact = _EXACT.get(name)
    if exact is not None:
        return exact
    return next((c for c in _PATTERNS if c.matches(name)), None)


def budget_checks() -> tuple[Check, ...]:
    """The checks a manifest may set in [budgets.TAG], in registry order."""
    return tuple(c for c in CHECKS if c.budget)


def budget_keys() -> tuple[str, ...]:
    return tuple(c.name for c in budget_checks())


def is_timing(name: str) -> bool:
    """True when the value depends on the device's speed or load (latency, cold start, throughput)."""
    check = get(name)
    return check is not None and check.timing


_QUANTILE = re.compile(r"latency_p(" + _NUMBER + r")_ms")


def quantile(name: str) -> float | None:
    """99.0 for latency_p99_ms, 99.9 for latency_p99.9_ms; None for a name that is no latency percentile."""
    m = _QUANTILE.fullmatch(name)
    return float(m.group(1)) if m else None


def default_tolerance(name: str, unit: str = "", values: Iterable[float] = ()) -> Tolerance:
    """The gate's tolerance for a check no --tolerance overrides: the registry's, else by what the values are."""
    check = get(name)
    if check is not None:
        return check.tolerance
    if unit == "" and all(0.0 <= v <= 1.0 for v in values):
        return FRACTION_TOLERANCE
    return FALLBACK_TOLERANCE


# -- the docs page -----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/checks.md: every check, its unit, direction, timing sensitivity, gate tolerance, budget key or not."""
    lines = [
        "# Checks",
        "",
        "<!-- Generated from hil/checks.py: `.venv/bin/python -m hil.checks > docs/checks.md`. Do not edit. -->",
        "",
        "Every quantity hil judges against a limit, from the one registry in `hil/checks.py`. A",
        "**budget key** may be set in a manifest's `[budgets.TAG]` table; the other checks are judged",
        "against limits the suites set. **Timing-sensitive** checks depend on the device's speed or load:",
        "on a device whose health check warned (CPU governor, thermal headroom) their FAIL is",
        "INCONCLUSIVE, and an emulated device's figures say nothing about the hardware.",
        "",
        "`<q>` and `<N>` stand for a number, `*` for any text. A name takes its exact row, else the first",
        "pattern row that matches. **Gate tolerance** is how far `hil gate` lets a check move from the",
        "baseline before the move counts (with raw samples, a bootstrap interval must agree too):",
        "relative to the baseline, absolute in the check's unit, or a share of the check's limit",
        "(100% relative when no limit was recorded). `--tolerance CHECK=VALUE` overrides it.",
        "",
        "| Check | Budget key | Unit | Better | Timing-sensitive | Gate tolerance | Description |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in CHECKS:
        lines.append(f"| `{c.name}` | {'yes' if c.budget else 'no'} | {_cell(c.unit) or '-'} | {c.better} "
                     f"| {'yes' if c.timing else 'no'} | {c.tolerance.describe()} | {_cell(c.description)} |")
    notes: dict[str, list[str]] = {}  # why -> the checks it explains, so a shared reason is written once
    for c in CHECKS:
        if c.why_tolerance:
            notes.setdefault(c.why_tolerance, []).append(f"`{c.name}`")
    lines += ["", "Why these tolerances:", ""]
    lines += [f"- {', '.join(names)}: {why}." for why, names in notes.items()]
    lines += [
        "",
        "A check that no row covers is not timing-sensitive and cannot be a budget key. Its gate tolerance is",
        f"{FRACTION_TOLERANCE.describe()} when it has no unit and both values lie in [0, 1] (a fraction), else "
        f"{FALLBACK_TOLERANCE.describe()}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write(markdown())
