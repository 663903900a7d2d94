"""The registry of checks (hil.checks) and the tables that derive from it."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from pathlib import Path

import numpy as np
import pytest

from hil import checks
from hil.artifacts import BUDGET_KEYS, parse_manifest
from hil.budgets import (
    PERCENTILE_KEYS,
    BudgetSpec,
    Verdict,
    budgets_for_tags,
    check_budget,
    check_max,
    temper,
)
from hil.checks import CHECKS, Check, Tolerance
from hil.errors import ArtifactRejected, ConfigError
from hil.report.categories import ACCURACY, LATENCY, MEMORY, categorize
from hil.report.gate import tolerance_for
from hil.report.plots import percentile_marks
from hil.testing import percentile_verdicts

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "checks.md"
REGENERATE = ".venv/bin/python -m hil.checks > docs/checks.md"


def example(check: Check) -> str:
    """A concrete name the entry covers: a number for <q>/<N>, some text for *."""
    return re.sub(r"<\w+>", "99.9", check.name).replace("*", "other")


def budget_exceeded(name: str) -> str:
    return f"hil.budgets.BudgetExceeded: budget exceeded: {name} <= 1.0: measured 2.0: FAIL"


# -- the docs page -----------------------------------------------------------------------------------


def test_docs_page_is_the_registry() -> None:
    assert DOCS.read_text(encoding="utf-8") == checks.markdown(), \
        f"docs/checks.md is out of date with hil/checks.py: regenerate it with `{REGENERATE}`"


def test_docs_page_lists_every_check_and_marks_the_budget_keys() -> None:
    rows = {line.split("|")[1].strip(" `"): line for line in checks.markdown().splitlines()
            if line.startswith("| `")}
    assert list(rows) == [c.name for c in CHECKS]
    assert {name for name, line in rows.items() if line.split("|")[2].strip() == "yes"} == BUDGET_KEYS
    assert "| `min_cosine_similarity` | no | - | higher | no | 0.00001 absolute |" in rows["min_cosine_similarity"]
    assert "| `cold_start_ms` | yes | ms | lower | yes | 25% relative |" in rows["cold_start_ms"]


# -- the registry ------------------------------------------------------------------------------------


def test_every_entry_is_found_by_its_own_example() -> None:
    # Precedence: an exact name beats a pattern, a specific pattern beats the family listed after it.
    for check in CHECKS:
        assert checks.get(example(check)) is check, check.name
    assert checks.get("latency_cv_pct").unit == "%"  # type: ignore[union-attr]  # not the latency_* family's ms
    assert checks.get("accuracy_drop_at_40db_snr").better == "lower"  # type: ignore[union-attr]
    assert checks.get("accuracy_foo").better == "higher"  # type: ignore[union-attr]
    assert checks.get("session_create_ms") is None and not checks.is_timing("session_create_ms")


def test_timing_checks() -> None:
    assert {c.name for c in CHECKS if c.timing and not c.is_pattern} == {
        "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "cold_start_ms", "throughput_ips",
        "latency_cv_pct"}
    assert checks.is_timing("latency_p99.9_ms") and checks.is_timing("latency_mean_ms")
    assert not checks.is_timing("memory_mib") and not checks.is_timing("accuracy_top1")


def test_quantile_of_a_latency_percentile_name() -> None:
    assert checks.quantile("latency_p99_ms") == 99.0 and checks.quantile("latency_p99.9_ms") == 99.9
    assert checks.quantile("latency_cv_pct") is None and checks.quantile("cold_start_ms") is None


def test_a_pattern_cannot_be_a_budget_key_and_names_are_unique() -> None:
    with pytest.raises(ValueError, match="pattern cannot be a manifest budget key"):
        Check("latency_p<q>_ms", "ms", "lower", Tolerance(0.1), "x", budget=True)
    with pytest.raises(ValueError, match="better must be"):
        Check("x", "", "up", Tolerance(0.1), "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'memory_mib' is registered twice"):
        checks._index([*CHECKS, CHECKS[5]])


# -- manifest budget keys ----------------------------------------------------------------------------


def test_budget_keys_are_the_registrys() -> None:
    assert set(checks.budget_keys()) == BUDGET_KEYS
    assert checks.budget_keys() == BudgetSpec.KEYS
    assert PERCENTILE_KEYS == {50.0: "latency_p50_ms", 90.0: "latency_p90_ms", 95.0: "latency_p95_ms",
                               99.0: "latency_p99_ms"}


_MANIFEST = f"""\
name = "registry-test"
version = "1.0.0"
sha256 = "{"ab" * 32}"
size = 1
opset = 17
min_onnxruntime = "1.13"

[[inputs]]
name = "input"
dtype = "float32"
shape = ["batch", 4]

