"""hil's device runner: shipped to the device and run there with the device's own Python.

Self-contained on purpose: it may import only the standard library, numpy and onnxruntime (and
`hil_stats`, when hil ships it next to this file, for adaptive stopping). Never imported on the host.

    python3 device_runner.py CONFIG.json      (or `-` to read the config from stdin)

(This file is hil/ondevice/runner.py on the host; hil/runner/driver.py ships it as device_runner.py.)

Writes exactly one JSON document to stdout; diagnostics go to stderr. Exit status 0 with
{"ok": true, ...}, or EXIT_ERROR with {"ok": false, "error": {"category", "message", "detail"}}.
EXIT_ERROR is 3, not 2, because Python itself exits 2 when it cannot open the script: the host
must be able to tell "the runner said no" from "the runner never ran". A process killed by the
kernel's OOM killer writes nothing; the host classifies that from the exit status.

Modes: "latency" (cold start, warm-up, timed loop), "eval" (run an input set, save all outputs),
"sweep" (throughput per batch size), "overhead" (the timed loop around a no-op, to measure the
loop itself), "stream" (the long-running job: a replayed feed, inferred continuously, results and
status in files; started detached by hil/runner/stream.py).
"""

import collections
import contextlib
import errno
import gc
import glob
import json
import os
import platform
import resource
import signal
import sys
import tempfile
import threading
import time
import traceback

# Devices run old Pythons (JetPack 5 has 3.8): no `X | Y` types, zip(strict=), match, or numpy >= 1.22 APIs here.
NUMBER = (int, float)
RUNNER_VERSION = 1
EXIT_ERROR = 3
CPU = "CPUExecutionProvider"
NS_PER_MS = 1_000_000
STARTED_NS = time.perf_counter_ns()  # config "deadline_s" counts from here
FOREVER_NS = 1 << 62  # "no limit" for integer time comparisons in the loop
MAX_INITIAL_CAPACITY = 1 << 20  # latency slots allocated up front (8 MiB); the array doubles if needed
# Messages onnxruntime (and CUDA) use when an allocation fails: that is out of memory, not a bug.
OOM_MARKERS = ("failed to allocate", "bad_alloc", "bad allocation", "out of memory", "cudaerrormemoryallocation",
               "cannot allocate memory")
DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
          "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
          "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64",
          "tensor(uint64)": "uint64", "tensor(bool)": "bool"}
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


class RunnerFailure(Exception):
    """A failure the host should see as structured JSON with a category."""

    def __init__(self, category, message, detail=""):
        super().__init__(message)
        self.category = category
        self.message = message
        self.detail = detail


def log(message):
    sys.stderr.write(f"hil-runner: {message}\n")


def is_oom(exc):
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in OOM_MARKERS)


def classify(exc, default, message):
    """Turn an exception into a RunnerFailure; allocation failures are out_of_memory wherever they happen."""
    if isinstance(exc, RunnerFailure):
        return exc
    if is_oom(exc):
        return RunnerFailure("out_of_memory", f"{message}: out of memory", f"{type(exc).__name__}: {exc}")
    if type(exc).__name__ == "InvalidArgument" and default == "runtime":
        return RunnerFailure("bad_input", f"{message}: the inputs do not fit the model", f"{exc}")
    return RunnerFailure(default, message, f"{type(exc).__name__}: {exc}")


# -- config ---------------------------------------------------------------------------------------


def read_config(argv):
    if len(argv) != 2:
        raise RunnerFailure("config", "usage: device_runner.py CONFIG.json (or - for stdin)")
    try:
        if argv[1] == "-":
            text = sys.stdin.read()
        else:
            with open(argv[1], encoding="utf-8") as f:
                text = f.read()
        config = json.loads(text)
    except (OSError, ValueError) as exc:
        raise RunnerFailure("config", f"cannot read the run config {argv[1]}", str(exc)) from None
    if not isinstance(config, dict):
        raise RunnerFailure("config", "the run config must be a JSON object")
    return config


def number(config, key, default, kind=float, minimum=0):
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, NUMBER) or value < minimum:
        raise RunnerFailure("config", f"config key '{key}' must be a number >= {minimum}, got {value!r}")
    return kind(value)


# -- session --------------------------------------------------------------------------------------


def session_options(ort, config, profile_prefix=None):
    so = ort.SessionOptions()
    threads = config.get("threads") or {}
    if threads.get("intra_op") is not None:
        so.intra_op_num_threads = int(threads["intra_op"])
    if threads.get("inter_op") is not None:
        so.inter_op_num_threads = int(threads["inter_op"])
    level = config.get("graph_optimization", "all")
    if level not in OPT_LEVELS:
        raise RunnerFailure("config", f"graph_optimization must be one of {', '.join(OPT_LEVELS)}, got {level!r}")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
    mode = config.get("execution_mode", "sequential")
    if mode not in ("sequential", "parallel"):
        raise RunnerFailure("config", f"execution_mode must be sequential or parallel, got {mode!r}")
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    for key, value in (config.get("session_config") or {}).items():
        so.add_session_config_entry(str(key), str(value))
    if profile_prefix is not None:
        so.enable_profiling = True  # only ever in the separate, untimed provider pass
        so.profile_file_prefix = profile_prefix
    return so


def choose_providers(ort, config):
    """(providers to ask for, fallback note or None); raises provider_missing unless fallback is allowed."""
    requested = list(config.get("providers") or [CPU])
    allow = bool(config.get("allow_fallback", False))
    available = ort.get_available_providers()
    missing = [p for p in requested if p not in available]
    if not missing:
        return requested, None
    if not allow:
        raise RunnerFailure("provider_missing", f"execution provider {', '.join(missing)} is not available",
                            f"requested {requested}; this onnxruntime {ort.__version__} offers {available}")
    usable = [p for p in requested if p in available] or [CPU]
    return usable, f"{', '.join(missing)} not available (offers {', '.join(available)}); fell back to {usable}"


