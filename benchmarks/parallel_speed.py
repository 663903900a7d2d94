"""Parallel speed: the deploy + smoke suites on 4 emulated devices, with pytest-xdist `-n 4` against `-n 1`.

Run as root from the repository root:

    .venv/bin/python benchmarks/parallel_speed.py [--repeat 2] [--no-warmup] [--no-serial] [--only LABEL]

Uses a private four-device lab "hilbench" on 10.77.8.0/24 (and no other addresses), written to a
temporary devices.toml, so it never touches the default lab or the test lab; the lab is always
taken down at the end (also on Ctrl-C or SIGTERM). lab_speed.py uses the same lab name: the two must
not run at once (this one refuses to start while the lab has devices it did not make).

Every configuration (plain pytest, `-n 1`, `-n 2`, `-n 4`, the same with `--dist loadgroup`, and as a
reference one plain pytest per device, all four at once: what a per-device grouping should give)
runs `pytest suites/test_deploy.py suites/test_smoke.py` --repeat times. The configurations take
turns in alternating order, and each run waits (--quiet-wait) for other work on the host to calm
down, so load from elsewhere on a shared machine hits them alike. Before each run the devices'
deployed models are removed, so every run deploys (and sends) the same.

Prints the median wall time per configuration with its speed-up over `-n 1` and over plain pytest;
what the host's CPUs did meanwhile (busy share from /proc/stat; CPU seconds of the pytest processes,
of the devices' cgroups and of everything else; time the devices' CPU quota held them back;
runnable tasks; load average); where the wall time went (start to first test, lease acquisitions
and waits, the busiest device); and checks that no test failed and that no two tests ever held one
device at once (lease holdings and test calls, per device, never overlap in time). Timings are
reported, never asserted: exits 0 whether the aim is met or not, 1 when a run produced no results,
2 when the lab could not be used.

This file is also the pytest plugin of the runs it starts (`-p parallel_speed`, active only with
HILBENCH_TIMELINE set): it records each test's phases, worker and lease holdings as JSON lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger("benchmarks.parallel_speed")

REPO = Path(__file__).resolve().parents[1]
LAB = "hilbench"
SUBNET = "10.77.8.0/24"
DEVICE_NAMES = tuple(f"bench-{i}" for i in range(1, 5))
WORKDIR = "/var/lib/hil"
SUITES = ("suites/test_deploy.py", "suites/test_smoke.py")
TARGET_SPEEDUP = 1.8  # -n 4 over -n 1
RUN_TIMEOUT_S = 900.0
SAMPLE_EVERY_S = 0.2
TIMELINE_ENV = "HILBENCH_TIMELINE"
LEASE_SAMPLES = 20
QUIET_BUSY = 0.25  # before a run, wait until the host is less busy than this (share of all CPUs)
QUIET_WAIT_S = 30.0
CONNECT_SAMPLES = 3


@dataclass(frozen=True)
class Setup:
    """One way of running the suite."""

    label: str
    args: tuple[str, ...]
    workers: int  # xdist workers; 0: no xdist
    per_device: bool = False  # one plain pytest process per device (--hil-device), all at once


PER_DEVICE = "4 x pytest --hil-device"
SETUPS = (
    Setup("serial (no xdist)", (), 0),
    Setup("-n 1", ("-n", "1"), 1),
    Setup("-n 2", ("-n", "2"), 2),
    Setup("-n 4", ("-n", "4"), 4),
    Setup("-n 2 --dist loadgroup", ("-n", "2", "--dist", "loadgroup"), 2),
    Setup("-n 4 --dist loadgroup", ("-n", "4", "--dist", "loadgroup"), 4),
    # What --dist loadgroup should amount to (every device's tests in one process, the devices side by side),
    # without xdist: a reference for the grouping, not a way hil is meant to be run.
    Setup(PER_DEVICE, (), 0, per_device=True),
)


def inventory_toml(directory: Path, serial: bool = True) -> str:
    """The private lab. [deploy] paths resolve against the toml's directory; artifact globs must be relative
    (pathlib refuses absolute glob patterns), so the demo models are reached from the temp dir with '..'."""
    models = os.path.relpath(REPO / "fixtures" / "models", directory)
    key = REPO / "fixtures" / "keys" / "demo-ed25519.pub"
    devices = "".join(f"""
