"""What hil may have left on a device, read from its kernel directly, not through hil.

For devices this machine runs in network namespaces (the emulated lab's and the hand-built one):
iptables rules carrying hil's fault tag, root qdiscs other than the kernel's defaults, and hil's fill
files in the device's workdir (inside the device's own mount namespace). What hil's own sweep says
does not count here: this is the check of it.
"""

from __future__ import annotations

import subprocess

DEFAULT_QDISCS = ("noqueue", "pfifo_fast", "fq_codel", "mq", "noop")


def _run(args: list[str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _a_process_of(netns: str) -> str:
    pids = _run(["ip", "netns", "pids", netns]).split()
    if not pids:
        raise RuntimeError(f"no process runs in netns {netns}: is the device up?")
    return pids[0]


def leftovers(netns: str, workdir: str) -> list[str]:
    """Every trace of a hil fault on the device in `netns`; [] when there is none."""
    found = [f"iptables: {line}" for line in _run(["ip", "netns", "exec", netns, "iptables-save"]).splitlines()
             if "hil-fault" in line]
    for line in _run(["ip", "netns", "exec", netns, "tc", "qdisc", "show"]).splitlines():
        kind = line.split()[1] if len(line.split()) > 1 else ""
        if " root " in f" {line} " and kind not in DEFAULT_QDISCS:
            found.append(f"qdisc: {line}")
    listing = _run(["nsenter", "-t", _a_process_of(netns), "-m", "sh", "-c",
                    f"ls -a {workdir}/.hil 2>/dev/null; true"])
    found += [f"fill file: {workdir}/.hil/{name}" for name in listing.split() if name.startswith("fill-")]
    return found