def create_session(ort, config):
    """(session, fallback note, creation time in ns)."""
    model = config.get("model")
    if not isinstance(model, str) or not model:
        raise RunnerFailure("config", "config key 'model' must be the model's path on the device")
    if not os.path.isfile(model):
        raise RunnerFailure("model_load", f"no model file at {model}")
    providers, fallback = choose_providers(ort, config)
    so = session_options(ort, config)
    started = time.perf_counter_ns()
    try:
        session = ort.InferenceSession(model, so, providers=providers)
    except Exception as exc:
        raise classify(exc, "model_load", f"onnxruntime cannot load {model}") from None
    created = time.perf_counter_ns() - started
    active = session.get_providers()
    # onnxruntime drops a provider that fails to initialise with only a warning: that is a missing provider too.
    dropped = [p for p in providers if p not in active]
    if dropped:
        if not config.get("allow_fallback", False):
            raise RunnerFailure("provider_missing", f"execution provider {', '.join(dropped)} did not initialise",
                                f"asked for {providers}; the session runs on {active}")
        note = f"{', '.join(dropped)} did not initialise; the session runs on {active}"
        fallback = f"{fallback}; {note}" if fallback else note
    return session, fallback, created


def provider_map(ort, config):
    """Which provider ran each op type, from one profiled run of a separate, untimed session."""
    directory = tempfile.mkdtemp(prefix="hil-profile-")
    try:
        providers, _ = choose_providers(ort, config)
        so = session_options(ort, config, profile_prefix=os.path.join(directory, "profile"))
        session = ort.InferenceSession(config["model"], so, providers=providers)
        session.run(None, make_feed(session, config, int(config.get("batch", 1)), config.get("seed", 0)))
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    finally:
        for path in glob.glob(os.path.join(directory, "*")):
            os.unlink(path)
        os.rmdir(directory)
    seen = {}
    counts = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "op_name" not in args:
            continue
        seen.setdefault(args["op_name"], set()).add(args.get("provider", "?"))
        counts[args["op_name"]] = counts.get(args["op_name"], 0) + 1
    return {op: ",".join(sorted(p)) for op, p in sorted(seen.items())}, counts


# -- inputs ---------------------------------------------------------------------------------------


