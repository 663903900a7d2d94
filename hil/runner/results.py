"""Typed results of runs on a device, built from the device runner's JSON report.

Latencies stay raw (every iteration, in ms, as a read-only numpy array); the summary properties
here are plain nearest-rank figures for logs and reports. Verdicts with confidence bounds are
hil.stats / hil.budgets' job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NS_PER_MS = 1e6


def nearest_rank(sorted_ms: np.ndarray, q: float) -> float:
    """The q-th percentile (0 < q <= 100) by nearest rank: an observed sample, never an interpolation."""
    if len(sorted_ms) == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_ms)))
    return float(sorted_ms[min(rank, len(sorted_ms)) - 1])


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class RunContext:
    """Which device ran which model, and with what on the device."""

    device: str
    emulated: bool
    model: str
    version: str
    sha256: str
    runner_env: Mapping[str, Any]  # python, numpy, onnxruntime versions, CPU count, clock resolution
    host_seconds: float  # the whole run as the host saw it, upload and transfer included


@dataclass(frozen=True)
class SessionFacts:
    providers: tuple[str, ...]  # session.get_providers(): what the session really has
    requested_providers: tuple[str, ...]
    fallback: str | None  # set when a requested provider was missing and fallback was allowed
    create_ms: float  # InferenceSession(...) alone
    op_providers: Mapping[str, str]  # op type -> provider that ran it (from an untimed profiled run)
    op_counts: Mapping[str, int]
    profiling_error: str | None
    threads: Mapping[str, int]
    graph_optimization: str

    @classmethod
    def parse(cls, report: Mapping[str, Any]) -> SessionFacts:
        s = report["session"]
        return cls(tuple(s["providers"]), tuple(s["requested_providers"]), s.get("fallback"), float(s["create_ms"]),
                   dict(report.get("op_providers") or {}), dict(report.get("op_counts") or {}),
                   report.get("profiling_error"), dict(s.get("threads") or {}), s.get("graph_optimization", "all"))


@dataclass(frozen=True)
class MemoryFacts:
    peak_rss_bytes: int  # the larger of ru_maxrss and VmHWM (they agree on Linux; either may be missing)
    ru_maxrss_bytes: int
    vm_hwm_bytes: int | None
    baseline_rss_bytes: int | None  # before the session existed: Python, numpy and onnxruntime alone

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_bytes / 2**20

    @classmethod
    def parse(cls, report: Mapping[str, Any]) -> MemoryFacts:
        m = report["memory"]
        base = (report.get("memory_baseline") or {}).get("vm_rss_bytes")
        peak = max(int(m["ru_maxrss_bytes"]), int(m.get("vm_hwm_bytes") or 0))
        return cls(peak, int(m["ru_maxrss_bytes"]), m.get("vm_hwm_bytes"), base)


@dataclass(frozen=True)
class CpuTime:
    user_s: float
    system_s: float
    wall_s: float


@dataclass(frozen=True)
class TelemetrySample:
    t_s: float  # since the timed loop started
    cpu_freq_khz: tuple[int, ...] | None
    governor: str | None
    temps_c: Mapping[str, float] | None
    loadavg: tuple[float, float, float] | None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> TelemetrySample:
        freq, load = raw.get("cpu_freq_khz"), raw.get("loadavg")
        return cls(float(raw["t_s"]), tuple(freq) if freq else None, raw.get("governor"),
                   dict(raw["temps_c"]) if raw.get("temps_c") else None, tuple(load) if load else None)


@dataclass(frozen=True)
class StopInfo:
    reason: str  # minimums_met | decided | max_iterations | max_duration | deadline
    stopped_early: bool  # an adaptive verdict was decided before the maximum
    verdict: str | None  # PASS / FAIL when decided
    detail: str | None
    checks: int
    note: str | None  # e.g. why adaptive stopping was unavailable

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> StopInfo:
        return cls(raw["reason"], bool(raw["stopped_early"]), raw.get("verdict"), raw.get("detail"),
                   int(raw.get("checks", 0)), raw.get("note"))


@dataclass(frozen=True, eq=False)
class LatencyRun:
    """One timed run: every iteration's latency plus what the device did meanwhile."""

    context: RunContext
    session: SessionFacts
    batch: int
    latencies_ms: np.ndarray  # raw, in run order, read-only
    first_inference_ms: float  # the first inference after session creation
    warmup_iterations: int
    stop: StopInfo
    memory: MemoryFacts
    cpu: CpuTime
    throttling: Mapping[str, int] | None  # cgroup cpu.stat deltas over the loop, where readable
    telemetry: tuple[TelemetrySample, ...]
    loop_overhead_ns: float | None  # per iteration, outside the timed region
    inputs: tuple[Mapping[str, Any], ...]
    seed: int | None
    raw: Mapping[str, Any] = field(repr=False)  # the runner's report, without the latency list

    @property
    def device(self) -> str:
        return self.context.device

    @property
    def cold_start_ms(self) -> float:
        """Session creation plus the first inference: what a freshly started service waits, and what the
        budget `cold_start_ms` judges. One meaning everywhere."""
        return self.session.create_ms + self.first_inference_ms

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        return nearest_rank(np.sort(self.latencies_ms), q)

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def p90_ms(self) -> float:
        return self.percentile(90)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)

    @property
    def mean_ms(self) -> float:
        return float(self.latencies_ms.mean()) if self.count else math.nan

    @property
    def items_per_s(self) -> float:
        total_s = float(self.latencies_ms.sum()) / 1000
        return self.count * self.batch / total_s if total_s else math.nan

    def summary(self) -> dict[str, float | int | str | None]:
        lat = np.sort(self.latencies_ms)
        return {"device": self.device, "model": f"{self.context.model} {self.context.version}",
                "batch": self.batch, "count": self.count, "min_ms": float(lat[0]) if self.count else None,
                "p50_ms": nearest_rank(lat, 50), "p90_ms": nearest_rank(lat, 90),
                "p99_ms": nearest_rank(lat, 99), "max_ms": float(lat[-1]) if self.count else None,
                "mean_ms": self.mean_ms, "cold_start_ms": self.cold_start_ms,
                "session_create_ms": self.session.create_ms, "first_inference_ms": self.first_inference_ms,
                "peak_rss_mib": self.memory.peak_rss_mib,
                "stop": self.stop.reason}

    @classmethod
    def parse(cls, context: RunContext, report: dict[str, Any], batch: int) -> LatencyRun:
        latencies = _frozen(np.asarray(report.pop("latency_ns"), dtype=np.int64) / NS_PER_MS)
        cpu = report["cpu"]
        return cls(
            context=context, session=SessionFacts.parse(report), batch=batch, latencies_ms=latencies,
            first_inference_ms=float(report["first_inference_ms"]),
            warmup_iterations=int(report["warmup"]["iterations"]),
            stop=StopInfo.parse(report["stop"]), memory=MemoryFacts.parse(report),
            cpu=CpuTime(cpu["loop_user_s"], cpu["loop_system_s"], cpu["loop_wall_s"]),
            throttling=report.get("throttling"),
            telemetry=tuple(TelemetrySample.parse(s) for s in report["telemetry"]["samples"]),
            loop_overhead_ns=report["loop"].get("overhead_ns_per_iteration"),
            inputs=tuple(report.get("inputs") or ()), seed=report.get("seed"), raw=report)


