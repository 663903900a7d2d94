"""The fault ledger on the device: what is applied, the script that undoes it, and the proof it is gone.

Every fault is written here BEFORE it is applied (`<workdir>/.hil/faults/<id>.json` and
`<id>.undo.sh`), so whatever happens to the host (a crash, SIGKILL, a pulled cable) the device
knows how to get back: its dead-man timer runs the undo script, and the next run's sweep (or
`hil faults clear`) runs every script still there.

An undo is proven, not assumed. The undo script exits non-zero when its undo fails, and also when
the device's state, read back right after, still shows the fault (its tagged iptables rule, hil's
qdisc, its fill file, a clock control file not back to what it held). The host then reads the kernel's
state once more itself (`kernel_state`), and only when that shows the fault gone are the entry and
the script removed and the dead-man stopped. Until then the dead-man can still undo it, and it too
removes the entry only when the script (undo and check) succeeded.

Leftovers are also found from the kernel, not only from the ledger (`sweep`): iptables rules tagged
`hil-fault:<id>`, qdiscs with hil's handle (`QDISC_HANDLE`), fill files `<workdir>/.hil/fill-<id>` and
processes carrying a fault's tag (a flapping loop), even when the ledger is gone or was never written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hil.device import Device
from hil.errors import InfraError
from hil.transport.base import Result

log = logging.getLogger(__name__)

SWEEP_TIMEOUT = 60.0
TAG = "hil-fault:"  # every iptables rule and detached process of a fault carries TAG + its id
# Every qdisc hil adds is the root qdisc of its interface with this handle (hex "7e57", read "test"), so
# hil's own qdiscs can be told apart from a device's own ones and found without the ledger.
QDISC_HANDLE = "7e57:"
FILL_PREFIX = "fill-"  # <workdir>/.hil/fill-<fault id>
# A pattern that finds TAG without matching itself: a process whose command line holds this pattern
# (the shell reading the state) does not hold TAG.
_TAG_PATTERN = "hil-faul[t]:"
_FAULT_ID = re.compile(r"hil-fault:([A-Za-z0-9_]+-[0-9a-f]+)")
# A dead-man (see arm_deadman) as its command line reads, and one that does not match itself.
_DEADMAN = re.compile(r"sleep [0-9.e+]+; sh \S*/\.hil/faults/([A-Za-z0-9_]+-[0-9a-f]+)\.undo\.sh")
_DEADMAN_PATTERN = "sleep [0-9.e+]+; s[h] [^ ]*/[.]hil/faults/"

Runner = Callable[..., Result]  # Device.run or Device.console: (command, *, timeout, root) -> Result


class UndoUnproven(InfraError):
    """An undo failed, or the device's state, read back, still shows the fault."""


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
    root: bool = True  # the privilege the apply had: every undo of it runs with the same
    # What shows the fault on the device, read back to prove it gone: {"tags": [...], "qdisc": interface,
    # "files": [paths], "control": path, "content": what the control file must hold again}.
    trace: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        """One line for a report: what, with which parameters, when and by whom; or what the kernel showed."""
        if self.extra.get("found"):
            return f"{self.kind} {self.id}: found in the kernel, no ledger entry: " + "; ".join(self.extra["found"])
        return f"{self.kind} {self.params} (applied {self.applied_at}, run {self.run_id or '?'})"


def ledger_dir(device: Device) -> str:
    return f"{device.workdir}/.hil/faults"


def _paths(device: Device, fault_id: str) -> tuple[str, str]:
    base = f"{ledger_dir(device)}/{fault_id}"
    return f"{base}.json", f"{base}.undo.sh"


