"""`hil bench`: the latency suite's measurement for one device and artifact, judged against its budgets.

The shell command prints what this returns; suites/ share its thread sizing.
"""

from __future__ import annotations

import math
from typing import Any

from hil.budgets import (
    BudgetExceeded,
    BudgetSpec,
    Context,
    InconclusiveMeasurement,
    Measurement,
    Verdict,
    check_budget,
    check_cv,
    check_percentile,
    combine,
)
from hil.device import Device
from hil.errors import ConfigError
from hil.runner import LatencyRun
from hil.stats import AdaptiveStop, LatencySummary

CONFIDENCE = 0.99


def threads_for(device: Device) -> int:
    """Intra-op threads: the CPUs the device really has, its quota when smaller than its CPU count.

    onnxruntime's default is one thread per core it sees; in a CPU-limited cgroup the extra threads
    spin on quota the device does not have and show up as throttling stalls.
    """
    facts = device.facts()
    usable = min(facts.cpu_count, facts.cpu_quota) if facts.cpu_quota else facts.cpu_count
    return max(1, math.floor(usable))


def percentile_limits(spec: BudgetSpec, extra: tuple[float, float] | None = None) -> list[tuple[float, float, str]]:
    """(q, limit_ms, source) for every percentile budget: the manifest's for the device's tags, then `extra`
    (a limit given on the command line)."""
    limits = [(q, limit, spec.source(f"latency_p{q:g}_ms") or "manifest")
              for q, limit in sorted(spec.percentile_limits.items())]
    if extra is not None:
        limits.append((extra[0], extra[1], "--limit-ms"))
    return limits


def adaptive_stop(limits: list[tuple[float, float, str]], max_iterations: int) -> AdaptiveStop | None:
    """The adaptive stop, driven by the highest percentile (the tail takes the most samples to decide); on a
    tie by --limit-ms (listed last). None without a percentile budget: a fixed run."""
    if not limits:
        return None
    q, limit, _ = max(reversed(limits), key=lambda x: x[0])
    try:
        return AdaptiveStop(q, limit, CONFIDENCE, max_samples=max_iterations)
    except ValueError as exc:  # e.g. --max-iterations too small to ever decide that percentile
        raise ConfigError(f"bench: {exc}") from None


def verdicts(run: LatencyRun, summary: LatencySummary, spec: BudgetSpec,
                    limits: list[tuple[float, float, str]], stop: AdaptiveStop | None) -> list[tuple[Measurement, str]]:
    """(measurement, source) for every budget the run can judge, percentiles on the adaptive run's last look."""
    looks = len(stop.looks) if stop is not None else 1
    last = stop.last_look(run.count) if stop is not None else None
    judged = run.latencies_ms[:last] if last is not None else run.latencies_ms
    cv = check_cv(judged)
    out = [(combine(check_percentile(judged, q, limit, CONFIDENCE, looks=looks,
                                           name=f"latency_p{q:g}_ms"), cv, judged, looks), source)
           for q, limit, source in limits]
    singles = (("cold_start_ms", run.cold_start_ms),
               ("memory_mib", run.memory.peak_rss_mib), ("throughput_ips", summary.throughput_ips))
    for key, value in singles:  # unit and ceiling-or-floor from the registry (hil.checks)
        if getattr(spec, key) is not None:
            out.append((check_budget(key, value, getattr(spec, key)), spec.source(key) or "manifest"))
    return out


def document(run: LatencyRun, summary: LatencySummary, context: Context, threads: int,
                    verdicts: list[tuple[Measurement, str]], stop: AdaptiveStop | None) -> dict[str, Any]:
    worst = next((v for v in (Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.PASS)
                  if any(m.verdict is v for m, _ in verdicts)), None)
    errors = {Verdict.FAIL: BudgetExceeded, Verdict.INCONCLUSIVE: InconclusiveMeasurement}
    return {
        "device": context.device, "emulated": context.emulated, "model": context.model, "version": context.version,
        "sha256": context.sha256, "onnxruntime": context.onnxruntime, "providers": list(run.session.providers),
        "fallback": run.session.fallback, "batch": run.batch, "threads": threads, "latency": summary.to_dict(),
        "inputs": [dict(i) for i in run.inputs],  # what was fed: names, dtypes and shapes
        "cold_start_ms": run.cold_start_ms, "session_create_ms": run.session.create_ms,
        "first_inference_ms": run.first_inference_ms, "peak_rss_mib": run.memory.peak_rss_mib,
        "stop": {"reason": run.stop.reason, "adaptive": stop is not None,
                 "looks": list(stop.looks) if stop is not None else [], "note": run.stop.note},
        "verdicts": [{**m.to_dict(), "source": source} for m, source in verdicts],
        "verdict": worst.value if worst is not None else None, "context": str(context),
        "messages": [str(errors[m.verdict](m, context)) for m, _ in verdicts if m.verdict in errors],
    }
