"""Runner fidelity: hil's on-device timing against a bare onnxruntime loop on the same device, same run.

Run from the repository root: `.venv/bin/python benchmarks/runner_fidelity.py [--devices devices.toml]
[--device NAME]`. On one emulated lab device (default: the first one), for digits-cnn and digits-mlp:
(a) the runner's p50 and (b) a bare onnxruntime loop's p50 (same model, threads, session options,
inputs and iteration count; perf_counter_ns around each run), taking turns; (c) what the runner's
timing loop costs per iteration around a no-op; (d) iterations an adaptive run needs for a clear
PASS against a fixed 1000-iteration run. Prints a table and MET/MISSED lines; asserts nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from hil.artifacts import load_artifact, load_public_key
from hil.config import DeviceConfig, Inventory, load_inventory
from hil.deploy import DeployedModel, deploy
from hil.device import Device
from hil.errors import HilError
from hil.lab import EmulatedLab
from hil.runner import LatencyRun, StopWhen, run_latency, run_overhead

log = logging.getLogger("benchmarks.runner_fidelity")
ROOT = Path(__file__).resolve().parents[1]
MODELS = ("digits-cnn", "digits-mlp")
DEMO_KEY = ROOT / "fixtures" / "keys" / "demo-ed25519.pub"
P50_TOLERANCE = 0.03  # runner p50 within 3% of the bare loop's
OVERHEAD_TARGET_NS = 2000.0
FIXED_ITERATIONS = 1000

# The bare loop: what anyone would write to time a model with onnxruntime; the same random input
# the runner makes for a seed (numpy default_rng(seed).random(shape, float32)).
BARE_LOOP = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path = sys.argv[1]
threads, batch, warmup, n, seed = (int(a) for a in sys.argv[2:7])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
meta = s.get_inputs()[0]
shape = [batch] + [d for d in meta.shape[1:]]
feed = {meta.name: np.random.default_rng(seed).random(shape, dtype=np.float32)}
for _ in range(1 + warmup):
    s.run(None, feed)
lat = []
clock = time.perf_counter_ns
for _ in range(n):
    t0 = clock()
    s.run(None, feed)
    lat.append(clock() - t0)
print(json.dumps(lat))
"""


@dataclass(frozen=True)
class Round:
    runner_p50_ms: float
    bare_p50_ms: float

    @property
    def ratio(self) -> float:
        return self.runner_p50_ms / self.bare_p50_ms


def choose_lab_device(inventory: Inventory, name: str | None) -> DeviceConfig:
    """An emulated device whose address is in the lab's own subnet: this benchmark talks to nothing else."""
    candidates = [d for d in inventory.devices if d.emulated and (name is None or d.name == name)]
    if not candidates:
        raise HilError(f"{inventory.path}: no emulated device{f' named {name!r}' if name else ''}; this benchmark "
                       "only runs on the emulated lab")
    config = candidates[0]
    if ipaddress.IPv4Address(config.ssh.host) not in inventory.lab.subnet:
        raise HilError(f"device '{config.name}' at {config.ssh.host} is outside the lab subnet {inventory.lab.subnet}")
    return config


def bare_p50_ms(device: Device, deployed: DeployedModel, threads: int, batch: int, warmup: int, n: int) -> float:
    python = shlex.quote(device.config.python)
    args = " ".join(str(a) for a in (shlex.quote(deployed.path), threads, batch, warmup, n, 0))
    result = device.run(f"{python} - {args}", stdin=BARE_LOOP.encode(), timeout=300, check=True)
    lat = np.sort(np.asarray(json.loads(result.stdout), dtype=np.int64)) / 1e6
    return float(lat[int(np.ceil(0.5 * len(lat))) - 1])  # nearest rank, as the runner's summary


def compare(deployed: DeployedModel, rounds: int, n: int, threads: int, batch: int, warmup: int) -> list[Round]:
    out = []
    for i in range(rounds):
        def runner() -> float:
            return run_latency(deployed, batch=batch, warmup=warmup, min_iterations=n, max_iterations=n,
                               min_duration_s=0.0, threads=threads).p50_ms

        def bare() -> float:
            return bare_p50_ms(deployed.device, deployed, threads, batch, warmup, n)

        if i % 2 == 0:  # take turns, so drifts in host load hit both alike
            r, b = runner(), bare()
        else:
            b, r = bare(), runner()
        out.append(Round(r, b))
        log.info("%s round %d: runner p50 %.4f ms, bare p50 %.4f ms", deployed.artifact.manifest.name, i + 1, r, b)
    return out


@dataclass(frozen=True)
class AdaptiveRow:
    name: str
    limit_ms: float
    fixed: LatencyRun
    fixed_verdict: str  # what the fixed run's own samples say about the same budget
    adaptive: tuple[LatencyRun, ...]