def gone_check(trace: dict[str, Any]) -> str:
    """Shell that exits 0 only when the device's state no longer shows the fault (see FaultRecord.trace).

    State that cannot be read (iptables refusing a non-root user, say) counts as not gone.
    """
    checks = []
    for tag in trace.get("tags", []):
        pattern = shlex.quote(_TAG_PATTERN + tag.removeprefix(TAG) + "([^0-9a-f]|$)")
        checks.append(f"rules=$(iptables -w -S) || exit 1; ! printf '%s\\n' \"$rules\" | grep -Eq {pattern} || exit 1")
        checks.append(f"! grep -Eqs {pattern} /proc/[0-9]*/cmdline || exit 1")
    if trace.get("qdisc"):
        dev = shlex.quote(trace["qdisc"])
        checks.append(f"qdiscs=$(tc qdisc show dev {dev}) || exit 1; "
                      f"! printf '%s\\n' \"$qdiscs\" | grep -q ' {QDISC_HANDLE} ' || exit 1")
    for path in trace.get("files", []):
        checks.append(f"[ ! -e {shlex.quote(path)} ] || exit 1")
    if trace.get("control"):
        checks.append(f"[ \"$(cat {shlex.quote(trace['control'])} 2>/dev/null)\" = {shlex.quote(trace['content'])} ] "
                      "|| exit 1")
    return "\n".join(checks) or "true"


def undo_file(rec: FaultRecord, undo: str) -> str:
    """The undo script as stored: the undo in a subshell (its own exit status counts), then the check."""
    return (f"#!/bin/sh\n# undoes hil fault {rec.id} ({rec.kind}); exits non-zero unless the fault is gone\n"
            "PATH=$PATH:/usr/sbin:/sbin\n"
            f"( {undo}\n) || {{ st=$?; echo \"hil: the undo of fault {rec.id} failed (exit $st)\" >&2; exit $st; }}\n"
            f"( {gone_check(rec.trace)}\n) || {{ echo \"hil: fault {rec.id} is still there after its undo\" >&2; "
            "exit 3; }\n")


def record(device: Device, rec: FaultRecord, undo: str) -> None:
    """Write the entry and its undo script (the script first: an entry always has its undo)."""
    entry, script = _paths(device, rec.id)
    directory = shlex.quote(ledger_dir(device))
    device.run(f"mkdir -p {directory} && cat > {shlex.quote(script)}.tmp && mv {shlex.quote(script)}.tmp "
               f"{shlex.quote(script)}", stdin=undo_file(rec, undo).encode(), timeout=15, check=True)
    device.run(f"cat > {shlex.quote(entry)}.tmp && mv {shlex.quote(entry)}.tmp {shlex.quote(entry)}",
               stdin=rec.to_json().encode(), timeout=15, check=True)


def arm_deadman(device: Device, rec: FaultRecord, seconds: float) -> int:
    """A detached timer on the device that undoes the fault after `seconds`, even if hil is gone.

    It forgets the fault only when the undo script (undo, then the check that it is gone) succeeded;
    else the entry stays for the next sweep. Runs with the apply's privilege.
    """
    entry, script = _paths(device, rec.id)
    body = f"sleep {seconds:g}; sh {shlex.quote(script)} && rm -f {shlex.quote(entry)} {shlex.quote(script)}"
    out = device.run(f"setsid nohup /bin/sh -c {shlex.quote(body)} >/dev/null 2>&1 < /dev/null & echo $!",
                     timeout=15, check=True, root=rec.root).stdout
    return int(out.strip())


# -- reading the device's state back -------------------------------------------------------------


@dataclass(frozen=True)
class KernelState:
    """What of hil's faults the device shows right now."""

    rules: tuple[str, ...] = ()  # `iptables -S` lines carrying TAG
    qdiscs: tuple[tuple[str, str], ...] = ()  # (interface, `tc qdisc show` line) with QDISC_HANDLE
    files: tuple[str, ...] = ()  # names in <workdir>/.hil
    processes: tuple[tuple[int, str], ...] = ()  # (pid, command line) carrying TAG
    deadmen: tuple[tuple[int, str], ...] = ()  # (pid, fault id) of dead-man timers waiting
    controls: dict[str, str] = field(default_factory=dict)  # control file -> content
    network_read: bool = False  # rules and qdiscs were read (needs root)

    def fault_ids(self) -> set[str]:
        ids = {m.group(1) for line in self.rules for m in _FAULT_ID.finditer(line)}
        ids |= {m.group(1) for _, cmd in self.processes for m in _FAULT_ID.finditer(cmd)}
        return ids | {name.removeprefix(FILL_PREFIX) for name in self.files if name.startswith(FILL_PREFIX)}