[[outputs]]
name = "label"
dtype = "int64"
shape = ["batch"]
"""


def _manifest_with_budgets(table: str) -> str:
    return _MANIFEST + f"\n[budgets.registry-test]\n{table}\n"


def test_manifest_accepts_every_budget_key() -> None:
    where = Path("manifest.toml")
    table = "\n".join(f"{key} = 1.0" for key in checks.budget_keys())
    assert set(parse_manifest(_manifest_with_budgets(table), where).budgets["registry-test"]) == BUDGET_KEYS


@pytest.mark.parametrize("key", ["latency_p42_ms", "max_abs_error", "latency_cv_pct"])
def test_manifest_rejects_a_key_the_registry_does_not_mark_as_budget(key: str) -> None:
    # max_abs_error and latency_cv_pct are registered checks, but the suites set their limits.
    known = ", ".join(sorted(checks.budget_keys()))
    with pytest.raises(ArtifactRejected, match=re.escape(f"unknown budget '{key}' (known: {known})")):
        parse_manifest(_manifest_with_budgets(f"{key} = 1.0"), Path("manifest.toml"))
    with pytest.raises(ConfigError, match=re.escape(f"unknown budget '{key}' (known: {known})")):
        budgets_for_tags({"jetson": {key: 1.0}}, ["jetson"])


def test_ceiling_or_floor_and_unit_come_from_the_registry() -> None:
    # Stricter is smaller for a "lower is better" key, larger for a "higher is better" one.
    tables = {"a": {"memory_mib": 100.0, "throughput_ips": 10.0}, "b": {"memory_mib": 50.0, "throughput_ips": 20.0}}
    spec = budgets_for_tags(tables, ["a", "b"])
    assert spec.memory_mib == 50.0 and spec.throughput_ips == 20.0
    for key in ("cold_start_ms", "memory_mib", "accuracy_top1", "throughput_ips"):
        entry = checks.get(key)
        assert entry is not None
        m = check_budget(key, 1.0, 2.0)
        assert (m.unit, m.comparator) == (entry.unit, entry.comparator)
    units = {key: check_budget(key, 2.0, 1.0).unit for key in ("cold_start_ms", "memory_mib", "accuracy_top1")}
    assert units == {"cold_start_ms": "ms", "memory_mib": "MiB", "accuracy_top1": ""}


# -- the gate's default tolerances -------------------------------------------------------------------

# The gate's own table before the registry (first match wins), to prove the move changed nothing.
_GATE_BEFORE = (
    ("latency_cv_pct", Tolerance(0.50)), ("latency_*", Tolerance(0.10)), ("cold_start_ms", Tolerance(0.25)),
    ("memory_mib", Tolerance(0.10)), ("throughput_ips", Tolerance(0.10)), ("max_abs_error", Tolerance(0.10, "limit")),
    ("min_cosine_similarity", Tolerance(1e-5, "absolute")), ("accuracy_*", Tolerance(0.005, "absolute")),
    ("*agreement*", Tolerance(0.005, "absolute")),
)


def _before(name: str, unit: str, values: list[float]) -> Tolerance:
    for pattern, tolerance in _GATE_BEFORE:
        if fnmatch.fnmatchcase(name, pattern):
            return tolerance
    return Tolerance(0.005, "absolute") if unit == "" and all(0 <= v <= 1 for v in values) else Tolerance(0.10)


def test_gate_default_tolerance_is_the_registrys() -> None:
    for check in CHECKS:
        assert tolerance_for(example(check), check.unit, [1.0]) == check.tolerance, check.name
    assert len({c.tolerance for c in CHECKS}) >= 5  # the registry really does tell them apart


def test_gate_reads_the_registry_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    cold = checks.get("cold_start_ms")
    assert cold is not None
    monkeypatch.setitem(checks._EXACT, "cold_start_ms", dataclasses.replace(cold, tolerance=Tolerance(0.42)))
    assert tolerance_for("cold_start_ms", "ms", [1.0]) == Tolerance(0.42)


ADDED_SINCE = {"mean_abs_error"}  # checks new since the registry replaced the gate's table: no "before"


@pytest.mark.parametrize("name", [
    *(example(c) for c in CHECKS if c.name not in ADDED_SINCE), "latency_p99_ms",
    "latency_agreement", "accuracy_agreement", "top1_agreement_x",
    "memory_peak_mib", "thing", "cold_start_ms_x", "latency_", "accuracy_drop_at_40db_snr"])
@pytest.mark.parametrize(("unit", "values"), [("", [0.3, 0.4]), ("ms", [3.0]), ("", [3.0])])
def test_gate_tolerances_are_what_they_were(name: str, unit: str, values: list[float]) -> None:
    assert tolerance_for(name, unit, values) == _before(name, unit, values)


# -- categories and other derived tables -------------------------------------------------------------


def test_categories_classify_the_registrys_timing_checks() -> None:
    for check in CHECKS:
        got = categorize("failed", budget_exceeded(example(check)))
        if check.timing:
            assert got == LATENCY, check.name
        else:
            assert got != LATENCY, check.name
    assert categorize("failed", budget_exceeded("latency_p99.9_ms")) == LATENCY  # any percentile, not only integers
    assert categorize("failed", budget_exceeded("memory_mib")) == MEMORY
    assert categorize("failed", budget_exceeded("accuracy_top1_at_20db_snr")) == ACCURACY


def test_a_warned_device_tempers_exactly_the_registrys_timing_checks() -> None:
    # hil.budgets.temper turns a FAIL into INCONCLUSIVE on a device that warned, for timing checks only.
    for name in [example(c) for c in CHECKS]:
        tempered = temper(check_max(name, 2.0, 1.0), ["cpufreq governor is powersave"])
        assert (tempered.verdict is Verdict.INCONCLUSIVE) == checks.is_timing(name), name


def test_plots_mark_the_registrys_latency_percentiles() -> None:
    x = np.linspace(1.0, 2.0, 400)
    spec = BudgetSpec(latency_p50_ms=5.0, latency_p99_ms=5.0, memory_mib=50.0)
    marks = percentile_marks([*percentile_verdicts(x, spec.percentile_limits, None),
                              check_budget("memory_mib", 10.0, 50.0)])
    assert [m.quantile for m in marks] == [50.0, 99.0]