@dataclass(frozen=True, eq=False)
class EvalRun:
    """An input set run through the model on the device; outputs fetched back to the host."""

    context: RunContext
    session: SessionFacts
    count: int
    batch: int
    batch_ms: tuple[float, ...]  # each batch's run, as timed on the device
    total_ms: float
    items_per_s: float | None
    outputs: Mapping[str, np.ndarray]  # output name -> array with `count` rows
    memory: MemoryFacts
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def device(self) -> str:
        return self.context.device

    @classmethod
    def parse(cls, context: RunContext, report: dict[str, Any], outputs: Mapping[str, np.ndarray]) -> EvalRun:
        return cls(context, SessionFacts.parse(report), int(report["count"]), int(report["batch"]),
                   tuple(report["batch_ms"]), float(report["total_ms"]), report.get("items_per_s"),
                   {k: _frozen(v) for k, v in outputs.items()}, MemoryFacts.parse(report), report)


@dataclass(frozen=True)
class SweepPoint:
    batch: int
    iterations: int
    p50_ms: float
    mean_ms: float
    runs_per_s: float
    items_per_s: float  # batch * runs/s
    error: str | None = None  # set for the batch size that failed (and ended the sweep)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> SweepPoint:
        if "error" in raw:
            err = raw["error"]
            return cls(int(raw["batch"]), 0, math.nan, math.nan, 0.0, 0.0,
                       f"{err['category']}: {err['message']}: {err['detail']}")
        return cls(int(raw["batch"]), int(raw["iterations"]), float(raw["p50_ms"]), float(raw["mean_ms"]),
                   float(raw["runs_per_s"]), float(raw["items_per_s"]))


@dataclass(frozen=True)
class SweepRun:
    context: RunContext
    session: SessionFacts
    points: tuple[SweepPoint, ...]
    best_batch: int  # the batch size with the most items per second
    memory: MemoryFacts
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def device(self) -> str:
        return self.context.device

    @property
    def best(self) -> SweepPoint:
        return next(p for p in self.points if p.batch == self.best_batch)

    @classmethod
    def parse(cls, context: RunContext, report: dict[str, Any]) -> SweepRun:
        return cls(context, SessionFacts.parse(report), tuple(SweepPoint.parse(p) for p in report["points"]),
                   int(report["best_batch"]), MemoryFacts.parse(report), report)


@dataclass(frozen=True, eq=False)
class OverheadRun:
    """The runner's timed loop around a no-op: what hil's own timing costs on this device."""

    context: RunContext
    latencies_ns: np.ndarray  # the empty timed region: two clock reads and a call
    overhead_ns_per_iteration: float  # wall time per iteration outside the timed region
    wall_ns_per_iteration: float  # everything the loop does per iteration

    @classmethod
    def parse(cls, context: RunContext, report: dict[str, Any]) -> OverheadRun:
        loop = report["loop"]
        lat = _frozen(np.asarray(report["latency_ns"], dtype=np.int64))
        return cls(context, lat, float(loop["overhead_ns_per_iteration"]), loop["wall_ns"] / loop["iterations"])