def _state_script(hil_dir: str, network: bool, controls: list[str]) -> str:
    lines = ["PATH=$PATH:/usr/sbin:/sbin"]
    if network:
        lines += [
            "echo @@rules",
            "if command -v iptables >/dev/null 2>&1; then if out=$(iptables -w -S 2>&1); then "
            f"printf '%s\\n' \"$out\" | grep '{_TAG_PATTERN}'; else echo \"@@error iptables -S: $out\"; fi; fi",
            "echo @@qdiscs",
            "if command -v tc >/dev/null 2>&1; then if out=$(tc qdisc show 2>&1); then "
            f"printf '%s\\n' \"$out\" | grep ' {QDISC_HANDLE} '; else echo \"@@error tc qdisc show: $out\"; fi; fi",
        ]
    lines += [
        "echo @@files", f"ls -1a {shlex.quote(hil_dir)} 2>/dev/null",
        "echo @@processes",
        f"for f in $(grep -lEs -e '{_TAG_PATTERN}' -e '{_DEADMAN_PATTERN}' /proc/[0-9]*/cmdline); do p=${{f#/proc/}}; "
        "echo \"${p%/cmdline} $(tr '\\0' ' ' < $f)\"; done 2>/dev/null",
    ]
    for path in controls:
        lines += [f"echo @@control {shlex.quote(path)}", f"cat {shlex.quote(path)} 2>/dev/null"]
    lines.append("echo @@end")
    return "\n".join(lines)


def kernel_state(device: Device, run: Runner, *, network: bool = True, root: bool = True,
                 controls: list[str] | None = None, timeout: float = 30.0) -> KernelState:
    """Read hil's traces from the device (iptables and qdiscs only when `network`: that needs root)."""
    script = _state_script(f"{device.workdir}/.hil", network, controls or [])
    result = run(script, timeout=timeout, root=root)
    if not result.ok or "@@end" not in result.stdout:
        raise UndoUnproven(f"device '{device.name}': could not read its state back (exit {result.exit_status}): "
                           f"{(result.stderr or result.stdout).strip()[-300:]}")
    sections: dict[str, list[str]] = {}
    current = ""
    controls_read: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("@@control "):
            current = "control"
            controls_read[line.removeprefix("@@control ")] = []
            continue
        if line.startswith("@@") and not line.startswith("@@error"):
            current = line[2:]
            sections.setdefault(current, [])
            continue
        if line.startswith("@@error"):
            raise UndoUnproven(f"device '{device.name}': could not read its state back: {line[8:][-300:]}")
        if current == "control":
            controls_read[list(controls_read)[-1]].append(line)
        elif current:
            sections[current].append(line)
    qdiscs = []
    for line in sections.get("qdiscs", []):
        match = re.search(r" dev (\S+)", line)
        qdiscs.append((match.group(1) if match else "?", line.strip()))
    processes, deadmen = [], []
    for line in sections.get("processes", []):
        pid, _, cmd = line.partition(" ")
        if not pid.isdigit():
            continue
        if TAG in cmd:
            processes.append((int(pid), cmd.strip()))
        elif match := _DEADMAN.search(cmd):
            deadmen.append((int(pid), match.group(1)))
    return KernelState(
        rules=tuple(line.strip() for line in sections.get("rules", []) if TAG in line),
        qdiscs=tuple(qdiscs),
        files=tuple(name for name in sections.get("files", []) if name not in (".", "..")),
        processes=tuple(processes),
        deadmen=tuple(deadmen),
        controls={path: "\n".join(text).strip() for path, text in controls_read.items()},
        network_read=network,
    )


def _has_tag(text: str, fault_id: str) -> bool:
    return re.search(re.escape(TAG + fault_id) + r"(?![0-9a-f])", text) is not None


