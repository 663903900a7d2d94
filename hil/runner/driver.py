"""Host side of a run: ship the device runner, start it through the device's one door, read its report.

The timing loop runs on the device (hil/ondevice/runner.py); nothing here is inside a latency
figure. Files on the device, under <workdir>:
    runner/device_runner.py, runner/hil_stats.py   hil/ondevice/runner.py and stats.py, shipped when
                                                   missing or changed (sha256)
    runner/runs/<id>/                              one run's config and outputs, removed after it
    inputs/<sha256>.npz                            input sets, named by content, sent once
"""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import hil
from hil.deploy import DeployedModel
from hil.device import Device
from hil.digest import sha256_file
from hil.errors import CommandTimeout
from hil.runner.errors import (
    BY_CATEGORY,
    CONFIG,
    OUT_OF_MEMORY,
    OutOfMemory,
    RunnerConfigError,
    RunnerCrashed,
    RunnerError,
    RunnerTimeout,
)
from hil.runner.results import EvalRun, LatencyRun, OverheadRun, RunContext, SweepRun

log = logging.getLogger(__name__)

ONDEVICE = Path(hil.__file__).with_name("ondevice")  # what runs on the device (see hil/ondevice/__init__.py)
RUNNER_SOURCE = ONDEVICE / "runner.py"
STATS_SOURCE = ONDEVICE / "stats.py"  # shipped as hil_stats.py when it exists
RUNNER_NAME = "device_runner.py"  # the names on the device: the runner imports hil_stats
STATS_NAME = "hil_stats.py"
STARTUP_S = 60.0  # interpreter start, imports, session creation and cold start on a slow board
WRAP_UP_S = 15.0  # after the loop: profiling pass, JSON; the runner's own deadline leaves this much
KILLED = (137, -9)  # SIGKILL through a shell, or directly: on a device run, that is the OOM killer
ADAPTIVE_MIN_CAP_S = 10.0  # an adaptive run with no maximum given stops after at least this long
NO_SCRIPT = 2  # Python's status when it cannot open the script: the shipped runner is gone


@dataclass(frozen=True)
class StopWhen:
    """Adaptive stopping: end the loop once p`quantile` <= limit_ms is decided at `confidence`."""

    quantile: float
    limit_ms: float
    confidence: float = 0.99
    check_every: int = 100


@dataclass(frozen=True)
class SessionSettings:
    """How the onnxruntime session is made; providers=None means what the deploy chose for the device."""

    providers: tuple[str, ...] | None = None
    allow_fallback: bool = False
    inter_op_threads: int | None = None
    graph_optimization: str = "all"  # disable | basic | extended | all
    execution_mode: str = "sequential"
    config_entries: Mapping[str, str] = field(default_factory=dict)  # add_session_config_entry pairs


# -- shipping files ---------------------------------------------------------------------------------

