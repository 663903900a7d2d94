"""`hil bench` from a shell against the test lab: the JSON summary, verdicts and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.synthetic import DEMO_SIGNING_KEY as DEMO_KEY
from hil.artifacts import load_artifact
from hil.lab import EmulatedLab

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "digits-mlp"
MANIFEST = load_artifact(MODEL).manifest
EXIT_FAILED, EXIT_INCONCLUSIVE = 1, 4
# Short runs: enough for the first adaptive look at p99 (666 samples) on a sub-millisecond model.
QUICK = ("--min-iterations", "200", "--min-duration", "0.3")


@pytest.fixture
def hil(lab: EmulatedLab, tmp_path: Path) -> list[str]:
    """`python -m hil.cli` on the test lab's devices.toml, with the demo key trusted for the demo models."""
    devices = tmp_path / "devices.toml"
    trust = f'\n[deploy]\ntrusted_keys = ["{DEMO_KEY.with_suffix(".pub")}"]\n'
    devices.write_text(lab.inventory.path.read_text() + trust)
    return [sys.executable, "-m", "hil.cli", "--devices", str(devices)]


def _bench(hil: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*hil, "bench", "emu-a", str(MODEL), "--json", *extra], capture_output=True, text=True,
                          timeout=120)


def _names_the_context(text: str, onnxruntime: str) -> None:
    for part in ("device emu-a (emulated)", f"model {MANIFEST.name} {MANIFEST.version}", MANIFEST.sha256,
                 f"onnxruntime {onnxruntime}"):
        assert part in text, f"{part!r} not in {text!r}"


def test_bench_prints_the_summary_and_the_jetson_verdicts(hil: list[str]) -> None:
    out = _bench(hil, *QUICK)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    lat = doc["latency"]
    assert lat["p99_ms"] >= lat["p50_ms"] > 0 and lat["max_ms"] >= lat["p99_ms"] and lat["count"] >= 200
    assert lat["throughput_ips"] > 0 and lat["cv"] >= 0
    assert doc["providers"] == ["CPUExecutionProvider"] and doc["fallback"] is None
    assert (doc["device"], doc["emulated"], doc["model"], doc["sha256"]) == ("emu-a", True, "digits-mlp",
                                                                             MANIFEST.sha256)
    assert doc["cold_start_ms"] > doc["session_create_ms"] > 0 and doc["peak_rss_mib"] > 0
    assert doc["threads"] == 1  # emu-a has a 1.0 CPU quota on a bigger host
    # emu-a is tagged jetson: the manifest's jetson budgets that a latency run can judge, all PASS.
    jetson = MANIFEST.budgets["jetson"]
    verdicts = {v["name"]: v for v in doc["verdicts"]}
    assert set(verdicts) == {k for k in jetson if not k.startswith("accuracy")}  # bench measures no accuracy
    assert all(v["verdict"] == "PASS" and v["source"] == "jetson" for v in verdicts.values()), verdicts
    assert verdicts["latency_p99_ms"]["upper_bound"] <= jetson["latency_p99_ms"]
    assert doc["verdict"] == "PASS" and doc["messages"] == [] and doc["stop"]["adaptive"]


def test_a_limit_nothing_can_meet_fails_and_names_what_was_measured(hil: list[str]) -> None:
    out = _bench(hil, *QUICK, "--limit-ms", "1e-6")
    assert out.returncode == EXIT_FAILED, out.stderr
    doc = json.loads(out.stdout)
    [tight] = [v for v in doc["verdicts"] if v["source"] == "--limit-ms"]
    assert tight["name"] == "latency_p99_ms" and tight["verdict"] == "FAIL" and tight["lower_bound"] > 1e-6
    assert doc["verdict"] == "FAIL" and doc["stop"]["reason"] == "decided"
    assert "budget exceeded: latency_p99_ms <= 1e-06" in out.stderr and "Traceback" not in out.stderr
    _names_the_context(out.stderr, doc["onnxruntime"])
    _names_the_context(doc["messages"][0], doc["onnxruntime"])


def test_too_few_samples_to_decide_is_inconclusive_not_a_pass(hil: list[str]) -> None:
    # 10 ms of loop ends before the first look (666 samples): no verdict is possible, and it says how many more.
    out = _bench(hil, "--min-iterations", "1", "--min-duration", "0", "--max-duration", "0.01", "--limit-ms", "1000")
    assert out.returncode == EXIT_INCONCLUSIVE, out.stderr
    doc = json.loads(out.stdout)
    assert doc["verdict"] == "INCONCLUSIVE" and doc["latency"]["count"] < doc["stop"]["looks"][0]
    assert "inconclusive: latency_p99_ms <= 1000.0" in out.stderr and "more samples would likely decide" in out.stderr


def test_bench_table_output(hil: list[str]) -> None:
    out = subprocess.run([*hil, "bench", "emu-a", str(MODEL), *QUICK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for row in ("p50", "p99", "throughput", "cold start", "session creation", "peak RSS", "VERDICT"):
        assert row in out.stdout
    assert f"emu-a (emulated): digits-mlp {MANIFEST.version} (sha256 {MANIFEST.sha256})" in out.stdout
