"""CPU and memory limits for an emulated device, on cgroup v1 or v2, whichever the host has."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from hil.errors import LabError

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# A short period: with the kernel's default 100 ms, a 0.5-CPU device runs at full speed for 50 ms and
# then stalls, so inferences shorter than that are not slowed at all (only the tail is). At 10 ms the
# quota bites every few milliseconds, as a slower CPU would.
CFS_PERIOD_US = 10_000


@dataclass(frozen=True)
class Cgroup:
    """One named group; on v1 it lives in both the cpu and the memory hierarchy."""

    name: str
    dirs: tuple[Path, ...]
    version: int

    def add(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def limits(self) -> dict[str, str]:
        """What the kernel enforces right now, read back for `lab status` and the tests."""
        files = {1: ("cpu.cfs_quota_us", "memory.limit_in_bytes"), 2: ("cpu.max", "memory.max")}[self.version]
        out: dict[str, str] = {}
        for d in self.dirs:
            for name in files:
                with contextlib.suppress(OSError):
                    out[name] = (d / name).read_text().strip()
        return out


def cgroup_version() -> int | None:
    """2 on a unified hierarchy, 1 when v1 cpu and memory controllers are mounted, else None."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return 2
    if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists() and (CGROUP_ROOT / "memory").is_dir():
        return 1
    return None


def _dirs(name: str, version: int) -> tuple[Path, ...]:
    if version == 2:
        return (CGROUP_ROOT / name,)
    return (CGROUP_ROOT / "cpu" / name, CGROUP_ROOT / "memory" / name)


def create(name: str, cpus: float, memory_bytes: int) -> Cgroup | None:
    """Create (or reset) the group with its limits; None when the host offers no cgroups to us."""
    version = cgroup_version()
    if version is None:
        log.warning("no usable cgroup cpu/memory controllers: CPU and memory limits of %s are NOT enforced", name)
        return None
    group = Cgroup(name, _dirs(name, version), version)
    quota = max(1000, int(cpus * CFS_PERIOD_US))  # the kernel's minimum quota is 1 ms
    try:
        if version == 2:
            _enable_v2_controllers()
            d = group.dirs[0]
            d.mkdir(exist_ok=True)
            (d / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}\n")
            (d / "memory.max").write_text(f"{memory_bytes}\n")
            with contextlib.suppress(OSError):
                (d / "memory.swap.max").write_text("0\n")
        else:
            cpu, mem = group.dirs
            cpu.mkdir(exist_ok=True)
            mem.mkdir(exist_ok=True)
            (cpu / "cpu.cfs_period_us").write_text(f"{CFS_PERIOD_US}\n")
            (cpu / "cpu.cfs_quota_us").write_text(f"{quota}\n")
            (mem / "memory.limit_in_bytes").write_text(f"{memory_bytes}\n")
    except OSError as exc:
        raise LabError(f"cannot set up cgroup {name} ({'v2' if version == 2 else 'v1'}): {exc}") from None
    return group


def _enable_v2_controllers() -> None:
    control = CGROUP_ROOT / "cgroup.subtree_control"
    enabled = control.read_text().split()
    for controller in ("cpu", "memory"):
        if controller not in enabled:
            control.write_text(f"+{controller}\n")


def find(prefix: str) -> list[Cgroup]:
    """Every group of ours (name starting with `prefix`), including ones a crashed run left."""
    version = cgroup_version()
    if version is None:
        return []
    parent = CGROUP_ROOT if version == 2 else CGROUP_ROOT / "cpu"
    names = {p.name for p in parent.glob(f"{prefix}*") if p.is_dir()}
    if version == 1:
        names |= {p.name for p in (CGROUP_ROOT / "memory").glob(f"{prefix}*") if p.is_dir()}
    return [Cgroup(n, tuple(d for d in _dirs(n, version) if d.exists()), version) for n in sorted(names)]


def remove(group: Cgroup, timeout: float = 3.0) -> None:
    """Kill what is left inside and remove the group; a group only goes once it is empty."""
    end = time.monotonic() + timeout
    while True:
        for pid in group.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        busy = []
        for d in group.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise LabError(f"cannot remove cgroup {d}: {exc}") from None
                busy.append(d)
        if not busy:
            return
        if time.monotonic() > end:
            raise LabError(f"cgroup {group.name} still has processes after {timeout:g} s: {sorted(group.pids())}")
        time.sleep(0.02)