# Per Device object, what is known to be on it: remote path -> sha256. A new Device checks again (one command).
_runner_cache: weakref.WeakKeyDictionary[Device, dict[str, str]] = weakref.WeakKeyDictionary()
_inputs_cache: weakref.WeakKeyDictionary[Device, dict[str, str]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def runner_dir(device: Device) -> str:
    return f"{device.workdir}/runner"


def _forget(device: Device) -> None:
    with _cache_lock:
        _runner_cache.pop(device, None)
        _inputs_cache.pop(device, None)


def ship_runner(device: Device) -> str:
    """Make sure the runner (and hil_stats.py when hil/ondevice/stats.py exists) is current on the device; its path."""
    directory = runner_dir(device)
    runner, stats = f"{directory}/{RUNNER_NAME}", f"{directory}/{STATS_NAME}"
    wanted = {runner: RUNNER_SOURCE}
    if STATS_SOURCE.is_file():
        wanted[stats] = STATS_SOURCE
    digests = {remote: sha256_file(local) for remote, local in wanted.items()}
    with _cache_lock:
        if _runner_cache.get(device) == digests:
            return runner
    listing = device.run(f"mkdir -p {shlex.quote(directory)} && sha256sum {shlex.quote(runner)} "
                         f"{shlex.quote(stats)} 2>/dev/null; true", timeout=30, check=True).stdout
    there = {path: digest for digest, path in (line.split(None, 1) for line in listing.splitlines() if " " in line)}
    steps = []
    for remote, local in wanted.items():
        if there.get(remote) != digests[remote]:
            temp = f"{remote}.{uuid.uuid4().hex[:8]}.tmp"
            device.put(local, temp)
            steps.append(f"mv -f {shlex.quote(temp)} {shlex.quote(remote)}")  # atomic: no half file is ever run
            log.info("%s: shipping %s", device.name, remote)
    if stats not in wanted and stats in there:
        steps.append(f"rm -f {shlex.quote(stats)}")  # an old copy must not decide verdicts
    if steps:
        device.run(" && ".join(steps), timeout=30, check=True)
    with _cache_lock:
        _runner_cache[device] = digests
    return runner


def ship_inputs(device: Device, npz: Path) -> str:
    """Upload an input set once, named by its sha256; returns its path on the device."""
    digest = sha256_file(npz)
    remote = f"{device.workdir}/inputs/{digest}.npz"
    with _cache_lock:
        if _inputs_cache.get(device, {}).get(remote) == digest:
            return remote
    size = npz.stat().st_size
    out = device.run(f"stat -c %s {shlex.quote(remote)} 2>/dev/null; true", timeout=30).stdout.strip()
    if out != str(size):  # named by content and moved into place whole: the right size is the right file
        temp = f"{remote}.{uuid.uuid4().hex[:8]}.tmp"
        device.run(f"mkdir -p {shlex.quote(device.workdir)}/inputs", timeout=30, check=True)
        device.put(npz, temp)
        device.run(f"mv -f {shlex.quote(temp)} {shlex.quote(remote)}", timeout=30, check=True)
        log.info("%s: uploaded %s as %s", device.name, npz, remote)
    with _cache_lock:
        _inputs_cache.setdefault(device, {})[remote] = digest
    return remote


# -- running ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """One invocation: its run directory on the device and the raw outcome."""

    directory: str
    report: dict[str, Any]
    seconds: float


def session_config(deployed: DeployedModel, threads: int | None, settings: SessionSettings) -> dict[str, Any]:
    """The runner config's session part (model, providers, threads, options): every mode uses the same."""
    providers = settings.providers if settings.providers is not None else deployed.result.providers
    return {"model": deployed.path, "providers": list(providers or ("CPUExecutionProvider",)),
            "allow_fallback": settings.allow_fallback,
            "threads": {"intra_op": threads, "inter_op": settings.inter_op_threads},
            "graph_optimization": settings.graph_optimization, "execution_mode": settings.execution_mode,
            "session_config": dict(settings.config_entries)}


def _context(deployed: DeployedModel, report: Mapping[str, Any], seconds: float) -> RunContext:
    m = deployed.artifact.manifest
    return RunContext(deployed.device.name, deployed.device.config.emulated, m.name, m.version, m.sha256,
                      dict(report.get("env") or {}), seconds)


def runner_context(deployed: DeployedModel) -> dict[str, str]:
    """Device, model and version, as a RunnerError names where it happened."""
    m = deployed.artifact.manifest
    return {"device": deployed.device.name, "model": m.name, "version": m.version}


def _parse_report(stdout: str) -> dict[str, Any] | None:
    """The runner's one JSON document (the last line, should anything have slipped onto stdout before it)."""
    lines = stdout.strip().splitlines()
    for text in (stdout, lines[-1] if lines else ""):
        try:
            report = json.loads(text)
        except ValueError:
            continue
        if isinstance(report, dict) and "ok" in report:
            return report
    return None


def _oom_evidence(device: Device) -> str:
    """The cgroup's oom_kill counter, best effort (v2 memory.events, v1 memory.oom_control)."""
    script = ("for f in /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/memory.events "
              "/sys/fs/cgroup/memory$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)/memory.oom_control; "
              "do grep -h oom_kill \"$f\" 2>/dev/null; done; true")
    try:
        found = device.run(script, timeout=10).stdout.split()
    except Exception as exc:  # evidence only: never let it hide the real error
        return f"oom_kill counter unreadable: {exc}"
    return " ".join(found) or "oom_kill counter not readable"


def raise_for_report(deployed: DeployedModel, report: Mapping[str, Any]) -> None:
    """Raise the RunnerError that a runner report's error stands for (nothing when it has none)."""
    error = report.get("error") or {}
    category = error.get("category", "runtime")
    message = error.get("message", "the runner reported a failure")
    detail = error.get("detail", "")
    if category == CONFIG:
        raise RunnerConfigError(message, detail=detail, **runner_context(deployed))
    kind = BY_CATEGORY.get(category, RunnerError)
    raise kind(message, category=category if category in BY_CATEGORY else "runtime", detail=detail,
               **runner_context(deployed))


def _invoke(deployed: DeployedModel, config: dict[str, Any], timeout: float, *, keep_dir: bool = False) -> _Run:
    """Run the runner once with `config`; returns its successful report or raises the categorized error."""
    device = deployed.device
    for attempt in (1, 2):
        runner = ship_runner(device)
        directory = f"{runner_dir(device)}/runs/{uuid.uuid4().hex[:12]}"
        config = {**config, "deadline_s": max(1.0, timeout - max(5.0, min(WRAP_UP_S, timeout * 0.25)))}
        if "eval" in config:
            config["eval"] = {**config["eval"], "output": f"{directory}/outputs.npz"}
        d = shlex.quote(directory)
        cleanup = "" if keep_dir else f"; rm -rf {d}"
        command = (f"mkdir -p {d} && cat > {d}/config.json && "
                   f"{shlex.quote(device.config.python)} {shlex.quote(runner)} {d}/config.json; rc=$?{cleanup}; "
                   "exit $rc")
        started = time.monotonic()
        log.info("%s: running %s %s (%s mode)", device.name, deployed.artifact.manifest.name,
                 deployed.artifact.manifest.version, config.get("mode"))
        try:
            result = device.run(command, timeout=timeout, stdin=json.dumps(config).encode())
        except CommandTimeout as exc:
            _remove(device, directory)
            raise RunnerTimeout(f"the runner did not finish: killed after {time.monotonic() - started:.1f} s "
                                f"(timeout {timeout:g} s)",
                                detail=exc.stderr.strip()[-500:], **runner_context(deployed)) from None
        seconds = time.monotonic() - started
        report = _parse_report(result.stdout)
        if report is not None and report.get("ok"):
            return _Run(directory, report, seconds)
        if keep_dir:
            _remove(device, directory)
        if report is not None:
            raise_for_report(deployed, report)
        if result.exit_status in KILLED:
            raise OutOfMemory(f"the runner was killed by SIGKILL (exit {result.exit_status}) after {seconds:.1f} s: "
                              "the kernel's OOM killer, the model does not fit in the device's memory",
                              category=OUT_OF_MEMORY, detail=_oom_evidence(device), **runner_context(deployed))
        if result.exit_status == NO_SCRIPT and "can't open file" in result.stderr and attempt == 1:
            log.warning("%s: the runner is gone from the device (workdir wiped?); shipping it again", device.name)
            _forget(device)
            continue
        raise RunnerCrashed(f"the runner ended with exit status {result.exit_status} and no report",
                            detail=(result.stderr or result.stdout).strip()[-800:], exit_status=result.exit_status,
                            **runner_context(deployed))
    raise AssertionError("unreachable")


def _remove(device: Device, directory: str) -> None:
    try:
        device.run(f"rm -rf {shlex.quote(directory)}", timeout=30)
    except Exception as exc:  # cleanup must not hide what happened
        log.warning("%s: could not remove %s: %s", device.name, directory, exc)


def _loop_timeout(seconds: float) -> float:
    return STARTUP_S + WRAP_UP_S + 2 * seconds


def _inputs(device: Device, npz: Path | None, key: str | None,
            keys: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    if npz is None:
        return None
    return {"npz": ship_inputs(device, Path(npz)), "key": key, "keys": dict(keys or {})}


# -- public API -------------------------------------------------------------------------------------


def run_latency(deployed: DeployedModel, *, batch: int = 1, warmup: int = 50, min_iterations: int = 500,
                min_duration_s: float = 2.0, max_iterations: int | None = None, max_duration_s: float | None = None,
                threads: int | None = None, stop_when: StopWhen | None = None, seed: int = 0,
                inputs_npz: Path | None = None, input_key: str | None = None,
                input_keys: Mapping[str, str] | None = None, dims: Mapping[str, int] | None = None,
                session: SessionSettings | None = None, telemetry_interval_s: float = 0.5,
                timeout: float | None = None) -> LatencyRun:
    """Cold start, `warmup` runs, then a timed loop until both minimums are met (MLPerf LoadGen style).

    With `stop_when`, the loop continues past the minimums until the verdict is decided or a
    maximum is hit; without a maximum it is capped at 10x min_duration_s (at least 10 s).
    `threads` sets intra-op threads (None: onnxruntime's default). Inputs are rows of `inputs_npz`
    (`input_key` for a single-input model, or `input_keys`: input name -> array key), else seeded random
    data whose named dimensions take their values from `dims` (1 when not given).
    """
    if stop_when is not None and max_iterations is None and max_duration_s is None:
        # A duration cap, not a count: a count below what min_duration_s needs would end the loop before any look.
        max_duration_s = max(10 * min_duration_s, ADAPTIVE_MIN_CAP_S)
    config = {"mode": "latency", **session_config(deployed, threads, session or SessionSettings()),
              "batch": batch, "warmup": warmup, "min_iterations": min_iterations, "min_duration_s": min_duration_s,
              "max_iterations": max_iterations, "max_duration_s": max_duration_s, "seed": seed,
              "stop_when": asdict(stop_when) if stop_when else None, "telemetry_interval_s": telemetry_interval_s,
              "inputs": _inputs(deployed.device, inputs_npz, input_key, input_keys), "dims": dict(dims or {})}
    timeout = timeout or _loop_timeout(max_duration_s or max(min_duration_s, 1.0))
    run = _invoke(deployed, config, timeout)
    result = LatencyRun.parse(_context(deployed, run.report, run.seconds), run.report, batch)
    if result.stop.reason == "deadline":
        log.warning("%s: %s: the timed loop was cut short by the %g s timeout after %d iterations; raise timeout= "
                    "or lower min_iterations", result.device, deployed.artifact.manifest.name, timeout, result.count)
    log.info("%s: %s: %d iterations, p50 %.3f ms, p99 %.3f ms (%s)", result.device, deployed.artifact.manifest.name,
             result.count, result.p50_ms, result.p99_ms, result.stop.reason)
    return result


def run_eval(deployed: DeployedModel, inputs_npz: Path, input_key: str | None = None, *, batch: int = 64,
             input_keys: Mapping[str, str] | None = None, threads: int | None = None,
             session: SessionSettings | None = None, timeout: float | None = None) -> EvalRun:
    """Run every row of `inputs_npz[input_key]` (or, per input, of `input_keys`: input name -> array key)
    through the model on the device; outputs come back as arrays."""
    device = deployed.device
    remote_npz = ship_inputs(device, Path(inputs_npz))
    config = {"mode": "eval", **session_config(deployed, threads, session or SessionSettings()),
              "eval": {"npz": remote_npz, "key": input_key, "keys": dict(input_keys or {}), "batch": batch}}
    size_mib = Path(inputs_npz).stat().st_size / 2**20
    run = _invoke(deployed, config, timeout or STARTUP_S + WRAP_UP_S + 120 + 2 * size_mib, keep_dir=True)
    try:
        outputs = _fetch_npz(device, run.report["output_path"])
    finally:
        _remove(device, run.directory)
    return EvalRun.parse(_context(deployed, run.report, run.seconds), run.report, outputs)


def _fetch_npz(device: Device, remote: str) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="hil-eval-") as tmp:
        local = Path(tmp) / "outputs.npz"
        device.get(remote, local)
        with np.load(local, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}


def run_sweep(deployed: DeployedModel, batches: Sequence[int] = (1, 2, 4, 8, 16, 32), *, warmup: int = 5,
              min_iterations: int = 20, min_duration_s: float = 0.5, max_duration_s: float | None = None,
              threads: int | None = None, seed: int = 0, session: SessionSettings | None = None,
              inputs_npz: Path | None = None, input_keys: Mapping[str, str] | None = None,
              dims: Mapping[str, int] | None = None, timeout: float | None = None) -> SweepRun:
    """Throughput per batch size (items/s = batch x runs/s), each from a short timed loop; reports the best.
    Inputs as run_latency takes them (rows of `inputs_npz`, else random data of the `dims` sizes)."""
    config = {"mode": "sweep", **session_config(deployed, threads, session or SessionSettings()), "seed": seed,
              "inputs": _inputs(deployed.device, inputs_npz, None, input_keys), "dims": dict(dims or {}),
              "batch": min(batches), "sweep": {"batches": list(batches), "warmup": warmup,
                                               "min_iterations": min_iterations, "min_duration_s": min_duration_s,
                                               "max_duration_s": max_duration_s}}
    per_batch = max_duration_s or max(min_duration_s, 1.0)
    run = _invoke(deployed, config, timeout or STARTUP_S + WRAP_UP_S + len(batches) * (2 * per_batch + 10))
    return SweepRun.parse(_context(deployed, run.report, run.seconds), run.report)


def run_overhead(deployed: DeployedModel, *, min_iterations: int = 100_000, min_duration_s: float = 1.0,
                 timeout: float | None = None) -> OverheadRun:
    """The runner's timed loop around a no-op on the device: what the measurement itself costs."""
    config = {"mode": "overhead", "model": deployed.path, "min_iterations": min_iterations,
              "min_duration_s": min_duration_s}
    run = _invoke(deployed, config, timeout or _loop_timeout(min_duration_s))
    return OverheadRun.parse(_context(deployed, run.report, run.seconds), run.report)