def remains(rec: FaultRecord, state: KernelState) -> list[str]:
    """What of the fault the state still shows ([] when it is gone)."""
    left = [f"iptables rule {line!r}" for tag in rec.trace.get("tags", []) for line in state.rules
            if _has_tag(line, tag.removeprefix(TAG))]
    left += [f"process {pid} {cmd[:120]!r}" for tag in rec.trace.get("tags", []) for pid, cmd in state.processes
             if _has_tag(cmd, tag.removeprefix(TAG))]
    if rec.trace.get("qdisc"):
        left += [f"qdisc {line!r}" for dev, line in state.qdiscs if dev == rec.trace["qdisc"]]
    left += [f"file {path}" for path in rec.trace.get("files", []) if path.rsplit("/", 1)[-1] in state.files]
    control = rec.trace.get("control")
    if control and state.controls.get(control) != rec.trace.get("content"):
        left += [f"{control} holds {state.controls.get(control)!r}, not {rec.trace.get('content')!r}"]
    return left


# -- undoing ---------------------------------------------------------------------------------------


def _runner(device: Device, via: str) -> Runner:
    return device.console if via == "serial" else device.run


def _revert(device: Device, rec: FaultRecord, via: str, timeout: float) -> None:
    """Undo (the script's own status counts), read the state back, and only then forget the fault."""
    run = _runner(device, via)
    _, script = _paths(device, rec.id)
    quoted = shlex.quote(script)
    # No script: it was undone and proven gone already (by the dead-man, say). The read-back still decides.
    undone = run(f"if [ -e {quoted} ]; then sh {quoted}; fi", timeout=timeout, root=rec.root)
    if not undone.ok:
        raise UndoUnproven(f"device '{device.name}': the undo of fault {rec.id} ({rec.kind}) over {via} failed "
                           f"(exit {undone.exit_status}): {(undone.stderr or undone.stdout).strip()[-300:]}")
    network = bool(rec.trace.get("tags") or rec.trace.get("qdisc"))
    controls = [rec.trace["control"]] if rec.trace.get("control") else []
    left = remains(rec, kernel_state(device, run, network=network, root=rec.root or network, controls=controls,
                                     timeout=timeout))
    if left:
        raise UndoUnproven(f"device '{device.name}': fault {rec.id} ({rec.kind}) is still there after its undo "
                           f"over {via}: " + "; ".join(left))
    _forget(device, rec, run, timeout)


def _forget(device: Device, rec: FaultRecord, run: Runner, timeout: float) -> None:
    """Stop the dead-man (only if it is still ours; its whole process group) and remove entry and script."""
    entry, script = _paths(device, rec.id)
    pid = rec.deadman_pid
    stop = (f"if [ -r /proc/{pid}/cmdline ] && grep -q {shlex.quote(rec.id)} /proc/{pid}/cmdline; "
            f"then kill -- -{pid} 2>/dev/null || kill {pid}; fi; " if pid else "")
    done = run(f"{stop}rm -f {shlex.quote(entry)} && rm -f {shlex.quote(script)}", timeout=timeout,
               root=rec.root or pid is not None)
    if not done.ok:
        raise UndoUnproven(f"device '{device.name}': fault {rec.id} is undone, but its ledger entry could not be "
                           f"removed (exit {done.exit_status}): {(done.stderr or done.stdout).strip()[-300:]}")


def revert(device: Device, rec: FaultRecord, *, timeout: float = 30.0) -> None:
    """Undo over SSH, proven (raises InfraError when the device cannot be reached, UndoUnproven when the
    undo fails or the fault is still there)."""
    _revert(device, rec, "ssh", timeout)


def revert_over_serial(device: Device, rec: FaultRecord, *, timeout: float = 30.0) -> None:
    """Undo through the serial console, with the apply's privilege (sudo there too): the way back in
    when the fault took the network away."""
    _revert(device, rec, "serial", timeout)


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


def _kind_of(fault_id: str) -> str:
    return fault_id.rpartition("-")[0] or "fault"


def _qdisc_devs(records: list[FaultRecord]) -> set[str]:
    """The interfaces whose hil qdisc belongs to one of these faults."""
    return {str(r.trace.get("qdisc") or r.params.get("interface")) for r in records
            if r.trace.get("qdisc") or r.kind in ("bandwidth_cap", "delay")}


