"""Running models on the device: the host-side driver that ships and starts the runner (hil/ondevice/runner.py).

    from hil.runner import run_latency, run_eval, run_sweep, StopWhen
    run = run_latency(deployed_model, batch=1, threads=1, stop_when=StopWhen(99, limit_ms=12.0))
    run.latencies_ms, run.p99_ms, run.session.op_providers, run.memory.peak_rss_mib

    job = start_stream(deployed_model, eval_npz, "x_image", fps=30, loop=True)  # detached, long-running
    job.collect(), job.status(), job.stop(), job.remove()
"""

from hil.runner.driver import (
    RUNNER_SOURCE,
    SessionSettings,
    StopWhen,
    run_eval,
    run_latency,
    run_overhead,
    run_sweep,
    ship_inputs,
    ship_runner,
)
from hil.runner.errors import (
    BadInput,
    InferenceFailed,
    ModelLoadFailed,
    OutOfMemory,
    ProviderMissing,
    RunnerConfigError,
    RunnerCrashed,
    RunnerError,
    RunnerTimeout,
)
from hil.runner.results import (
    CpuTime,
    EvalRun,
    LatencyRun,
    MemoryFacts,
    OverheadRun,
    RunContext,
    SessionFacts,
    StopInfo,
    SweepPoint,
    SweepRun,
    TelemetrySample,
)
from hil.runner.stream import StreamGone, StreamJob, StreamStatus, start_stream

__all__ = [
    "RUNNER_SOURCE", "BadInput", "CpuTime", "EvalRun", "InferenceFailed", "LatencyRun", "MemoryFacts",
    "ModelLoadFailed", "OutOfMemory", "OverheadRun", "ProviderMissing", "RunContext", "RunnerConfigError",
    "RunnerCrashed", "RunnerError", "RunnerTimeout", "SessionFacts", "SessionSettings", "StopInfo", "StopWhen",
    "StreamGone", "StreamJob", "StreamStatus", "SweepPoint", "SweepRun", "TelemetrySample", "run_eval",
    "run_latency", "run_overhead", "run_sweep", "ship_inputs", "ship_runner", "start_stream",
]
