"""The release gate (hil.report.gate): pure comparisons on hand-built summary.json documents, and the command."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hil import cli
from hil.report.gate import (
    Comparison,
    Status,
    Tolerance,
    bootstrap_difference,
    bootstrap_quantiles,
    compare,
    merge_baseline,
    parse_tolerance,
    tolerance_for,
)
from hil.stats import binomial_sf, nearest_rank

ENV = {"arch": "x86_64", "cpus": "1.5", "onnxruntime": "1.20.1", "python": "3.11.2", "emulated": True}


def main(argv: list[str]) -> int:
    """`hil gate ...` through hil's one command line."""
    return cli.main(["gate", *argv])


def check(name: str = "latency_p99_ms", value: float | None = None, *, device: str = "dev-a", model: str = "m",
          unit: str = "ms", better: str = "lower", verdict: str | None = "PASS", fingerprint: str = "fp-1",
          emulated: bool = True, samples: np.ndarray | None = None, quantile: float = 99.0,
          limit: float | None = None) -> dict[str, Any]:
    """One entry of summary.json's checks; with samples, value is their nearest-rank quantile."""
    raw = None
    if samples is not None:
        raw = {"kind": "latency_ms", "quantile": quantile, "values": [float(v) for v in samples]}
        value = float(np.sort(samples)[nearest_rank(len(samples), quantile) - 1])
    return {"nodeid": f"suites/test_x.py::test_{name}[{device}-{model}]", "device": device, "model": model,
            "model_version": "1.0.0", "model_sha256": "ab" * 32, "emulated": emulated, "fingerprint": fingerprint,
            "seed": None, "check": name, "value": value, "unit": unit, "better": better, "limit": limit,
            "comparator": None if limit is None else ("<=" if better == "lower" else ">="), "verdict": verdict,
            "confidence": None, "lower_bound": None, "upper_bound": None,
            "samples": None if samples is None else len(samples), "raw": raw}


