"""The fault ledger on the device: what is applied, and the script that undoes it.

Every fault is written here BEFORE it is applied (`<workdir>/.hil/faults/<id>.json` and
`<id>.undo.sh`), so whatever happens to the host (a crash, SIGKILL, a pulled cable) the device
knows how to get back: its dead-man timer runs the undo script, and the next run's sweep (or
`hil faults clear`) runs every script still there.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from hil.device import Device
from hil.errors import InfraError

log = logging.getLogger(__name__)

SWEEP_TIMEOUT = 60.0


@dataclass(frozen=True)
class FaultRecord:
    id: str
    kind: str
    params: dict[str, Any]
    applied_at: str  # host UTC time, ISO 8601
    max_seconds: float | None  # the dead-man restores it after this long, if armed
    run_id: str = ""
    seed: int | None = None
    deadman_pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def ledger_dir(device: Device) -> str:
    return f"{device.workdir}/.hil/faults"


def _paths(device: Device, fault_id: str) -> tuple[str, str]:
    base = f"{ledger_dir(device)}/{fault_id}"
    return f"{base}.json", f"{base}.undo.sh"


def record(device: Device, rec: FaultRecord, undo: str) -> None:
    """Write the entry and its undo script (the script first: an entry always has its undo)."""
    entry, script = _paths(device, rec.id)
    directory = shlex.quote(ledger_dir(device))
    text = f"#!/bin/sh\n# undoes hil fault {rec.id} ({rec.kind})\n{undo}\n"
    device.run(f"mkdir -p {directory} && cat > {shlex.quote(script)}.tmp && mv {shlex.quote(script)}.tmp "
               f"{shlex.quote(script)}", stdin=text.encode(), timeout=15, check=True)
    device.run(f"cat > {shlex.quote(entry)}.tmp && mv {shlex.quote(entry)}.tmp {shlex.quote(entry)}",
               stdin=rec.to_json().encode(), timeout=15, check=True)


def arm_deadman(device: Device, rec: FaultRecord, seconds: float) -> int:
    """A detached timer on the device that undoes the fault after `seconds`, even if hil is gone."""
    entry, script = _paths(device, rec.id)
    body = f"sleep {seconds:g}; sh {shlex.quote(script)}; rm -f {shlex.quote(entry)} {shlex.quote(script)}"
    out = device.run(f"setsid nohup /bin/sh -c {shlex.quote(body)} >/dev/null 2>&1 < /dev/null & echo $!",
                     timeout=15, check=True, root=True).stdout
    return int(out.strip())


def _undo_command(device: Device, fault_id: str, deadman_pid: int | None) -> str:
    entry, script = _paths(device, fault_id)
    # Stop the dead-man first (only if it is still ours), then undo, then forget the entry.
    stop = (f"if [ -r /proc/{deadman_pid}/cmdline ] && grep -q {shlex.quote(fault_id)} /proc/{deadman_pid}/cmdline; "
            f"then kill {deadman_pid}; fi; " if deadman_pid else "")
    return f"{stop}sh {shlex.quote(script)}; rm -f {shlex.quote(entry)} {shlex.quote(script)}"


def revert(device: Device, rec: FaultRecord, *, timeout: float = 30.0) -> None:
    """Undo over SSH (raises InfraError when the device cannot be reached that way)."""
    device.run(_undo_command(device, rec.id, rec.deadman_pid), timeout=timeout, check=True, root=True)


def revert_over_serial(device: Device, rec: FaultRecord, *, timeout: float = 30.0) -> None:
    """Undo through the serial console: the way back in when the fault took the network away."""
    result = device.console(_undo_command(device, rec.id, rec.deadman_pid), timeout=timeout)
    if not result.ok:
        raise InfraError(f"device '{device.name}': undoing fault {rec.id} over the serial console failed "
                         f"({result.exit_status}): {result.stdout.strip()[-300:]}")


def pending(device: Device) -> list[FaultRecord]:
    """Faults still in the ledger (applied and not yet reverted)."""
    out = device.run(f"cat {shlex.quote(ledger_dir(device))}/*.json 2>/dev/null; true", timeout=15).stdout
    records = []
    for line in out.splitlines():
        try:
            records.append(FaultRecord(**json.loads(line)))
        except (ValueError, TypeError):
            log.warning("%s: a damaged fault ledger entry: %r", device.name, line[:200])
    return records


def run_id() -> str:
    """Who applies faults: host, pid and start time, so a later sweep can tell a live run from a dead one."""
    return f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"


def _live_here(rec: FaultRecord) -> bool:
    """The run that applied it is a process still alive on this host (then it is not left over)."""
    host, _, rest = rec.run_id.rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not rest.isdigit() or int(rest) == os.getpid():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(device: Device, *, spare_live_runs: bool = True) -> list[FaultRecord]:
    """Undo everything an earlier (crashed) run left applied; returns what was undone.

    A fault whose run is still alive on this host is spared: two runs on one lab must not undo each
    other's faults. (Runs on other hosts cannot be told apart here; leases keep them off a device
    another run holds.) `hil faults clear` passes spare_live_runs=False: undo it all.
    """
    left = [r for r in pending(device) if not (spare_live_runs and _live_here(r))]
    for rec in left:
        log.warning("%s: undoing fault %s (%s, applied %s by run %s) left by an earlier run",
                    device.name, rec.id, rec.kind, rec.applied_at, rec.run_id or "?")
        revert(device, rec, timeout=SWEEP_TIMEOUT)
    # Undo scripts whose entry never got written (a crash between the two writes). Looked for first
    # without root, so a device that cannot become root is only asked to when there is something to undo.
    orphans = device.run(f"ls {shlex.quote(ledger_dir(device))}/*.undo.sh 2>/dev/null; true", timeout=15).stdout
    if orphans.strip():
        device.run(f"cd {shlex.quote(ledger_dir(device))} && for s in *.undo.sh; do "
                   f"[ -e \"$s\" ] && sh \"$s\" && rm -f \"$s\"; done; true", timeout=SWEEP_TIMEOUT, root=True)
    return left