def adaptive_vs_fixed(name: str, deployed: DeployedModel, args: argparse.Namespace) -> AdaptiveRow:
    common = {"batch": args.batch, "warmup": args.warmup, "min_duration_s": 0.0, "threads": args.threads}
    fixed = run_latency(deployed, min_iterations=FIXED_ITERATIONS, max_iterations=FIXED_ITERATIONS, **common)
    limit = 5 * fixed.p99_ms
    try:
        from hil.stats import percentile_verdict

        fixed_verdict = str(percentile_verdict(fixed.latencies_ms, 99, limit, 0.99))
    except ImportError:
        fixed_verdict = "n/a"
    stop = StopWhen(quantile=99, limit_ms=limit, confidence=0.99)
    adaptive = tuple(run_latency(deployed, min_iterations=1, max_iterations=50_000, stop_when=stop, **common)
                     for _ in range(args.rounds))
    return AdaptiveRow(name, limit, fixed, fixed_verdict, adaptive)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=Path, default=Path("devices.toml"))
    parser.add_argument("--device", help="emulated device name (default: the first emulated device)")
    parser.add_argument("--rounds", type=int, default=5, help="runner/bare pairs per model (default: %(default)s)")
    parser.add_argument("-n", type=int, default=2000, help="timed iterations per run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        inventory = load_inventory(args.devices)
        config = choose_lab_device(inventory, args.device)
        EmulatedLab(inventory).ensure_up([config.name])
    except HilError as exc:
        log.error("%s", exc)
        return 2
    trusted = [load_public_key(p) for p in inventory.deploy.trusted_keys or (DEMO_KEY,)]
    device = Device(config)
    try:
        return report(device, trusted, args)
    except HilError as exc:
        log.error("%s", exc)
        return 1
    finally:
        device.close()


def report(device: Device, trusted: list, args: argparse.Namespace) -> int:
    deployed = {}
    for name in MODELS:
        artifact = load_artifact(ROOT / "fixtures" / "models" / name)
        deployed[name] = DeployedModel(device, artifact, deploy(device, artifact, trusted))
    results = {name: compare(d, args.rounds, args.n, args.threads, args.batch, args.warmup)
               for name, d in deployed.items()}
    overhead = run_overhead(deployed[MODELS[0]], min_iterations=200_000, min_duration_s=1.0)
    adaptive_rows = [adaptive_vs_fixed(name, d, args) for name, d in deployed.items()]

    facts = device.facts()
    print(f"\n{device.name} ({device.config.ssh.host}, emulated, {facts.cpu_quota or facts.cpu_count} CPUs, "
          f"onnxruntime {facts.onnxruntime}); batch {args.batch}, {args.threads} thread(s), {args.n} timed "
          f"iterations per run, {args.rounds} rounds taking turns")
    print(f"\n{'model':12} {'round':>5} {'runner p50 ms':>14} {'bare p50 ms':>12} {'ratio':>7}")
    for name, rounds in results.items():
        for i, r in enumerate(rounds, 1):
            print(f"{name:12} {i:5d} {r.runner_p50_ms:14.4f} {r.bare_p50_ms:12.4f} {r.ratio:7.3f}")
        print(f"{name:12} {'med':>5} {statistics.median(r.runner_p50_ms for r in rounds):14.4f} "
              f"{statistics.median(r.bare_p50_ms for r in rounds):12.4f} "
              f"{statistics.median(r.ratio for r in rounds):7.3f}")
    print(f"\ntiming loop around a no-op on the device ({len(overhead.latencies_ns)} iterations): "
          f"{overhead.wall_ns_per_iteration:.0f} ns per iteration in all, of which "
          f"{float(np.median(overhead.latencies_ns)):.0f} ns (median) inside the timed region and "
          f"{overhead.overhead_ns_per_iteration:.0f} ns outside it")
    print(f"\nadaptive p99 <= limit (5x the fixed run's p99) at 0.99 confidence, {args.rounds} runs per model")
    print(f"{'model':12} {'limit ms':>9} {'fixed n':>8} {'fixed verdict':>14} {'adaptive n (each run)':>28} "
          f"{'verdicts':>16}")
    for row in adaptive_rows:
        counts = " ".join(str(r.count) for r in row.adaptive)
        verdicts = ",".join(sorted({r.stop.verdict or r.stop.reason for r in row.adaptive}))
        print(f"{row.name:12} {row.limit_ms:9.3f} {row.fixed.count:8d} {row.fixed_verdict:>14} {counts:>28} "
              f"{verdicts:>16}")
    if adaptive_rows and adaptive_rows[0].adaptive[0].stop.note:
        print(f"({adaptive_rows[0].adaptive[0].stop.note})")
    print()
    for name, rounds in results.items():
        ratio = statistics.median(r.ratio for r in rounds)
        verdict = "MET" if abs(ratio - 1) <= P50_TOLERANCE else "MISSED"
        print(f"{name}: runner p50 / bare-loop p50 = {ratio:.3f} (median of {len(rounds)} rounds): target within "
              f"{P50_TOLERANCE:.0%} {verdict}")
    verdict = "MET" if overhead.wall_ns_per_iteration < OVERHEAD_TARGET_NS else "MISSED"
    print(f"timing loop overhead: {overhead.wall_ns_per_iteration:.0f} ns per iteration: target < "
          f"{OVERHEAD_TARGET_NS:.0f} ns {verdict}")
    for row in adaptive_rows:
        median_n = statistics.median(r.count for r in row.adaptive)
        passes = sum(r.stop.verdict == "PASS" for r in row.adaptive)
        clear = passes == len(row.adaptive) and median_n < FIXED_ITERATIONS
        print(f"{row.name}: adaptive p99 runs: {passes}/{len(row.adaptive)} PASS, median {median_n:g} iterations vs "
              f"{FIXED_ITERATIONS} fixed: target a clear PASS in fewer {'MET' if clear else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