[[devices]]
name = "{name}"
tags = ["bench"]
emulated = true
cpus = 0.5
memory = "384MiB"
disk = "96MiB"
workdir = "{WORKDIR}"
{"" if serial else "serial = false"}
""" for name in DEVICE_NAMES)
    return f"""[lab]
name = "{LAB}"
subnet = "{SUBNET}"

[deploy]
trusted_keys = [{json.dumps(str(key))}]
artifacts = [{json.dumps(models + "/*")}]
{devices}"""


# -- the pytest plugin of the measured runs ---------------------------------------------------------

# out: the controller's timeline file; acquired: [device, asked, granted] since the last setup report;
# held: leases held now by id; released: [device, asked, granted, released] since the last teardown report.
_plugin: dict[str, Any] = {"out": None, "acquired": [], "held": {}, "released": []}


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(TIMELINE_ENV)
    if not path:
        return
    if not hasattr(config, "workerinput"):
        _plugin["out"] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in pytest_unconfigure)
    from hil.lease import Lease

    if getattr(Lease, "_hilbench_timed", False):
        return
    acquire, release = Lease.acquire, Lease.release

    def timed_acquire(self: Lease) -> Lease:
        started = time.time()
        got = acquire(self)
        entry = [self.device.name, started, time.time()]
        _plugin["acquired"].append(entry)
        _plugin["held"][id(self)] = entry
        return got

    def timed_release(self: Lease) -> None:
        # Taken before the release is sent and after the grant arrived: inside the real holding on the device,
        # so two holdings that overlap here overlapped there.
        held = _plugin["held"].pop(id(self), None)
        if held is not None:
            _plugin["released"].append([*held, time.time()])
        release(self)

    Lease.acquire, Lease.release = timed_acquire, timed_release  # type: ignore[method-assign]
    Lease._hilbench_timed = True  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _plugin["out"] is not None:
        _plugin["out"].close()
        _plugin["out"] = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if os.environ.get(TIMELINE_ENV):
        report.user_properties.append(("bench.worker", os.environ.get("PYTEST_XDIST_WORKER", "main")))
        if call.when == "setup":  # leases taken while setting this test up
            report.user_properties.append(("bench.acquired", json.dumps(_plugin["acquired"])))
            _plugin["acquired"] = []
        if call.when == "teardown":  # lease holdings that ended by now
            report.user_properties.append(("bench.released", json.dumps(_plugin["released"])))
            _plugin["released"] = []
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    out = _plugin["out"]
    if out is None:
        return
    props = dict(report.user_properties)
    out.write(json.dumps({
        "nodeid": report.nodeid, "when": report.when, "start": report.start, "stop": report.stop,
        "outcome": report.outcome, "worker": props.get("bench.worker"), "device": props.get("hil.device"),
        "acquired": json.loads(props.get("bench.acquired", "[]")) if report.when == "setup" else [],
        "released": json.loads(props.get("bench.released", "[]")) if report.when == "teardown" else [],
        "deploy_bytes": props.get("hil.deploy.transferred_bytes"), "deploy_s": props.get("hil.deploy.seconds"),
    }) + "\n")
    out.flush()


# -- host and device CPU ------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def _cpu_dir(device: str) -> Path:
    v2 = Path("/sys/fs/cgroup") / f"{LAB}-{device}"
    return v2 if v2.is_dir() else Path("/sys/fs/cgroup/cpu") / f"{LAB}-{device}"


def device_cpu() -> tuple[float, float]:
    """(CPU seconds, seconds throttled by the quota) of the four devices, summed.

    cgroup v1's cpu controller counts no usage, so CPU time is the sum of utime+stime+cutime+cstime of
    the processes in the devices' groups: a process that ended is in its (live) parent's cutime/cstime.
    """
    cpu = throttled = 0.0
    for name in DEVICE_NAMES:
        group = _cpu_dir(name)
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines() if line.strip())
        throttled += int(stat.get("throttled_time", 0)) / 1e9 + int(stat.get("throttled_usec", 0)) / 1e6
        if "usage_usec" in stat:  # cgroup v2
            cpu += int(stat["usage_usec"]) / 1e6
            continue
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu += sum(int(x) for x in parts[11:15]) / CLK_TCK  # utime stime cutime cstime
    return cpu, throttled


def wait_quiet(max_wait: float, busy_below: float = QUIET_BUSY, window: float = 1.0) -> float:
    """Wait (at most max_wait s) until the host's CPUs are mostly idle over `window`: other work on a shared machine
    would otherwise land in one configuration's run and not another's. Returns the last busy share seen."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, total0 = host_cpu()
        time.sleep(window)
        busy1, total1 = host_cpu()
        share = (busy1 - busy0) / max(total1 - total0, 1e-9)
        if share < busy_below or time.monotonic() >= deadline:
            return share