def summary(*checks: dict[str, Any], environments: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A summary.json document around `checks`, one devices entry per device they name."""
    environments = environments or {}
    devices = {}
    for c in checks:
        env = environments.get(c["device"], {**ENV, "emulated": c["emulated"]})
        devices[c["device"]] = {"emulated": c["emulated"], "fingerprint": c["fingerprint"], "environment": env,
                                "facts": {}}
    tests = [{"nodeid": c["nodeid"], "device": c["device"], "model": c["model"], "outcome": "passed"} for c in checks]
    return {"schema": "hil.summary/1", "run_id": "run", "complete": True, "finished_at": "2026-11-29T12:47:01Z",
            "counts": {"passed": len(tests)}, "devices": devices, "models": {}, "datasets": {}, "faults": [],
            "tests": tests, "checks": list(checks)}


def lognormal(seed: int, n: int = 5000, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(0.0, 0.5, n) * scale


def only(comparisons: list[Comparison]) -> Comparison:
    assert len(comparisons) == 1, comparisons
    return comparisons[0]


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


# -- the bootstrap ------------------------------------------------------------------------------------


def test_order_statistic_bootstrap_is_the_resampling_bootstrap() -> None:
    """The Beta shortcut and brute-force resampling both follow the exact law
    P(X*_(k) <= x_(j)) = P(Binomial(n, j/n) >= k)."""
    x = np.sort(lognormal(7, n=300))
    n, q, draws = x.size, 90.0, 20_000
    k = nearest_rank(n, q)
    rng = np.random.default_rng(1)
    fast = bootstrap_quantiles(x, q, draws, rng)
    brute = np.sort(x[rng.integers(0, n, size=(draws, n))], axis=1)[:, k - 1]
    ranks = np.arange(k - 40, min(n, k + 40))
    exact = np.array([binomial_sf(k, n, j / n) for j in ranks])
    for got in (fast, brute):
        empirical = np.array([np.mean(got <= x[j - 1]) for j in ranks])
        assert np.max(np.abs(empirical - exact)) < 0.02  # KS-style: 1.36/sqrt(20000) ~ 0.01 at 95%


def test_bootstrap_difference_is_seeded_and_fast() -> None:
    base, cur = lognormal(1, n=50_000), lognormal(2, n=50_000, scale=1.3)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        result = bootstrap_difference(base, cur, 99.0)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.5
    assert result == bootstrap_difference(base, cur, 99.0)
    assert result.low < result.difference < result.high
    assert result.low > 0
    assert result.difference == pytest.approx(result.current - result.baseline)


# -- compare(): samples ----------------------------------------------------------------------------------


def test_regression_detected_from_samples() -> None:
    got = only(compare(summary(check(samples=lognormal(1))), summary(check(samples=lognormal(2, scale=1.3)))))
    assert got.status is Status.REGRESSED
    assert got.method == "bootstrap"
    assert got.interval is not None and got.interval[0] > 0
    assert got.relative_change == pytest.approx(0.3, abs=0.1)
    assert "excludes 0" in got.reason


def test_improvement_detected_from_samples() -> None:
    got = only(compare(summary(check(samples=lognormal(1))), summary(check(samples=lognormal(2, scale=0.7)))))
    assert got.status is Status.IMPROVED
    assert got.interval is not None and got.interval[1] < 0


def test_higher_is_better_reverses_the_direction() -> None:
    base = check("throughput_p50_ips", unit="ips", better="higher", quantile=50.0, samples=lognormal(1))
    cur = check("throughput_p50_ips", unit="ips", better="higher", quantile=50.0, samples=lognormal(2, scale=1.3))
    assert only(compare(summary(base), summary(cur))).status is Status.IMPROVED


@pytest.mark.parametrize("seed", range(8))
def test_noise_alone_is_not_flagged(seed: int) -> None:
    base, cur = lognormal(100 + seed), lognormal(200 + seed)  # two runs of the same distribution
    got = only(compare(summary(check(samples=base)), summary(check(samples=cur))))
    assert got.status is Status.UNCHANGED, got.reason


def test_clear_but_small_shift_is_not_flagged() -> None:
    base, cur = lognormal(1, n=50_000), lognormal(2, n=50_000, scale=1.04)
    got = only(compare(summary(check(samples=base)), summary(check(samples=cur))))
    assert got.interval is not None and got.interval[0] > 0  # statistically clear...
    assert got.status is Status.UNCHANGED  # ...but 4% is inside the 10% latency tolerance
    assert "real but small" in got.reason


def test_shift_beyond_tolerance_within_noise_is_not_flagged() -> None:
    # 40 samples: their p90 moves a lot from run to run, so +20% (beyond the 10% tolerance) is not evidence.
    base, cur = lognormal(1, n=40), lognormal(11, n=40, scale=1.2)
    got = only(compare(summary(check("latency_p90_ms", samples=base, quantile=90.0)),
                       summary(check("latency_p90_ms", samples=cur, quantile=90.0))))
    assert got.method == "bootstrap"
    assert got.relative_change is not None and got.relative_change > 0.1
    assert got.status is Status.UNCHANGED, got.reason
    assert "includes 0" in got.reason


def test_too_few_samples_fall_back_to_the_tolerance() -> None:
    # p99 of 25 samples is their maximum: a bootstrap of it would look surer than it is.
    got = only(compare(summary(check(samples=lognormal(1, n=25))), summary(check(samples=lognormal(2, n=25)))))
    assert got.method == "tolerance"
    assert "too few raw samples" in got.reason


# -- compare(): single values ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "unit", "better", "before", "after", "status"), [
    ("cold_start_ms", "ms", "lower", 100.0, 130.0, Status.REGRESSED),
    ("cold_start_ms", "ms", "lower", 100.0, 120.0, Status.UNCHANGED),  # one noisy sample: 25%
    ("cold_start_ms", "ms", "lower", 100.0, 70.0, Status.IMPROVED),
    ("memory_mib", "MiB", "lower", 100.0, 111.0, Status.REGRESSED),
    ("memory_mib", "MiB", "lower", 100.0, 110.0, Status.UNCHANGED),  # exactly the tolerance is within
    ("accuracy_top1", "", "higher", 0.95, 0.94, Status.REGRESSED),  # absolute 0.005
    ("accuracy_top1", "", "higher", 0.95, 0.948, Status.UNCHANGED),
    ("top1_agreement", "", "higher", 1.0, 0.99, Status.REGRESSED),
    ("some_fraction", "", "higher", 0.5, 0.52, Status.IMPROVED),  # unit "" in [0, 1]: a fraction
])
def test_single_values_use_the_tolerance(name: str, unit: str, better: str, before: float, after: float,
                                         status: Status) -> None:
    got = only(compare(summary(check(name, before, unit=unit, better=better)),
                       summary(check(name, after, unit=unit, better=better))))
    assert got.status is status, got.reason
    assert got.method == "tolerance"
    assert "tolerance only" in got.reason


def test_deterministic_error_is_judged_against_its_limit() -> None:
    base = check("max_abs_error", 2e-6, unit="", limit=1e-4)
    assert only(compare(summary(base), summary(check("max_abs_error", 8e-6, unit="", limit=1e-4)))).status \
        is Status.UNCHANGED  # 4x, but only 6% of the budget
    got = only(compare(summary(base), summary(check("max_abs_error", 2e-5, unit="", limit=1e-4))))
    assert got.status is Status.REGRESSED
    assert got.tolerance == "10% of the limit"


def test_tolerance_defaults_and_overrides() -> None:
    assert tolerance_for("latency_p99_ms", "ms", [1.0]) == Tolerance(0.10)
    assert tolerance_for("cold_start_ms", "ms", [1.0]) == Tolerance(0.25)
    assert tolerance_for("accuracy_relative_to_fp32", "", [1.002]) == Tolerance(0.005, "absolute")
    assert tolerance_for("thing", "", [0.3, 0.4]) == Tolerance(0.005, "absolute")
    assert tolerance_for("thing", "ms", [0.3]) == Tolerance(0.10)
    overrides = dict([parse_tolerance("latency_*=5%"), parse_tolerance("latency_p99_ms=0.5")])
    assert tolerance_for("latency_p99_ms", "ms", [1.0], overrides) == Tolerance(0.5, "absolute")
    assert tolerance_for("latency_p50_ms", "ms", [1.0], overrides) == Tolerance(0.05)


def test_tolerance_option_changes_the_verdict(tmp_path: Path) -> None:
    baseline = write(tmp_path / "base.json", summary(check(samples=lognormal(1))))
    current = write(tmp_path / "cur.json", summary(check(samples=lognormal(2, scale=1.3))))
    args = ["--baseline", str(baseline), "--current", str(current)]
    assert main(args) == 1
    assert main([*args, "--tolerance", "latency_*=50%"]) == 0


@pytest.mark.parametrize("bad", ["latency_p99_ms", "latency_p99_ms=fast", "=5%", "x=-1"])
def test_bad_tolerance_is_a_usage_error(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = summary(check(value=1.0))
    args = ["--baseline", str(write(tmp_path / "b.json", doc)), "--current", str(write(tmp_path / "c.json", doc))]
    assert main([*args, "--tolerance", bad]) == 2
    assert "--tolerance" in capsys.readouterr().err


# -- compare(): identity and comparability ---------------------------------------------------------------


def test_missing_new_and_absent_device() -> None:
    base = summary(check("latency_p99_ms", 1.0), check("cold_start_ms", 100.0),
                   check("latency_p99_ms", 5.0, device="dev-b"))
    cur = summary(check("latency_p99_ms", 1.0), check("memory_mib", 50.0, unit="MiB"))
    got = {c.key: c.status for c in compare(base, cur)}
    assert got == {("dev-a", "m", "latency_p99_ms"): Status.UNCHANGED,
                   ("dev-a", "m", "cold_start_ms"): Status.MISSING,
                   ("dev-a", "m", "memory_mib"): Status.NEW,
                   ("dev-b", "m", "latency_p99_ms"): Status.NOT_COMPARABLE}  # dev-b is not in this run


def test_fingerprint_mismatch_is_not_comparable() -> None:
    base = summary(check(value=1.0, fingerprint="fp-1"))
    cur = summary(check(value=5.0, fingerprint="fp-2", verdict="FAIL"),
                  environments={"dev-a": {**ENV, "onnxruntime": "1.21.0", "cpus": "2"}})
    got = only(compare(base, cur))
    assert got.status is Status.NOT_COMPARABLE
    assert "onnxruntime 1.20.1 -> 1.21.0" in got.reason and "cpus 1.5 -> 2" in got.reason
    assert "python" not in got.reason


def test_emulated_is_never_compared_with_real() -> None:
    got = only(compare(summary(check(value=1.0, emulated=True)), summary(check(value=9.0, emulated=False))))
    assert got.status is Status.NOT_COMPARABLE
    assert "never compared" in got.reason and "emulat" in got.reason


def test_pass_to_fail_is_a_regression_whatever_the_numbers() -> None:
    got = only(compare(summary(check(value=1.0, verdict="PASS")), summary(check(value=1.0, verdict="FAIL"))))
    assert got.status is Status.REGRESSED
    assert "PASS -> FAIL" in got.reason


def test_failing_statuses_come_first() -> None:
    base = summary(check("a_ms", 1.0), check("b_ms", 1.0), check("c_ms", 1.0))
    cur = summary(check("a_ms", 1.0), check("b_ms", 2.0), check("d_ms", 1.0))
    assert [c.status for c in compare(base, cur)] == [Status.REGRESSED, Status.MISSING, Status.NEW,
                                                       Status.UNCHANGED]


# -- merge_baseline() ------------------------------------------------------------------------------------


def test_merge_replaces_this_runs_checks_and_keeps_the_rest() -> None:
    base = summary(check(value=1.0), check("cold_start_ms", 100.0), check(value=5.0, device="dev-b"))
    cur = summary(check(value=1.1))
    merged = merge_baseline(base, cur)
    values = {(c["device"], c["check"]): c["value"] for c in merged["checks"]}
    assert values == {("dev-a", "latency_p99_ms"): 1.1, ("dev-a", "cold_start_ms"): 100.0,
                      ("dev-b", "latency_p99_ms"): 5.0}
    assert set(merged["devices"]) == {"dev-a", "dev-b"}
    assert merged["schema"] == "hil.summary/1"


# -- the command ---------------------------------------------------------------------------------------


def test_command_prints_table_and_tally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(tmp_path / "b.json", summary(check(value=1.0), check("cold_start_ms", 100.0)))
    cur = write(tmp_path / "c.json", summary(check(value=1.5), check("memory_mib", 9.0, unit="MiB")))
    out_json = tmp_path / "gate.json"
    assert main(["--baseline", str(base), "--current", str(cur), "--json", str(out_json)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["STATUS", "DEVICE", "MODEL", "CHECK"]
    assert lines[1].startswith("regressed") and lines[2].startswith("missing") and lines[3].startswith("new")
    assert lines[-1].startswith("gate FAILED: 1 regressed, 1 missing")
    report = json.loads(out_json.read_text())
    assert report["passed"] is False and report["exit_code"] == 1
    assert report["tally"]["regressed"] == 1
    assert report["comparisons"][0]["status"] == "regressed"
    assert report["comparisons"][0]["relative_change"] == pytest.approx(0.5)


def test_new_check_passes_and_missing_check_fails(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", summary(check(value=1.0)))
    grown = write(tmp_path / "grown.json", summary(check(value=1.0), check("memory_mib", 9.0, unit="MiB")))
    shrunk = write(tmp_path / "shrunk.json", summary(check("memory_mib", 9.0, unit="MiB")))
    assert main(["--baseline", str(base), "--current", str(grown)]) == 0
    assert main(["--baseline", str(base), "--current", str(shrunk)]) == 1


def test_update_merges_and_keeps_other_devices(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", summary(check(value=1.0), check(value=5.0, device="dev-b")))
    cur = write(tmp_path / "c.json", summary(check(value=0.9)))
    assert main(["--baseline", str(base), "--current", str(cur), "--update"]) == 0
    values = {c["device"]: c["value"] for c in json.loads(base.read_text())["checks"]}
    assert values == {"dev-a": 0.9, "dev-b": 5.0}
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed into place


def test_update_refuses_on_regression_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = summary(check(value=1.0), check(value=5.0, device="dev-b"))
    base = write(tmp_path / "b.json", original)
    cur = write(tmp_path / "c.json", summary(check(value=2.0)))
    args = ["--baseline", str(base), "--current", str(cur), "--update"]
    assert main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert json.loads(base.read_text()) == original
    assert main([*args, "--force"]) == 1  # the exit status still reports the gate
    values = {c["device"]: c["value"] for c in json.loads(base.read_text())["checks"]}
    assert values == {"dev-a": 2.0, "dev-b": 5.0}


def test_missing_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cur = write(tmp_path / "c.json", summary(check(value=1.0)))
    base = tmp_path / "baselines" / "lab.json"
    assert main(["--baseline", str(base), "--current", str(cur)]) == 2
    err = capsys.readouterr().err
    assert str(base) in err and "--update" in err
    assert main(["--baseline", str(base), "--current", str(cur), "--update"]) == 0
    assert "1 new" in capsys.readouterr().out
    assert json.loads(base.read_text())["checks"][0]["value"] == 1.0


@pytest.mark.parametrize(("text", "expected"), [
    ("{not json", "not valid JSON"),
    ('{"schema": "other/1"}', "schema"),
    ('{"schema": "hil.summary/1", "checks": [{"device": "d"}]}', "checks[0]"),
    ("[]", "JSON object"),
])
def test_bad_file_is_a_usage_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                             expected: str) -> None:
    good = write(tmp_path / "good.json", summary(check(value=1.0)))
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert main(["--baseline", str(bad), "--current", str(good)]) == 2
    err = capsys.readouterr().err
    assert f"baseline {bad}" in err and expected in err and "Traceback" not in err
    assert main(["--baseline", str(good), "--current", str(bad)]) == 2
    assert f"current results {bad}" in capsys.readouterr().err


def test_missing_current_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "good.json", summary(check(value=1.0)))
    assert main(["--baseline", str(good), "--current", str(tmp_path / "nope.json")]) == 2
    assert "nope.json does not exist" in capsys.readouterr().err


def test_strict_fails_when_nothing_could_be_compared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # After an onnxruntime update every check is "not comparable": the plain gate passes, warning that it
    # compared nothing; --strict fails. Both say how many checks were compared.
    base = write(tmp_path / "b.json", summary(check(value=1.0, fingerprint="fp-1")))
    updated = write(tmp_path / "c.json", summary(check(value=1.0, fingerprint="fp-2")))
    out_json = tmp_path / "gate.json"
    assert main(["--baseline", str(base), "--current", str(updated)]) == 0
    captured = capsys.readouterr()
    assert "(1 checks, 0 compared with the baseline)" in captured.out
    assert "no check was compared with the baseline" in captured.err and "--strict" in captured.err
    assert main(["--baseline", str(base), "--current", str(updated), "--strict", "--json", str(out_json)]) == 1
    assert "gate FAILED (strict)" in capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert report["strict"] is True and report["compared"] == 0 and report["passed"] is False


def test_strict_passes_when_every_check_was_compared_and_none_regressed(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = write(tmp_path / "b.json", summary(check(value=1.0), check("cold_start_ms", 100.0)))
    same = write(tmp_path / "c.json", summary(check(value=1.0), check("cold_start_ms", 101.0)))
    assert main(["--baseline", str(base), "--current", str(same), "--strict"]) == 0
    assert "gate passed (strict)" in capsys.readouterr().out
    mixed = write(tmp_path / "m.json", summary(check(value=1.0), check("cold_start_ms", 100.0, fingerprint="fp-9")))
    assert main(["--baseline", str(base), "--current", str(mixed)]) == 0  # plain: not comparable is no failure
    assert main(["--baseline", str(base), "--current", str(mixed), "--strict"]) == 1