def _clear_from_kernel(device: Device, state: KernelState, live: list[FaultRecord],
                       ledger_ids: set[str]) -> list[FaultRecord]:
    """Remove every hil trace in `state` that no live run's fault accounts for; returns what was found.
    Dead-men of faults in the ledger are left to the ledger (its undo stops them once proven)."""
    live_ids = {r.id for r in live}
    live_qdisc_devs = _qdisc_devs(live)
    found: dict[str, list[str]] = {}
    commands: list[str] = []
    for pid, cmd in state.processes:
        ids = {m.group(1) for m in _FAULT_ID.finditer(cmd)}
        if ids and not ids & live_ids:
            found.setdefault(sorted(ids)[0], []).append(f"process {pid} {cmd[:120]!r}")
            commands.append(f"kill -- -{pid} 2>/dev/null; kill {pid} 2>/dev/null")
    for pid, fault_id in state.deadmen:
        if fault_id not in live_ids | ledger_ids:
            found.setdefault(fault_id, []).append(f"dead-man timer {pid} with no ledger entry")
            commands.append(f"kill -- -{pid} 2>/dev/null || kill {pid} 2>/dev/null")
    for line in state.rules:
        ids = {m.group(1) for m in _FAULT_ID.finditer(line)}
        if ids & live_ids or not line.startswith("-A "):
            continue
        found.setdefault(sorted(ids)[0] if ids else "rule", []).append(f"iptables rule {line!r}")
        commands.append(f"iptables -w -D {line[3:]}")  # as iptables -S printed it: shell words
    for dev, line in state.qdiscs:
        if dev not in live_qdisc_devs and " root " in f"{line} ":
            found.setdefault(f"qdisc-{dev}", []).append(f"qdisc {line!r}")
            commands.append(f"tc qdisc del dev {shlex.quote(dev)} root handle {QDISC_HANDLE}")
    for name in state.files:
        fault_id = name.removeprefix(FILL_PREFIX)
        if name.startswith(FILL_PREFIX) and fault_id not in live_ids:
            found.setdefault(fault_id, []).append(f"fill file {device.workdir}/.hil/{name}")
            commands.append(f"rm -f {shlex.quote(f'{device.workdir}/.hil/{name}')}")
    if commands:
        # Each step on its own: one that fails must not stop the others; the read-back after decides.
        script = "PATH=$PATH:/usr/sbin:/sbin\n" + "\n".join(commands) + "\ntrue"
        device.run(script, timeout=SWEEP_TIMEOUT, root=True)
    return [FaultRecord(fault_id, _kind_of(fault_id) if fault_id.count("-") else "qdisc", {}, "", None,
                        extra={"found": what}) for fault_id, what in found.items()]


def unrecorded(device: Device) -> list[FaultRecord]:
    """Read-only: hil's traces in the device's state that no ledger entry accounts for (a lost ledger, or
    a run that died between an undo and its entry's removal). [] where reading them needs a root hil lacks."""
    ok, why = device.can_become_root()
    if not ok:
        log.info("%s: not looking for hil's iptables rules and qdiscs: that needs root, and %s", device.name, why)
        return []
    state = kernel_state(device, device.run, network=True, root=True)
    records = pending(device)
    ids = {r.id for r in records}
    found: dict[str, list[str]] = {}
    for line in state.rules:
        for fault_id in {m.group(1) for m in _FAULT_ID.finditer(line)} - ids:
            found.setdefault(fault_id, []).append(f"iptables rule {line!r}")
    for pid, cmd in state.processes:
        for fault_id in {m.group(1) for m in _FAULT_ID.finditer(cmd)} - ids:
            found.setdefault(fault_id, []).append(f"process {pid} {cmd[:120]!r}")
    for dev, line in state.qdiscs:
        if dev not in _qdisc_devs(records):
            found.setdefault(f"qdisc-{dev}", []).append(f"qdisc {line!r}")
    for name in state.files:
        if name.startswith(FILL_PREFIX) and name.removeprefix(FILL_PREFIX) not in ids:
            found.setdefault(name.removeprefix(FILL_PREFIX), []).append(f"fill file {device.workdir}/.hil/{name}")
    return [FaultRecord(fault_id, _kind_of(fault_id) if fault_id.count("-") else "qdisc", {}, "", None,
                        extra={"found": what}) for fault_id, what in found.items()]