def input_shape(meta, batch, dims):
    shape = []
    for i, dim in enumerate(meta.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif i == 0:
            shape.append(batch)
        else:
            shape.append(int(dims.get(str(dim), 1)))  # named dimensions from config "dims", else 1
    return shape


def random_tensor(np, rng, meta, shape):
    dtype = DTYPES.get(meta.type)
    if dtype is None:
        raise RunnerFailure("bad_input", f"input '{meta.name}' has type {meta.type}: hil cannot make random data "
                                         "for it; give an npz file")
    if dtype.startswith("float"):
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(dtype)


def load_npz(np, path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RunnerFailure("bad_input", f"cannot read the input file {path}", str(exc)) from None


def npz_array(np, data, key, meta, path):
    if key not in data.files:
        raise RunnerFailure("bad_input", f"{path} has no array '{key}' for input '{meta.name}'",
                            f"arrays: {', '.join(data.files)}")
    array = data[key]
    dtype = DTYPES.get(meta.type)
    if dtype is not None and array.dtype != np.dtype(dtype):
        try:
            array = array.astype(dtype, casting="same_kind")
        except TypeError as exc:
            raise RunnerFailure("bad_input", f"{path}:{key} is {array.dtype}, input '{meta.name}' needs {dtype}",
                                str(exc)) from None
    return array


def input_keys(session, source):
    """Map model inputs to npz keys: explicit "keys", else the input's own name (one input: "key")."""
    metas = session.get_inputs()
    keys = dict(source.get("keys") or {})
    if source.get("key") and len(metas) == 1:
        keys.setdefault(metas[0].name, source["key"])
    return {m.name: keys.get(m.name, m.name) for m in metas}


def make_feed(session, config, batch, seed):
    """The feed dict for one run at `batch`: from the npz in config "inputs", else seeded random data."""
    import numpy as np

    source = config.get("inputs") or {}
    dims = config.get("dims") or {}
    feed = {}
    if source.get("npz"):
        data = load_npz(np, source["npz"])
        keys = input_keys(session, source)
        for meta in session.get_inputs():
            array = npz_array(np, data, keys[meta.name], meta, source["npz"])
            if len(array) == 0:
                raise RunnerFailure("bad_input", f"{source['npz']}:{keys[meta.name]} is empty")
            rows = np.resize(np.arange(len(array)), batch)  # cycle when the file has fewer rows than the batch
            feed[meta.name] = np.ascontiguousarray(array[rows])
        return feed
    rng = np.random.default_rng(seed)
    for meta in session.get_inputs():
        feed[meta.name] = random_tensor(np, rng, meta, input_shape(meta, batch, dims))
    return feed


def describe_feed(feed):
    return [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in feed.items()]


# -- measurements around the loop -----------------------------------------------------------------


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def memory_facts():
    """Peak and current RSS (bytes): ru_maxrss (KiB on Linux) and /proc/self/status VmHWM/VmRSS."""
    out = {"ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "vm_hwm_bytes": None, "vm_rss_bytes": None}
    for line in (read_text("/proc/self/status") or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS") and value.strip().endswith("kB"):
            out["vm_hwm_bytes" if key == "VmHWM" else "vm_rss_bytes"] = int(value.split()[0]) * 1024
    return out


def cpu_times():
    t = os.times()
    return t.user, t.system


def cgroup_cpu_stat():
    """Throttling counters of our cgroup (v2 cpu.stat, v1 cpu.stat), or None."""
    for line in (read_text("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            text = read_text(f"/sys/fs/cgroup{path}/cpu.stat")
        elif "cpu" in controllers.split(","):
            text = read_text(f"/sys/fs/cgroup/{controllers}{path}/cpu.stat")
        else:
            continue
        if text:
            stats = {}
            for row in text.splitlines():
                parts = row.split()
                if len(parts) == 2 and parts[1].isdigit():
                    stats[parts[0]] = int(parts[1])
            return stats
    return None


def stat_delta(before, after):
    if before is None or after is None:
        return None
    return {k: after[k] - before.get(k, 0) for k in after if k in ("nr_periods", "nr_throttled", "throttled_usec",
                                                                     "throttled_time", "usage_usec")}


def telemetry_sample(t0_ns):
    """One snapshot of what the device's clocks and thermals say; None wherever it is not readable."""
    freqs = []
    governors = set()
    for cpu in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq")):
        freq = read_text(cpu + "/scaling_cur_freq")
        if freq and freq.isdigit():
            freqs.append(int(freq))
        governor = read_text(cpu + "/scaling_governor")
        if governor:
            governors.add(governor)
    temps = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = read_text(zone + "/temp")
        if raw and raw.lstrip("-").isdigit():
            temps[f"{os.path.basename(zone)}:{read_text(zone + '/type') or '?'}"] = int(raw) / 1000.0
    load = (read_text("/proc/loadavg") or "").split()
    return {"t_s": (time.perf_counter_ns() - t0_ns) / 1e9,
            "cpu_freq_khz": freqs or None, "governor": ",".join(sorted(governors)) or None,
            "temps_c": temps or None, "loadavg": [float(x) for x in load[:3]] if len(load) >= 3 else None}


class Telemetry:
    """Samples in a background thread; onnxruntime releases the GIL while it runs, so the loop barely notices."""

    def __init__(self, interval_s):
        self.interval_s = interval_s
        self.samples = []
        self._stop = threading.Event()
        self._thread = None
        self._t0 = time.perf_counter_ns()

    def __enter__(self):
        self._t0 = time.perf_counter_ns()
        self.samples.append(telemetry_sample(self._t0))
        if self.interval_s and self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="hil-telemetry", daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.samples.append(telemetry_sample(self._t0))

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(telemetry_sample(self._t0))
        return False


# -- adaptive stopping ----------------------------------------------------------------------------


def make_decider(stop_when, max_iterations):
    """The adaptive stopping rule for `stop_when`, or None without one.

    hil_stats.AdaptiveStop (hil always ships hil_stats.py next to this file): verdicts only at fixed
    looks, at a Bonferroni-corrected confidence, so deciding again and again does not inflate the
    chance of a wrong PASS.
    """
    if not stop_when:
        return None
    for key in ("quantile", "limit_ms"):
        if isinstance(stop_when.get(key), bool) or not isinstance(stop_when.get(key), NUMBER):
            raise RunnerFailure("config", f"stop_when.{key} must be a number")
    quantile, limit = float(stop_when["quantile"]), float(stop_when["limit_ms"])
    confidence = float(stop_when.get("confidence", 0.99))
    import hil_stats

    try:
        stop = hil_stats.AdaptiveStop(q=quantile, limit_ms=limit, confidence=confidence,
                                      max_samples=max_iterations or ADAPTIVE_MAX_SAMPLES)
    except ValueError as exc:
        raise RunnerFailure("config", "stop_when cannot be decided with these settings", str(exc)) from None
    return LooksDecider(hil_stats, stop, stop.looks, quantile, limit)


ADAPTIVE_MAX_SAMPLES = 1_000_000  # the last look when only a duration bounds the run


class LooksDecider:
    """hil_stats.AdaptiveStop: checks exactly at its looks, each on that look's first samples."""

    def __init__(self, hil_stats, stop, looks, quantile, limit):
        self.stats, self.stop, self.looks, self.quantile, self.limit = hil_stats, stop, looks, quantile, limit
        self.note = f"adaptive looks at {list(looks)} samples, {stop.look_confidence:.6g} confidence each"
        self.failed = None

    def next_check(self, n):
        return None if self.failed else self.stop.next_look(n)

    def decide(self, samples_ms):
        try:
            verdict = self.stop.decide(samples_ms)
            look = self.stop.last_look(len(samples_ms))
            detail = f"p{self.quantile:g} <= {self.limit:g} ms after {look} samples: {verdict or 'undecided'}"
            if look is not None:
                b = self.stats.percentile_bounds(samples_ms[:look], self.quantile, self.stop.look_confidence)
                detail += f" (bounds [{fmt(b.lower)}, {fmt(b.upper)}] ms at {self.stop.look_confidence:.6g})"
        except Exception as exc:  # a stats bug must not lose the measurement: go on without early stop
            self.failed = f"no early stop: hil_stats.AdaptiveStop failed: {type(exc).__name__}: {exc}"
            log(self.failed)
            return False, None, self.failed
        verdict = str(verdict) if verdict is not None else None
        return verdict in ("PASS", "FAIL"), verdict, detail


def fmt(value):
    return "-" if value is None else f"{value:.4g}"


# -- the timed loop -------------------------------------------------------------------------------


class LoopPlan:
    def __init__(self, min_iterations, min_duration_s, max_iterations=None, max_duration_s=None,
                 deadline_ns=None, decider=None):
        self.min_iterations = max(1, int(min_iterations))
        self.min_ns = int((min_duration_s or 0) * 1e9)
        self.max_iterations = None if max_iterations is None else max(self.min_iterations, int(max_iterations))
        self.max_ns = None if max_duration_s is None else int(max_duration_s * 1e9)
        self.deadline_ns = deadline_ns  # absolute perf_counter_ns after which the run must wrap up
        self.decider = decider


def timed_loop(fn, a, b, plan, per_iteration_ns_guess):
    """Time fn(a, b) until the plan says stop. The hot path: two clock reads, one store, two compares.

    Everything else (minimums, maxima, adaptive checks, growing the array) happens on a slow path
    entered only when a precomputed iteration count or time is reached.
    """
    import numpy as np

    # Sized from the warm-up so the array rarely grows; growing (doubling) happens on the slow path.
    capacity = max(plan.min_iterations, int(plan.min_ns / max(1, per_iteration_ns_guess) * 1.25) + 16)
    if plan.max_iterations is not None:
        capacity = min(capacity, plan.max_iterations)
    capacity = max(16, min(capacity, MAX_INITIAL_CAPACITY))
    state = LoopState(plan, np, capacity)
    lat = state.lat
    clock = time.perf_counter_ns
    n = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed run is hil's noise, not the model's
    try:
        start = clock()
        state.start(start)
        next_n, next_t = state.next_n, state.next_t
        while True:
            t0 = clock()
            fn(a, b)
            t1 = clock()
            lat[n] = t1 - t0
            n += 1
            if n >= next_n or t1 >= next_t:
                if state.slow_path(n, t1):
                    break
                lat, next_n, next_t = state.lat, state.next_n, state.next_t
        wall = clock() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return state.lat[:n], wall, state


class LoopState:
    """The loop's slow path: decides when to stop and where the next check is."""

    def __init__(self, plan, np, capacity):
        self.plan = plan
        self.np = np
        self.lat = np.empty(capacity, dtype=np.int64)
        self.reason = None
        self.stopped_early = False
        self.verdict = None
        self.detail = None
        self.checks = 0
        self.check_ns = 0
        self.next_check = None

    def start(self, t_ns):
        plan = self.plan
        self.min_end = t_ns + plan.min_ns
        ends = [e for e in (t_ns + plan.max_ns if plan.max_ns is not None else None, plan.deadline_ns) if e]
        self.max_end = min(ends) if ends else FOREVER_NS
        self.next_check = plan.decider.next_check(plan.min_iterations) if plan.decider else None
        self._schedule(0, t_ns)

    def _schedule(self, n, t_ns):
        plan = self.plan
        counts = [len(self.lat)]
        if plan.max_iterations is not None:
            counts.append(plan.max_iterations)
        if n < plan.min_iterations:
            counts.append(plan.min_iterations)
        elif self.next_check is not None and t_ns >= self.min_end:  # before min_end the time trigger comes first
            counts.append(max(self.next_check, n + 1))
        self.next_n = min(counts)
        self.next_t = self.min_end if t_ns < self.min_end else self.max_end

    def slow_path(self, n, t_ns):
        """True to stop."""
        plan = self.plan
        if plan.max_iterations is not None and n >= plan.max_iterations:
            return self._stop("max_iterations")
        if t_ns >= self.max_end:
            hit_deadline = plan.deadline_ns is not None and self.max_end == plan.deadline_ns
            return self._stop("deadline" if hit_deadline else "max_duration")
        minimums_met = n >= plan.min_iterations and t_ns >= self.min_end
        if minimums_met and plan.decider is None:
            return self._stop("minimums_met")
        if minimums_met and self.next_check is not None and n >= self.next_check and self._check(n):
            return True
        if n >= len(self.lat):
            self.lat = self.np.concatenate([self.lat, self.np.empty(len(self.lat), dtype=self.np.int64)])
        self._schedule(n, t_ns)
        return False

    def _check(self, n):
        started = time.perf_counter_ns()
        decider = self.plan.decider
        decided, verdict, detail = decider.decide(self.lat[:n] / NS_PER_MS)
        self.checks += 1
        self.check_ns += time.perf_counter_ns() - started
        self.detail = detail
        self.next_check = decider.next_check(n + 1)
        if decided:
            self.verdict = verdict
            self.stopped_early = True
            self.reason = "decided"
        return decided

    def _stop(self, reason):
        self.reason = reason
        return True

    def report(self):
        return {"reason": self.reason, "stopped_early": self.stopped_early, "verdict": self.verdict,
                "detail": self.detail, "checks": self.checks, "check_ms": self.check_ns / NS_PER_MS}


def noop(a, b):
    return None


def loop_report(lat, wall_ns):
    n = len(lat)
    total = int(lat.sum()) if n else 0
    return {"iterations": n, "wall_ns": int(wall_ns), "timed_ns": total,
            # What the loop costs outside the timed region, per iteration (bookkeeping, clock, store).
            "overhead_ns_per_iteration": (wall_ns - total) / n if n else None}


def typical(cold, warm):
    """A per-iteration guess for sizing the latency array: the warm-up median, else the cold run."""
    return sorted(warm)[len(warm) // 2] if warm else cold


def warm_up(run, feed, iterations):
    """The first (cold) run, then `iterations` warm-up runs; returns (cold ns, warm-up latencies ns)."""
    clock = time.perf_counter_ns
    t0 = clock()
    run(None, feed)
    cold = clock() - t0
    warm = []
    for _ in range(iterations):
        t0 = clock()
        run(None, feed)
        warm.append(clock() - t0)
    return cold, warm


def plan_from(config, adaptive=False):
    min_iterations = number(config, "min_iterations", 500, int, 1)
    max_iterations = number(config, "max_iterations", None, int, 1)
    decider = make_decider(config.get("stop_when"), max_iterations) if adaptive else None
    return LoopPlan(min_iterations, number(config, "min_duration_s", 2.0), max_iterations,
                    number(config, "max_duration_s", None), deadline_ns(config), decider)


def deadline_ns(config):
    """When the loop must wrap up (perf_counter_ns), so the host gets a report before its timeout kills us."""
    deadline = number(config, "deadline_s", None)
    return None if deadline is None else STARTED_NS + int(deadline * 1e9)


# -- modes ----------------------------------------------------------------------------------------


def base_report(ort, np, config):
    return {"ok": True, "runner": RUNNER_VERSION, "mode": config.get("mode", "latency"),
            "env": {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__,
                    "hostname": platform.node(), "cpu_count": os.cpu_count(),
                    "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "clock_resolution_ns": time.get_clock_info("perf_counter").resolution * 1e9}}


def session_report(session, fallback, created_ns, config):
    return {"providers": session.get_providers(), "requested_providers": list(config.get("providers") or [CPU]),
            "fallback": fallback, "create_ms": created_ns / NS_PER_MS,
            "threads": config.get("threads") or {}, "graph_optimization": config.get("graph_optimization", "all")}


def run_latency(ort, np, config):
    report = base_report(ort, np, config)
    report["memory_baseline"] = memory_facts()
    plan = plan_from(config, adaptive=True)  # config mistakes surface before the model is even loaded
    if plan.decider is not None and plan.max_iterations is None and plan.max_ns is None and plan.deadline_ns is None:
        raise RunnerFailure("config", "stop_when needs max_iterations or max_duration_s: an undecided verdict "
                                      "must still end")
    session, fallback, created = create_session(ort, config)
    report["session"] = session_report(session, fallback, created, config)
    batch = number(config, "batch", 1, int, 1)
    feed = make_feed(session, config, batch, config.get("seed", 0))
    report["inputs"] = describe_feed(feed)
    report["seed"] = config.get("seed", 0)
    run = session.run
    try:
        cold, warm = warm_up(run, feed, number(config, "warmup", 50, int, 0))
    except Exception as exc:
        raise classify(exc, "runtime", "the first inference failed") from None
    report["first_inference_ms"] = cold / NS_PER_MS
    report["warmup"] = {"iterations": len(warm), "mean_ms": (sum(warm) / len(warm) / NS_PER_MS) if warm else None}
    cpu_before, throttle_before = cpu_times(), cgroup_cpu_stat()
    try:
        with Telemetry(number(config, "telemetry_interval_s", 0.5)) as telemetry:
            lat, wall, state = timed_loop(run, None, feed, plan, typical(cold, warm))
    except Exception as exc:
        raise classify(exc, "runtime", "inference failed in the timed loop") from None
    cpu_after = cpu_times()
    report["latency_ns"] = lat.tolist()
    report["loop"] = loop_report(lat, wall)
    report["stop"] = {**state.report(), "adaptive": config.get("stop_when"),
                      "note": plan.decider.note if plan.decider else None}
    report["cpu"] = {"loop_user_s": cpu_after[0] - cpu_before[0], "loop_system_s": cpu_after[1] - cpu_before[1],
                     "loop_wall_s": wall / 1e9, "total_user_s": cpu_after[0], "total_system_s": cpu_after[1]}
    report["throttling"] = stat_delta(throttle_before, cgroup_cpu_stat())
    report["telemetry"] = {"interval_s": telemetry.interval_s, "samples": telemetry.samples}
    report["memory"] = memory_facts()  # before the profiling pass, so its session does not count
    add_provider_map(ort, config, report)
    return report


def add_provider_map(ort, config, report):
    if not config.get("profile_providers", True):
        report["op_providers"], report["op_counts"], report["profiling_error"] = {}, {}, "disabled"
        return
    try:
        report["op_providers"], report["op_counts"] = provider_map(ort, config)
        report["profiling_error"] = None
    except Exception as exc:  # a fact we could not get is reported, not fatal
        report["op_providers"], report["op_counts"] = {}, {}
        report["profiling_error"] = f"{type(exc).__name__}: {exc}"


def run_overhead(ort, np, config):
    """The timed loop around a no-op: what hil's own bookkeeping costs per iteration on this device."""
    report = base_report(ort, np, config)
    lat, wall, state = timed_loop(noop, None, None, plan_from(config), 1000)
    report["latency_ns"] = lat.tolist()
    report["loop"] = loop_report(lat, wall)
    report["stop"] = state.report()
    return report


def run_eval(ort, np, config):
    report = base_report(ort, np, config)
    spec = config.get("eval") or {}
    if not spec.get("npz") or not spec.get("output"):
        raise RunnerFailure("config", "eval mode needs eval.npz (inputs) and eval.output (where outputs go)")
    session, fallback, created = create_session(ort, config)
    report["session"] = session_report(session, fallback, created, config)
    batch = number(spec, "batch", 64, int, 1)
    data = load_npz(np, spec["npz"])
    keys = input_keys(session, spec)
    metas = session.get_inputs()
    arrays = {m.name: npz_array(np, data, keys[m.name], m, spec["npz"]) for m in metas}
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise RunnerFailure("bad_input", f"inputs in {spec['npz']} have different lengths: {sorted(counts)}")
    count = counts.pop()
    fixed = {m.name: m.shape[0] for m in metas if isinstance(m.shape[0], int) and m.shape[0] > 0}
    names = [o.name for o in session.get_outputs()]
    chunks = {name: [] for name in names}
    times = []
    for start in range(0, count, batch):
        feed, rows = batch_feed(np, arrays, start, batch, fixed)
        t0 = time.perf_counter_ns()
        try:
            outputs = session.run(None, feed)
        except Exception as exc:
            raise classify(exc, "runtime", f"inference failed on rows {start}..{start + rows - 1}") from None
        times.append(time.perf_counter_ns() - t0)
        for name, value in zip(names, outputs):  # noqa: B905 - strict= is 3.10+
            chunks[name].append(np.asarray(value)[:rows])
    results = {name: np.concatenate(parts) if parts else np.empty((0,)) for name, parts in chunks.items()}
    np.savez(spec["output"], **results)
    total = sum(times)
    report.update({"count": count, "batch": batch, "batches": len(times), "total_ms": total / NS_PER_MS,
                   "batch_ms": [t / NS_PER_MS for t in times],
                   "items_per_s": count / (total / 1e9) if total else None,
                   "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in results.items()},
                   "output_path": spec["output"], "memory": memory_facts()})
    add_provider_map(ort, config, report)
    return report


def batch_feed(np, arrays, start, batch, fixed):
    """Rows start..start+batch; a model with a fixed batch dimension gets the last batch padded (trimmed after)."""
    feed = {}
    rows = 0
    for name, array in arrays.items():
        part = array[start:start + batch]
        rows = len(part)
        want = fixed.get(name)
        if want is not None and rows != want:
            if rows > want:
                raise RunnerFailure("bad_input", f"input '{name}' has a fixed batch of {want}; use batch <= {want}")
            part = np.concatenate([part, np.repeat(part[-1:], want - rows, axis=0)])
        feed[name] = np.ascontiguousarray(part)
    return feed, rows


def run_sweep(ort, np, config):
    report = base_report(ort, np, config)
    session, fallback, created = create_session(ort, config)
    report["session"] = session_report(session, fallback, created, config)
    spec = config.get("sweep") or {}
    batches = spec.get("batches") or [1, 2, 4, 8, 16, 32]
    if not all(isinstance(b, int) and b >= 1 for b in batches):
        raise RunnerFailure("config", f"sweep.batches must be positive integers, got {batches!r}")
    points = []
    for batch in batches:
        try:
            points.append(sweep_point(session, config, spec, batch))
        except RunnerFailure as failure:
            if failure.category not in ("out_of_memory", "runtime"):
                raise
            # A batch too big for the device ends the sweep; what was measured still counts.
            points.append({"batch": batch, "error": {"category": failure.category, "message": failure.message,
                                                     "detail": failure.detail}})
            break
        if points[-1]["stop"] == "deadline":  # out of time: report what was measured rather than be killed
            break
    good = [p for p in points if "error" not in p]
    if not good:
        raise RunnerFailure(points[-1]["error"]["category"], "no batch size of the sweep ran",
                            points[-1]["error"]["detail"])
    report["points"] = points
    report["best_batch"] = max(good, key=lambda p: p["items_per_s"])["batch"]
    report["memory"] = memory_facts()
    add_provider_map(ort, config, report)
    return report


def sweep_point(session, config, spec, batch):
    import numpy as np

    feed = make_feed(session, config, batch, config.get("seed", 0))
    try:
        cold, warm = warm_up(session.run, feed, int(spec.get("warmup", 5)))
        plan = LoopPlan(spec.get("min_iterations", 20), spec.get("min_duration_s", 0.5),
                        spec.get("max_iterations"), spec.get("max_duration_s"), deadline_ns(config))
        lat, _, state = timed_loop(session.run, None, feed, plan, typical(cold, warm))
    except Exception as exc:
        raise classify(exc, "runtime", f"inference failed at batch {batch}") from None
    seconds = int(lat.sum()) / 1e9
    runs_per_s = len(lat) / seconds if seconds else 0.0
    p50 = float(np.sort(lat)[(len(lat) + 1) // 2 - 1])  # nearest rank: ceil(n / 2)
    return {"batch": batch, "iterations": len(lat), "p50_ms": p50 / NS_PER_MS, "mean_ms": float(lat.mean()) / NS_PER_MS,
            "runs_per_s": runs_per_s, "items_per_s": runs_per_s * batch, "cold_ms": cold / NS_PER_MS,
            "stop": state.reason}


# -- stream: the long-running inference job ---------------------------------------------------------
#
# Started detached (setsid nohup ... &) by hil/runner/stream.py, so it outlives hil's SSH session.
# Everything it has to say goes to files in its directory (stream.dir):
#   results.jsonl  one JSON line per inference, appended, never rewritten:
#                  {"seq", "frame", "t_mono_ns", "t_wall", "latency_ms", "top1", "score"}
#   status.json    replaced atomically every status_interval_s, on each disk-full change and on exit
# SIGTERM/SIGINT end it cleanly ("stopped"); SIGHUP is ignored.

STREAM_STATUS = "status.json"
STREAM_RESULTS = "results.jsonl"
STATUS_SLOT_BYTES = 8192  # every status document is padded to this; allocated once, at start
MAX_DROPPED_RANGES = 64  # status lists this many ranges of dropped seqs at most; the count covers all
MAX_MESSAGE = 1000
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_LINKS_ERRNOS = (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV)
SLEEP_SLICE_NS = 50 * NS_PER_MS  # pacing sleeps in slices, so SIGTERM and status ticks wait at most this


def quiet_log(message):
    """log(), for a job whose stderr file may sit on a full disk: a lost diagnostic must not end the job."""
    try:
        log(message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def write_fully(fd, data, offset=None):
    """os.write/os.pwrite until all of `data` is out; raises OSError as soon as one fails."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.write(fd, view[done:]) if offset is None else os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "write returned 0")
        done += n


class StatusFile:
    """status.json, replaced atomically (a reader sees a whole old or a whole new document), even on a full disk.

    Two slot files are filled at start. Each update rewrites in place the slot that status.json does
    not point at (its pages already exist: no new space needed), then hard-links it and renames the
    link over status.json. A plain temp-file-and-rename would need a fresh block, which a full disk
    refuses, and the host would keep reading a stale "all is well". Where the filesystem has no hard
    links, that plain way is the fallback.
    """

    def __init__(self, directory):
        self.path = os.path.join(directory, STREAM_STATUS)
        self.link = self.path + ".link"
        self.slots = [os.path.join(directory, f".status.{i}") for i in (0, 1)]
        self.fds = []
        for slot in self.slots:
            fd = os.open(slot, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            write_fully(fd, b" " * STATUS_SLOT_BYTES)
            self.fds.append(fd)
        self.current = 0
        self.links = True

    def write(self, doc, sync=False):
        data = fit_status(doc)
        if self.links:
            try:
                self._write_slot(data, sync)
                return
            except OSError as exc:
                if exc.errno not in NO_LINKS_ERRNOS:
                    raise
                self.links = False
        temp = self.path + ".tmp"
        with open(temp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temp, self.path)

    def _write_slot(self, data, sync):
        slot = 1 - self.current
        write_fully(self.fds[slot], data, offset=0)
        if sync:
            os.fsync(self.fds[slot])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.link)  # left over from a write interrupted between link and rename
        os.link(self.slots[slot], self.link)
        os.replace(self.link, self.path)
        self.current = slot


def fit_status(doc):
    """The status as exactly STATUS_SLOT_BYTES of JSON padded with spaces; long lists and messages are cut."""
    doc = dict(doc)
    for _ in range(2):
        data = json.dumps(doc, separators=(",", ":"), default=json_default).encode()
        if len(data) < STATUS_SLOT_BYTES:
            return data + b" " * (STATUS_SLOT_BYTES - 1 - len(data)) + b"\n"
        doc["dropped"] = doc.get("dropped", [])[:8]
        doc["dropped_truncated"] = True
        doc["message"] = str(doc.get("message", ""))[:200]
        doc["error"] = None if not doc.get("error") else {k: str(v)[:200] for k, v in doc["error"].items()}
    raise RunnerFailure("runtime", "the stream status does not fit its slot", data[:200].decode(errors="replace"))


class DroppedSeqs:
    """Seqs whose results were never written, as inclusive [first, last] ranges (the first few) and a count."""

    def __init__(self):
        self.ranges = []
        self.count = 0
        self.truncated = False

    def add(self, seq):
        self.count += 1
        if self.ranges and self.ranges[-1][1] == seq - 1:
            self.ranges[-1][1] = seq
        elif len(self.ranges) < MAX_DROPPED_RANGES:
            self.ranges.append([seq, seq])
        else:
            self.truncated = True


class ResultWriter:
    """Appends result lines so that the file is always a prefix of the intended stream: never truncated or rewritten.

    Each line goes out with one os.write. On a full disk a write may land in part: the rest of that
    line, and the lines after it up to backlog_bytes, wait in memory in order and are retried on
    each status tick; lines beyond the backlog are dropped and their seqs counted. When space comes
    back the owed bytes complete the partial line first. So a reader sees whole lines in seq order,
    plus at most one partial line at the end, which it must leave for later.
    """

    def __init__(self, path, fsync_every, backlog_bytes):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.fsync_every = max(1, fsync_every)
        self.backlog_bytes = backlog_bytes
        self.pending = bytearray()  # bytes owed to the file, in order
        self.pending_seqs = collections.deque()  # the seq of each line ending in `pending`
        self.written = 0  # complete lines in the file
        self.last_written_seq = None
        self.unsynced = 0
        self.disk_full = False
        self.disk_full_events = 0
        self.errors = 0
        self.last_error = None
        self.dropped = DroppedSeqs()

    def add(self, seq, line):
        if self.pending:  # already owing: keep the order, and retry on the tick rather than per frame
            if len(self.pending) + len(line) > self.backlog_bytes:
                self.dropped.add(seq)
            else:
                self.pending += line
                self.pending_seqs.append(seq)
            return
        self.pending += line
        self.pending_seqs.append(seq)
        self.flush()

    def flush(self):
        """Write what is owed; True once nothing is."""
        while self.pending:
            try:
                n = os.write(self.fd, self.pending)
                if n <= 0:
                    raise OSError(errno.EIO, "write returned 0")
            except OSError as exc:
                self._failed(exc)
                return False
            self._wrote(n)
        if self.disk_full:
            self.disk_full = False
            quiet_log("stream: disk space is back; results are written again")
        return True

    def _wrote(self, n):
        lines = self.pending.count(b"\n", 0, n)
        for _ in range(lines):
            self.last_written_seq = self.pending_seqs.popleft()
        del self.pending[:n]
        self.written += lines
        self.unsynced += lines
        if self.unsynced >= self.fsync_every:
            self.sync()

    def sync(self):
        self.unsynced = 0
        try:
            os.fsync(self.fd)
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc):
        self.errors += 1
        self.last_error = f"{exc.strerror or exc} (errno {exc.errno})"
        if exc.errno in DISK_FULL_ERRNOS and not self.disk_full:
            self.disk_full = True
            self.disk_full_events += 1
            quiet_log(f"stream: disk full; holding up to {self.backlog_bytes} bytes of results, dropping the rest")

    def close(self):
        self.flush()
        self.sync()
        os.close(self.fd)


class FrameSource:
    """The replayed sensor feed: rows of the npz input set, one frame (batch of 1) at a time."""

    def __init__(self, np, session, spec):
        data = load_npz(np, spec["npz"])
        keys = input_keys(session, spec)
        arrays = {m.name: npz_array(np, data, keys[m.name], m, spec["npz"]) for m in session.get_inputs()}
        counts = {len(a) for a in arrays.values()}
        if len(counts) != 1 or 0 in counts:
            raise RunnerFailure("bad_input", f"inputs in {spec['npz']} are empty or of different lengths: "
                                             f"{sorted(counts)}")
        self.count = counts.pop()
        self.arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}

    def feed(self, frame):
        return {name: a[frame:frame + 1] for name, a in self.arrays.items()}


def scores_output(session, spec):
    """The output top1/score come from: stream.scores_output, else "probabilities", else the first float output."""
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    wanted = spec.get("scores_output")
    if wanted:
        if wanted not in names:
            raise RunnerFailure("config", f"the model has no output {wanted!r} (outputs: {', '.join(names)})")
        return wanted
    if "probabilities" in names:
        return "probabilities"
    for o in outputs:
        if "float" in o.type:
            return o.name
    return names[0]


class StreamPlan:
    """How the feed is replayed: frame rate, how many frames, looping, where to start."""

    def __init__(self, spec):
        self.fps = number(spec, "fps", None, float, 0)
        if self.fps == 0:
            raise RunnerFailure("config", "stream.fps must be > 0, or null for as fast as possible")
        self.period_ns = int(1e9 / self.fps) if self.fps else 0
        self.loop = bool(spec.get("loop", True))
        self.offset = number(spec, "offset", 0, int, 0)
        self.frames = number(spec, "frames", None, int, 0)  # None: until stopped
        max_s = number(spec, "max_duration_s", None, float, 0)
        self.max_ns = None if max_s is None else int(max_s * 1e9)
        self.status_ns = int(number(spec, "status_interval_s", 0.5, float, 0.01) * 1e9)
        self.count = 1

    def bind(self, count):
        """Fit the plan to the input set's `count` frames."""
        if self.offset >= count:
            raise RunnerFailure("bad_input", f"stream.offset {self.offset} is past the input set's {count} frames")
        if not self.loop:  # one pass: at most to the end of the set
            left = count - self.offset
            self.frames = left if self.frames is None else min(self.frames, left)
        self.count = count

    def frame(self, seq):
        return (self.offset + seq) % self.count


class Stream:
    """One streaming job: its files, its counters, and the status it publishes."""

    def __init__(self, np, spec, directory):
        self.np = np
        self.spec = spec
        self.directory = directory
        self.status = StatusFile(directory)
        self.writer = ResultWriter(os.path.join(directory, STREAM_RESULTS), number(spec, "fsync_every", 100, int, 1),
                                   number(spec, "backlog_bytes", 65536, int, 0))
        self.started_wall = time.time()
        self.seq = 0  # the next result's seq
        self.late_frames = 0
        self.stop_signal = None
        self.next_status_ns = 0
        self.plan = None

    def on_signal(self, signum, frame):
        self.stop_signal = signum

    def publish(self, state, message="", error=None, sync=False):
        w = self.writer
        doc = {"job": self.spec.get("job"), "pid": os.getpid(), "state": state, "message": message[:MAX_MESSAGE],
               "error": error, "started_wall": self.started_wall, "updated_wall": time.time(),
               "seq": self.seq, "last_seq": self.seq - 1 if self.seq else None,
               "results_written": w.written, "last_written_seq": w.last_written_seq,
               "errors": w.errors, "last_error": w.last_error, "disk_full": w.disk_full,
               "disk_full_events": w.disk_full_events, "backlog_bytes": len(w.pending),
               "dropped_count": w.dropped.count, "dropped": w.dropped.ranges,
               "dropped_truncated": w.dropped.truncated, "late_frames": self.late_frames,
               "fps": self.plan.fps if self.plan else None, "frames": self.plan.frames if self.plan else None}
        try:
            self.status.write(doc, sync=sync)
        except OSError as exc:  # the job goes on; the host sees the status age instead
            self.writer.errors += 1
            self.writer.last_error = f"status: {exc.strerror or exc} (errno {exc.errno})"
        self.next_status_ns = time.monotonic_ns() + (self.plan.status_ns if self.plan else 500 * NS_PER_MS)

    def tick(self, now_ns):
        if now_ns >= self.next_status_ns:
            if self.writer.pending:
                self.writer.flush()
            self.publish("running")

    def wait_until(self, due_ns):
        while self.stop_signal is None:
            now = time.monotonic_ns()
            if now >= due_ns:
                return
            self.tick(now)
            time.sleep(min(due_ns - now, SLEEP_SLICE_NS, max(0, self.next_status_ns - now)) / 1e9)

    def run(self, session, source, plan):
        """Infer frame after frame until done, stopped or failed; returns (state, message)."""
        np = self.np
        scores = [scores_output(session, self.spec)]
        run = session.run
        writer = self.writer
        dumps = json.dumps
        t0 = time.monotonic_ns()
        due = t0
        self.publish("running")
        while True:
            if self.stop_signal is not None:
                return "stopped", f"stopped by signal {self.stop_signal}"
            if plan.frames is not None and self.seq >= plan.frames:
                return "finished", f"all {plan.frames} frames done"
            if plan.max_ns is not None and time.monotonic_ns() - t0 >= plan.max_ns:
                return "finished", f"max_duration_s reached after {self.seq} frames"
            if plan.period_ns:
                self.wait_until(due)
                if self.stop_signal is not None:
                    continue
                now = time.monotonic_ns()
                if now - due > plan.period_ns:  # behind by over a frame: re-anchor, never burst to catch up
                    self.late_frames += 1
                    due = now
                due += plan.period_ns
            frame = plan.frame(self.seq)
            feed = source.feed(frame)
            t_mono = time.monotonic_ns()
            t_wall = time.time()
            p0 = time.perf_counter_ns()
            try:
                out = run(scores, feed)[0]
            except Exception as exc:
                raise classify(exc, "runtime", f"inference failed on frame {frame} (seq {self.seq})") from None
            p1 = time.perf_counter_ns()
            row = np.asarray(out).reshape(-1)
            top1 = int(row.argmax())
            line = dumps({"seq": self.seq, "frame": frame, "t_mono_ns": t_mono, "t_wall": t_wall,
                          "latency_ms": (p1 - p0) / NS_PER_MS, "top1": top1, "score": float(row[top1])},
                         separators=(",", ":"))
            was_full = writer.disk_full
            writer.add(self.seq, (line + "\n").encode())
            self.seq += 1
            if writer.disk_full != was_full:
                self.publish("running")  # the host should hear of a full disk now, not at the next tick
            else:
                self.tick(time.monotonic_ns())


def detach():
    """Belt and braces behind the host's setsid nohup: our own session, and a hang-up does not end us."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if os.getsid(0) != os.getpid():
        with contextlib.suppress(OSError):  # fails for a process group leader: then the host's setsid did it
            os.setsid()


def run_stream(ort, np, config):
    spec = config.get("stream") or {}
    directory = spec.get("dir")
    if not directory or not os.path.isdir(directory) or not spec.get("npz"):
        raise RunnerFailure("config", "stream mode needs stream.dir (an existing directory) and stream.npz")
    detach()
    job = Stream(np, spec, directory)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, job.on_signal)
    job.publish("starting")
    try:
        job.plan = StreamPlan(spec)  # config mistakes surface before the slow model load
        session, _, _ = create_session(ort, config)
        source = FrameSource(np, session, spec)
        job.plan.bind(source.count)
        state, message = job.run(session, source, job.plan)
        error = None
    except Exception as exc:
        failure = classify(exc, "runtime", "the stream failed")
        state, message = "failed", f"{failure.category}: {failure.message}"
        error = {"category": failure.category, "message": failure.message, "detail": failure.detail}
        quiet_log(f"stream: {message}: {failure.detail}")
    try:
        job.writer.close()
    except OSError as exc:
        job.writer.errors += 1
        job.writer.last_error = f"close: {exc}"
    job.publish(state, message, error, sync=True)
    if error is not None:
        raise RunnerFailure(error["category"], error["message"], error["detail"])
    return {**base_report(ort, np, config), "state": state, "message": message, "frames": job.seq,
            "results_written": job.writer.written, "dropped_count": job.writer.dropped.count}


MODES = {"latency": run_latency, "eval": run_eval, "sweep": run_sweep, "overhead": run_overhead,
         "stream": run_stream}


def main(argv):
    # Our stdout is the result: keep everything else (onnxruntime's C++ logging included) off it.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        config = read_config(argv)
        mode = config.get("mode", "latency")
        if mode not in MODES:
            raise RunnerFailure("config", f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        try:
            import numpy as np
            import onnxruntime as ort
        except Exception as exc:
            raise RunnerFailure("runtime", "numpy and onnxruntime must import on the device",
                                f"{type(exc).__name__}: {exc}") from None
        report = MODES[mode](ort, np, config)
        status = 0
    except RunnerFailure as failure:
        report = {"ok": False, "error": {"category": failure.category, "message": failure.message,
                                         "detail": failure.detail}}
        status = EXIT_ERROR
    except BaseException as exc:  # anything unforeseen still comes back as JSON, its traceback on stderr
        traceback.print_exc()
        failure = classify(exc, "runtime", "the runner failed")
        report = {"ok": False, "error": {"category": failure.category, "message": failure.message,
                                         "detail": failure.detail}}
        status = EXIT_ERROR
    if not report.get("ok"):
        log(f"{report['error']['category']}: {report['error']['message']}: {report['error']['detail']}")
    try:
        json.dump(report, out, default=json_default, separators=(",", ":"))
        out.write("\n")
        out.flush()
    except OSError as exc:  # a detached stream's stdout is a file, maybe on a full disk; its status file says it all
        log(f"cannot write the report: {exc}")
    return status


def json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