class RunnableSampler:
    """Samples the number of runnable tasks (procs_running in /proc/stat) while a run goes on."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            for line in Path("/proc/stat").read_text().splitlines():
                if line.startswith("procs_running"):
                    self.samples.append(max(0, int(line.split()[1]) - 1))  # not counting this sampler
                    break

    def __enter__(self) -> RunnableSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- one run --------------------------------------------------------------------------------------------


@dataclass
class Run:
    setup: Setup
    wall: float
    exit_code: int
    counts: dict[str, int]
    failures: list[str]
    host_busy_s: float
    host_total_s: float
    pytest_cpu_s: float
    device_cpu_s: float
    throttled_s: float
    runnable: list[int]
    load1: float
    first_test_s: float | None = None  # from launch to the first test's setup
    last_test_s: float | None = None  # from the last teardown to exit
    lease_acquires: list[float] = field(default_factory=list)  # seconds per acquire (round trip + wait)
    lease_overlaps: int = 0  # pairs of lease holdings of one device that overlap in time
    lease_holdings: int = 0
    call_overlaps: int = 0  # pairs of test calls on one device that overlap
    test_overlaps: int = 0  # pairs of whole tests (setup start..teardown stop, summary.json) that overlap
    workers_per_device: dict[str, int] = field(default_factory=dict)
    device_busy_s: dict[str, float] = field(default_factory=dict)  # per device, sum of whole-test durations
    deploys_sending: int = 0

    @property
    def passed(self) -> int:
        return self.counts.get("passed", 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def busy_share(self) -> float:
        return self.host_busy_s / self.host_total_s if self.host_total_s else 0.0

    @property
    def other_cpu_s(self) -> float:
        return max(0.0, self.host_busy_s - self.pytest_cpu_s - self.device_cpu_s)


def _overlaps(intervals: list[tuple[float, float]], slack: float = 0.0) -> int:
    """Pairs of intervals that overlap by more than `slack` seconds."""
    ordered = sorted(intervals)
    count = 0
    for i, (_start, stop) in enumerate(ordered):
        for other_start, _ in ordered[i + 1:]:
            if other_start >= stop - slack:
                break
            count += 1
    return count


def _read_timeline(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def analyse(run: Run, launched: float, ended: float, timeline: list[dict[str, Any]],
            tests: list[dict[str, Any]]) -> None:
    run.counts = defaultdict(int)
    for test in tests:
        run.counts[test["outcome"]] += 1
    run.counts = dict(run.counts)
    run.failures = [f"{t['nodeid']}: {t['outcome']}: {(t.get('message') or '')[:200]}" for t in tests
                    if t["outcome"] != "passed"]
    # Whole tests as summary.json has them (setup start .. teardown stop, millisecond resolution).
    by_device: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for test in tests:
        if test.get("device") and test.get("start") and test.get("stop"):
            start = _parse_iso(test["start"])
            stop = _parse_iso(test["stop"])
            by_device[test["device"]].append((start, stop))
    run.test_overlaps = sum(_overlaps(v, slack=0.001) for v in by_device.values())
    run.device_busy_s = {d: sum(b - a for a, b in v) for d, v in sorted(by_device.items())}
    if not timeline:
        return
    run.first_test_s = min(e["start"] for e in timeline) - launched
    run.last_test_s = ended - max(e["stop"] for e in timeline)
    calls: dict[str, list[tuple[float, float]]] = defaultdict(list)
    workers: dict[str, set[str]] = defaultdict(set)
    holdings: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in timeline:
        if e["device"]:
            workers[e["device"]].add(e["worker"])
        if e["when"] == "call" and e["device"]:
            calls[e["device"]].append((e["start"], e["stop"]))
        for _device, asked, granted in e["acquired"]:
            run.lease_acquires.append(granted - asked)
        for device, _asked, granted, released in e["released"]:
            holdings[device].append((granted, released))
        if e["when"] == "setup" and e["deploy_bytes"] not in (None, "0"):
            run.deploys_sending += 1
    run.call_overlaps = sum(_overlaps(v) for v in calls.values())
    run.lease_overlaps = sum(_overlaps(v) for v in holdings.values())
    run.lease_holdings = sum(len(v) for v in holdings.values())
    run.workers_per_device = {d: len(w) for d, w in sorted(workers.items())}


def _parse_iso(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def reset_devices(inventory: Any) -> None:
    """Remove what the deploy suite put on the devices, so every run deploys (and sends) the same."""
    from hil.device import Device

    for config in inventory.devices:
        device = Device(config)
        try:
            device.run(f"rm -rf {shlex.quote(config.workdir)}/models {shlex.quote(config.workdir)}/smoke-*.bin",
                       timeout=60, check=True, root=True)
        finally:
            device.close()


def build_commands(setup: Setup, devices: Path, report_dir: Path) -> list[tuple[list[str], Path]]:
    """The pytest command line(s) of a run, each with its report directory."""
    base = [sys.executable, "-m", "pytest", *SUITES, "--hil-devices", str(devices), "--hil-no-lab",
            "-p", "no:cacheprovider", "-p", "parallel_speed", "-q"]
    if not setup.per_device:
        return [([*base, "--hil-report-dir", str(report_dir), *setup.args], report_dir)]
    return [([*base, "--hil-report-dir", str(report_dir / name), "--hil-device", name, *setup.args], report_dir / name)
            for name in DEVICE_NAMES]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_once(setup: Setup, devices: Path, tmp: Path, index: int, inventory: Any, quiet_wait: float = 0.0) -> Run:
    reset_devices(inventory)
    if quiet_wait > 0:
        share = wait_quiet(quiet_wait)
        if share >= QUIET_BUSY:
            log.warning("the host is still %.0f%% busy with other work after %.0f s; measuring anyway",
                        share * 100, quiet_wait)
    commands = build_commands(setup, devices, tmp / f"reports-{index}")
    timelines = [tmp / f"timeline-{index}-{i}.jsonl" for i in range(len(commands))]
    outputs = [tmp / f"pytest-{index}-{i}.log" for i in range(len(commands))]
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")) if p)
    log.info("run %d: %s", index, setup.label)
    busy0, total0 = host_cpu()
    dev0, thr0 = device_cpu()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        sampler = stack.enter_context(RunnableSampler())
        launched = time.time()
        started = time.perf_counter()
        try:
            for (command, _), timeline, output in zip(commands, timelines, outputs, strict=True):
                env = {**os.environ, "PYTEST_ADDOPTS": "", TIMELINE_ENV: str(timeline), "PYTHONPATH": path}
                out = stack.enter_context(output.open("w"))
                procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL))
            deadline = time.monotonic() + RUN_TIMEOUT_S
            codes = [proc.wait(timeout=max(0.1, deadline - time.monotonic())) for proc in procs]
        except BaseException:
            _stop(procs)
            raise
        wall = time.perf_counter() - started
        ended = time.time()
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = host_cpu()
    dev1, thr1 = device_cpu()
    pytest_cpu = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    code = max(codes)
    run = Run(setup, wall, code, {}, [], busy1 - busy0, total1 - total0, pytest_cpu, dev1 - dev0, thr1 - thr0,
              sampler.samples, os.getloadavg()[0])
    tests: list[dict[str, Any]] = []
    for _, report_dir in commands:
        summary_path = report_dir / "summary.json"
        if summary_path.is_file():
            tests += json.loads(summary_path.read_text()).get("tests", [])
    analyse(run, launched, ended, [e for t in timelines for e in _read_timeline(t)], tests)
    for (_, _), output, proc in zip(commands, outputs, procs, strict=True):
        if proc.returncode != 0:
            log.error("%s exited %d (see %s):\n%s", setup.label, proc.returncode, output,
                      output.read_text(errors="replace")[-1500:])
    log.info("  %.1f s, exit %d, %s", wall, code, ", ".join(f"{v} {k}" for k, v in run.counts.items()) or "no tests")
    return run


# -- extra measurements: what a lease and a connection cost -----------------------------------------------


def lease_and_connect_costs(inventory: Any) -> tuple[list[float], list[float], list[float]]:
    """On an idle device: (lease acquire+release s, one Device.run s, connect+sweep+health s) samples."""
    from hil.device import Device
    from hil.faults.ledger import sweep
    from hil.lease import Lease

    config = inventory.get(DEVICE_NAMES[0])
    device = Device(config)
    leases, runs, connects = [], [], []
    try:
        device.run("true", check=True)
        for _ in range(LEASE_SAMPLES):
            started = time.perf_counter()
            with Lease(device, "hilbench-probe", 30):
                pass
            leases.append(time.perf_counter() - started)
            started = time.perf_counter()
            device.run("true", check=True)
            runs.append(time.perf_counter() - started)
    finally:
        device.close()
    for _ in range(CONNECT_SAMPLES):  # what a worker pays the first time it uses a device (HilSession._ready)
        started = time.perf_counter()
        fresh = Device(config)
        try:
            sweep(fresh)
            fresh.health()
            fresh.facts()
        finally:
            fresh.close()
        connects.append(time.perf_counter() - started)
    return leases, runs, connects


# -- reporting --------------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(runs: list[Run], costs: tuple[list[float], list[float], list[float]] | None, console: bool) -> None:
    cores = os.cpu_count() or 1
    by_setup: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_setup[run.setup.label].append(run)
    medians = {label: _median([r.wall for r in rs]) for label, rs in by_setup.items()}
    n1 = medians.get("-n 1")
    serial = medians.get("serial (no xdist)")
    repeat = max(len(rs) for rs in by_setup.values())
    tests = max((r.total for r in runs), default=0)
    print(f"\npytest {' '.join(SUITES)} on {len(DEVICE_NAMES)} emulated devices (0.5 CPU each, "
          f"{'with' if console else 'without'} serial "
          f"console) of lab {LAB}: "
          f"{tests} tests; {repeat} run(s) per configuration, taking turns; {cores} host CPUs\n")
    print(f"{'configuration':24} {'median s':>8} {'min s':>6} {'max s':>6} {'vs -n 1':>8} {'vs serial':>9} "
          f"{'passed':>9}")
    for label, rs in by_setup.items():
        med = medians[label]
        passed = f"{min(r.passed for r in rs)}/{max(r.total for r in rs)}"
        print(f"{label:24} {med:8.1f} {min(r.wall for r in rs):6.1f} {max(r.wall for r in rs):6.1f} "
              f"{(n1 / med if n1 else float('nan')):7.2f}x {(serial / med if serial else float('nan')):8.2f}x "
              f"{passed:>9}")

    print(f"\nwhere the CPU went (medians per run; CPU seconds; {cores} cores = {cores:.0f} CPU-s per wall second):")
    print(f"{'configuration':24} {'host busy':>9} {'pytest':>7} {'devices':>8} {'other':>6} {'throttled':>9} "
          f"{'runnable':>8} {'>cores':>6} {'load1':>5} {'floor s':>7}")
    for label, rs in by_setup.items():
        runnable = [s for r in rs for s in r.runnable]
        over = sum(s > cores for s in runnable) / len(runnable) if runnable else float("nan")
        floor = _median([(r.pytest_cpu_s + r.device_cpu_s) / cores for r in rs])
        print(f"{label:24} {_median([r.busy_share for r in rs]):8.0%} {_median([r.pytest_cpu_s for r in rs]):7.1f} "
              f"{_median([r.device_cpu_s for r in rs]):8.1f} {_median([r.other_cpu_s for r in rs]):6.1f} "
              f"{_median([r.throttled_s for r in rs]):9.1f} {_median(runnable):8.1f} {over:6.0%} "
              f"{_median([r.load1 for r in rs]):5.2f} {floor:7.1f}")
    print("  host busy: share of all cores busy (/proc/stat); pytest: CPU of the pytest processes (controller and "
          "workers);\n  devices: CPU inside the devices' cgroups (sshd, command servers, python/onnxruntime); other: "
          "the rest of the\n  host (other work on this machine, kernel); throttled: device time held back by its "
          "0.5-CPU quota;\n  runnable: median runnable tasks (sampled every 0.2 s), >cores: share of samples with "
          "more runnable\n  tasks than cores; floor: (pytest + devices CPU) / cores, the wall time this work needs "
          "even perfectly spread")

    print("\nwhere the wall time went (medians per run):")
    print(f"{'configuration':24} {'to 1st test':>11} {'after last':>10} {'leases':>6} {'acquire med':>11} "
          f"{'acquire sum':>11} {'busiest device':>14} {'workers/device':>14}")
    for label, rs in by_setup.items():
        acquires = [a for r in rs for a in r.lease_acquires]
        per_run_sum = _median([sum(r.lease_acquires) for r in rs])
        busiest = _median([max(r.device_busy_s.values(), default=0.0) for r in rs])
        spread = sorted({n for r in rs for n in r.workers_per_device.values()})
        print(f"{label:24} {_median([r.first_test_s for r in rs if r.first_test_s is not None]):10.1f}s "
              f"{_median([r.last_test_s for r in rs if r.last_test_s is not None]):9.1f}s "
              f"{_median([len(r.lease_acquires) for r in rs]):6.0f} {_median(acquires) * 1000:9.0f}ms "
              f"{per_run_sum:10.1f}s {busiest:13.1f}s {'-'.join(str(n) for n in spread) or '?':>14}")
    print("  to 1st test: launch to the first test's setup (interpreter, imports, xdist workers, collection);\n"
          "  leases/acquire: per-test leases taken (xdist) and their acquire time (SSH channel + flock, plus "
          "waiting\n  for another worker's test on the same device); busiest device: sum of its tests' setup..teardown;"
          "\n  workers/device: how many workers ran tests of one device")

    if costs is not None:
        leases, runs_, connects = costs
        print(f"\non an idle device: lease acquire+release median {_median(leases) * 1000:.0f} ms "
              f"(Device.run('true') {_median(runs_) * 1000:.1f} ms); a worker's first use of a device "
              f"(connect, fault sweep, health, facts) median {_median(connects):.2f} s")

    if serial and runs:
        serial_runs = by_setup["serial (no xdist)"]
        busiest = _median([max(r.device_busy_s.values(), default=0.0) for r in serial_runs])
        start = _median([r.first_test_s for r in serial_runs if r.first_test_s is not None])
        ideal = start + busiest
        print(f"\nideal -n 4 (each device's serial share run side by side, no CPU contention, no extra worker "
              f"cost): {start:.1f} s start + {busiest:.1f} s busiest device = {ideal:.1f} s, i.e. "
              f"{serial / ideal:.2f}x over serial")

    failed = [r for r in runs if r.exit_code != 0 or r.counts.get("failed") or r.counts.get("infrastructure")
              or r.total == 0]
    print()
    for label in ("-n 4", "-n 4 --dist loadgroup", PER_DEVICE):
        if n1 and label in medians:
            ratio = n1 / medians[label]
            verdict = "MET" if ratio >= TARGET_SPEEDUP else "MISSED"
            broken = [r for r in failed if r.setup.label in (label, "-n 1")]
            if broken:
                verdict += " (NOT COMPARABLE: runs with failed tests, see below; a device taken out skips its tests)"
            print(f"{label} vs -n 1: {ratio:.2f}x: aim >= {TARGET_SPEEDUP}x {verdict}")
    if "-n 4" in medians and "-n 4 --dist loadgroup" in medians:
        print(f"--dist loadgroup vs load at -n 4: {medians['-n 4'] / medians['-n 4 --dist loadgroup']:.2f}x")
    for label, rs in by_setup.items():
        if "loadgroup" in label and any(n > 1 for r in rs for n in r.workers_per_device.values()):
            print(f"  {label}: tests of one device ran on several workers: loadgroup did not group them. pytest-xdist "
                  "writes the group\n  into item._nodeid, which pytest >= 9.2 no longer reads (pytest-xdist #1386): "
                  "every test is then a group of its own")

    print(f"\nno test failed in any run: {'yes' if not failed else 'NO'} "
          f"({len(runs)} runs, {sum(r.total for r in runs)} test results)")
    print("  outcomes per configuration: " + "; ".join(
        f"{label} " + "/".join(",".join(f"{v} {k}" for k, v in sorted(r.counts.items())) for r in rs)
        for label, rs in by_setup.items()))
    for run in failed:
        print(f"  {run.setup.label}: exit {run.exit_code}, {run.counts}")
        for line in [f for f in run.failures if ": skipped: " not in f][:6]:
            print(f"    {line}")
    xdist = [r for r in runs if r.setup.workers]
    holdings = sum(r.lease_holdings for r in xdist)
    lease_bad = sum(r.lease_overlaps for r in xdist)
    call_bad = sum(r.call_overlaps for r in runs)
    print(f"one test at a time per device: lease holdings that overlap on one device: {lease_bad} "
          f"(of {holdings} in {len(xdist)} xdist runs); test calls that overlap on one device: {call_bad}: "
          f"{'OK' if lease_bad == call_bad == 0 else 'VIOLATED'}")
    print("whole tests (summary.json setup start..teardown stop) overlapping on one device, per run: "
          + "; ".join(f"{label} {'/'.join(str(r.test_overlaps) for r in rs)}" for label, rs in by_setup.items()))
    print("  (a test's setup may start, and wait for the lease, while another worker's test of that device still "
          "runs;\n  only with one worker per device (serial, loadgroup) must this be 0)")
    print(f"deploys that sent bytes per run: {sorted({r.deploys_sending for r in runs})} "
          "(the same in every run: each starts from devices without models)")
    sys.stdout.flush()


# -- main ---------------------------------------------------------------------------------------------------


def _foreign_namespaces() -> list[str]:
    from hil.lab import network

    ours = {network.netns_name(LAB, name) for name in DEVICE_NAMES}
    return [ns for ns in network.list_netns(LAB) if ns not in ours]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the benchmark like Ctrl-C does: through the finally blocks that take the lab down."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration (default: %(default)s)")
    parser.add_argument("--only", action="append", default=[], metavar="LABEL",
                        help="run only this configuration (repeatable): " + ", ".join(s.label for s in SETUPS))
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs, reports, timelines)")
    parser.add_argument("--quiet-wait", type=float, default=QUIET_WAIT_S, metavar="SECONDS",
                        help="before each run, wait up to this long for other work on the host to calm down "
                             f"(below {QUIET_BUSY * 100:.0f}%% busy; default: %(default)s; 0: do not wait)")
    parser.add_argument("--no-serial", action="store_true",
                        help="devices without a serial console (`serial = false`; the serial smoke test skips)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    unknown = [o for o in args.only if o not in {s.label for s in SETUPS}]
    if unknown:
        parser.error(f"unknown configuration(s): {unknown}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    args = parse_args(argv)
    from hil.config import load_inventory
    from hil.errors import HilError
    from hil.lab import EmulatedLab

    setups = [s for s in SETUPS if not args.only or s.label in args.only]
    tmp = Path(tempfile.mkdtemp(prefix="hil-parallel-"))
    devices = tmp / "devices.toml"
    devices.write_text(inventory_toml(tmp, serial=not args.no_serial))
    inventory = load_inventory(devices)
    foreign = _foreign_namespaces()
    if foreign:
        log.error("lab %s has devices this benchmark did not make (%s): another benchmark (lab_speed.py?) is using "
                  "it; try again when it is done", LAB, ", ".join(foreign))
        return 2
    lab = EmulatedLab(inventory)
    runs: list[Run] = []
    costs = None
    try:
        with sigterm_as_interrupt():
            try:
                log.info("bringing lab %s up (%s, %d devices)", LAB, SUBNET, len(DEVICE_NAMES))
                lab.up()
                if not args.no_warmup:  # page cache, device-side imports, pyc files: not part of any measurement
                    log.info("warm-up run (untimed)")
                    run_once(Setup("warm-up -n 4", ("-n", "4"), 4), devices, tmp, 0, inventory)
                index = 1
                for round_ in range(args.repeat):
                    for setup in setups if round_ % 2 == 0 else list(reversed(setups)):
                        runs.append(run_once(setup, devices, tmp, index, inventory, args.quiet_wait))
                        index += 1
                costs = lease_and_connect_costs(inventory)
            except (HilError, subprocess.TimeoutExpired) as exc:
                log.error("%s", exc)
                return 2
            finally:
                log.info("taking lab %s down", LAB)
                lab.down()
                if not args.keep_dir:
                    import shutil

                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    log.info("kept %s", tmp)
    except KeyboardInterrupt:
        log.error("interrupted; lab %s is down", LAB)
        return 130
    report(runs, costs, console=not args.no_serial)
    unmeasured = [r.setup.label for r in runs if r.total == 0]
    if unmeasured:
        log.error("runs that produced no test results: %s", ", ".join(unmeasured))
    return 1 if unmeasured else 0


if __name__ == "__main__":
    sys.exit(main())
