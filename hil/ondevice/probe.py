"""Facts probe: run on the device with its own Python (standard library only), prints one JSON object.

Shipped as source text on stdin, like the command server; never imported on the host.
"""

import json
import os
import platform
import socket
import sys


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_limits():
    """CPU quota (cores) and memory limit (bytes) of our cgroup, v1 or v2, when there is one."""
    cpus = memory = None
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base = "/sys/fs/cgroup" + path
            cpu_max = (_read(base + "/cpu.max") or "max").split()
            if cpu_max[0] != "max":
                cpus = int(cpu_max[0]) / int(cpu_max[1])
            mem = _read(base + "/memory.max")
            if mem and mem != "max":
                memory = int(mem)
        elif "cpu" in controllers.split(","):
            base = "/sys/fs/cgroup/" + controllers + path
            quota = _read(base + "/cpu.cfs_quota_us")
            period = _read(base + "/cpu.cfs_period_us")
            if quota and period and int(quota) > 0:
                cpus = int(quota) / int(period)
        elif "memory" in controllers.split(","):
            mem = _read("/sys/fs/cgroup/memory" + path + "/memory.limit_in_bytes")
            if mem and int(mem) < 1 << 60:
                memory = int(mem)
    return cpus, memory


def _meminfo_total():
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def _disk(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path or "/")
    return {"path": path, "free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}


def _runtime():
    out = {"numpy": None, "onnxruntime": None, "providers": [], "onnxruntime_error": None}
    try:
        import numpy

        out["numpy"] = numpy.__version__
    except Exception as exc:
        out["onnxruntime_error"] = f"numpy: {type(exc).__name__}: {exc}"
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
        out["providers"] = list(onnxruntime.get_available_providers())
    except Exception as exc:
        out["onnxruntime_error"] = f"{type(exc).__name__}: {exc}"
    return out


def main():
    workdir = sys.argv[1] if len(sys.argv) > 1 else "/"
    cpus, memory = _cgroup_limits()
    uname = platform.uname()
    facts = {
        "hostname": socket.gethostname(),
        "arch": uname.machine,
        "kernel": uname.release,
        "os": (_read("/etc/os-release") or "").partition('PRETTY_NAME="')[2].partition('"')[0],
        "cpu_count": os.cpu_count(),
        "cpu_quota": cpus,
        "memory_total_bytes": _meminfo_total(),
        "memory_limit_bytes": memory,
        "disk": _disk(workdir),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "uid": os.getuid(),
    }
    facts.update(_runtime())
    json.dump(facts, sys.stdout)


main()
