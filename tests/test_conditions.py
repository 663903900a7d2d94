"""CPU governor and thermal headroom: parsed from the device, warned about, and voiding a timing FAIL."""

from __future__ import annotations

import subprocess

from hil.budgets import Verdict, check_max, check_min, temper
from hil.conditions import PROBE, parse_probe, timing_warnings

PROBED = """gov performance
gov schedutil
zone cpu-thermal 71500 passive 80000 critical 95000
zone gpu-thermal 40000 active 45000 critical 95000
zone broken N/A
"""


def test_probe_output_is_parsed() -> None:
    governors, zones = parse_probe(PROBED)
    assert governors == {"performance", "schedutil"}
    assert [(z.name, z.temp_c, z.headroom_c) for z in zones] == [("cpu-thermal", 71.5, 8.5),
                                                                  ("gpu-thermal", 40.0, 55.0)]


def test_unsteady_governor_and_low_headroom_are_warned_about() -> None:
    warnings = timing_warnings(*parse_probe(PROBED))
    assert len(warnings) == 2
    assert "governor schedutil" in warnings[0] and "cpu-thermal at 71.5 °C, 8.5 °C below throttling" in warnings[1]
    assert timing_warnings({"performance"}, parse_probe("zone cpu 50000 passive 90000")[1]) == []
    assert timing_warnings(set(), []) == []  # nothing readable (an emulated device, a VM): nothing to warn about


def test_the_probe_runs_in_a_plain_shell() -> None:
    proc = subprocess.run(["sh", "-c", PROBE], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    parse_probe(proc.stdout)  # whatever this machine exposes parses


def test_a_timing_fail_under_warnings_is_inconclusive() -> None:
    fail = check_max("latency_p99_ms", 3.0, 2.0, "ms")
    tempered = temper(fail, ["CPU frequency governor ondemand"])
    assert tempered.verdict is Verdict.INCONCLUSIVE and "governor ondemand" in tempered.note
    assert temper(fail, []) is fail
    assert temper(check_max("cold_start_ms", 900, 500, "ms"), ["hot"]).verdict is Verdict.INCONCLUSIVE
    # Not a timing: memory and accuracy verdicts stand whatever the clock does.
    assert temper(check_max("memory_mib", 90, 64, "MiB"), ["hot"]).verdict is Verdict.FAIL
    assert temper(check_min("accuracy_top1", 0.9, 0.95), ["hot"]).verdict is Verdict.FAIL
    passed = check_max("latency_p99_ms", 1.0, 2.0, "ms")
    assert temper(passed, ["hot"]) is passed