def sweep(device: Device, *, spare_live_runs: bool = True) -> list[FaultRecord]:
    """Undo everything an earlier (crashed) run left applied, found in the ledger AND in the kernel's state;
    returns what was undone (kernel finds without a ledger entry carry `extra["found"]`).

    A fault whose run is still alive on this host is spared: two runs on one lab must not undo each
    other's faults. (Runs on other hosts cannot be told apart here; leases keep them off a device
    another run holds.) A trace in the kernel with no ledger entry at all is a leftover: the ledger is
    always written before a fault is applied. `hil faults clear` passes spare_live_runs=False: undo it all.
    Raises UndoUnproven when something is still there afterwards.
    """
    ok, why = device.can_become_root()
    # The state first, the ledger after: a trace seen in the state had its entry written before it.
    state = kernel_state(device, device.run, network=ok, root=ok) if ok else None
    if not ok:
        log.warning("%s: not looking for hil's iptables rules and qdiscs left behind: reading them needs root, "
                    "and %s", device.name, why)
    records = pending(device)
    live = [r for r in records if spare_live_runs and _live_here(r)]
    left = [r for r in records if r not in live]
    failed: list[str] = []
    for rec in left:
        log.warning("%s: undoing fault %s (%s, applied %s by run %s) left by an earlier run",
                    device.name, rec.id, rec.kind, rec.applied_at, rec.run_id or "?")
        try:
            revert(device, rec, timeout=SWEEP_TIMEOUT)
        except UndoUnproven as exc:
            log.warning("%s: %s; clearing it from the kernel's state instead", device.name, exc)
            failed.append(rec.id)
    # Undo scripts whose entry never got written (a crash between the two writes). Looked for first
    # without root, so a device that cannot become root is only asked to when there is something to undo.
    orphans = device.run(f"ls {shlex.quote(ledger_dir(device))}/*.undo.sh 2>/dev/null; true", timeout=15).stdout
    if orphans.strip():
        device.run(f"cd {shlex.quote(ledger_dir(device))} && for s in *.undo.sh; do "
                   f"[ -e \"${{s%.undo.sh}}.json\" ] || {{ sh \"$s\" && rm -f \"$s\"; }}; done; true",
                   timeout=SWEEP_TIMEOUT, root=ok)
    found: list[FaultRecord] = []
    if state is not None:
        # Read again: the ledger's undo scripts have run. What is left, no live run accounts for.
        state = kernel_state(device, device.run, network=True, root=True)
        ledger_ids = {r.id for r in left}
        found = [f for f in _clear_from_kernel(device, state, live, {r.id for r in records}) if f.id not in ledger_ids]
        for rec in found:
            log.warning("%s: cleared %s", device.name, rec.describe())
        after = kernel_state(device, device.run, network=True, root=True)
        still = sorted(after.fault_ids() - {r.id for r in live})
        still_qdiscs = [line for dev, line in after.qdiscs if dev not in _qdisc_devs(live)]
        if still or still_qdiscs:
            raise UndoUnproven(f"device '{device.name}': hil's faults are still in its state after the sweep: "
                               f"{', '.join(still + still_qdiscs)}")
    for fault_id in failed:  # undone from the kernel's state instead: now it can be forgotten, if proven
        rec = next(r for r in left if r.id == fault_id)
        network = state is not None and bool(rec.trace.get("tags") or rec.trace.get("qdisc"))
        controls = [rec.trace["control"]] if rec.trace.get("control") else []
        still_there = remains(rec, kernel_state(device, device.run, network=network, root=rec.root or network,
                                                controls=controls))
        if still_there:
            raise UndoUnproven(f"device '{device.name}': fault {rec.id} ({rec.kind}) left by an earlier run could "
                               "not be undone: " + "; ".join(still_there))
        _forget(device, rec, device.run, SWEEP_TIMEOUT)
    return left + found
