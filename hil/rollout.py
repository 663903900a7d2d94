"""Canary rollout: deploy an artifact to a fleet in phases, each gated by an acceptance pytest run; when one
phase fails, every device this rollout updated goes back to the version it ran before.

    hil rollout ARTIFACT_DIR [--tags jetson[,rpi]] [--device NAME ...] --canary N [--phases 25%,100%]
                [--acceptance "PYTEST ARGS"] [--lease-timeout S] [--acceptance-timeout S] [--report-dir DIR]
                [--allow-cpu-fallback] [--dry-run]

Targets are the devices having every tag of --tags (and named by --device, when given), sorted by name.
Phase 1 (the canary) is the first N of them; each --phases percentage p then means "at least ceil(p% of the
targets) updated by the end of this phase" (the last must be 100%).

Leases: the rollout leases a phase's devices (in name order; phases are consecutive slices of the sorted
targets, so the whole rollout acquires in name order) and keeps every lease until it ends, so the devices
it may still have to roll back stay its own. The acceptance pytest runs with HIL_LEASE_RUN_ID=<this run's
lease id>: hil.lease then lets it work under those leases instead of waiting for them (no release window).

Exit codes: 0 every phase passed; 1 a deploy or an acceptance run failed (or timed out) and what was updated
was rolled back; 2 bad input (options, devices.toml, an artifact that fails verification on the host: nothing
is sent); 75 an infrastructure error (device unreachable, lease busy, or an acceptance run that only the lab
failed: hil's pytest exit 75) stopped the rollout, after rolling back what was updated; 130 interrupted (after
rolling back). A device a rollback could not restore is "failed: ..." in the report; the exit code stays that
of the cause.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from hil.artifacts import Artifact, load_artifact, verify
from hil.config import DeviceConfig, Inventory
from hil.deploy import deploy_as_configured, rollback, status, trusted_keys
from hil.device import Device
from hil.errors import ConfigError, HilError, InfraError
from hil.exit_codes import Exit
from hil.faults.ledger import run_id as new_run_id
from hil.lease import SHARED_RUN_ENV
from hil.pool import DevicePool

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRA, EXIT_INTERRUPTED = (Exit.OK, Exit.FAILED, Exit.USAGE, Exit.INFRASTRUCTURE,
                                                                Exit.INTERRUPTED)
TAIL_LINES = 40
# The exit code of hil's pytest plugin when only the lab failed (hil.report.summary.EXIT_INFRASTRUCTURE).
CHILD_INFRA_EXIT = Exit.INFRASTRUCTURE
NONE = "(none)"


class RolloutUsageError(HilError):
    """A rollout option (or its combination with devices.toml) does not make sense."""


# -- planning (no devices) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    number: int  # 1 is the canary
    label: str  # "canary", "50%", ...
    devices: tuple[str, ...]


def parse_phases(text: str) -> list[Fraction]:
    """'25%,100%' -> [25, 100]: increasing, each within 1..100, the last 100."""
    percents: list[Fraction] = []
    for item in text.split(","):
        raw = item.strip().removesuffix("%").strip()
        try:
            value = Fraction(raw)
        except (ValueError, ZeroDivisionError):
            raise RolloutUsageError(f"--phases: {item.strip()!r} is not a percentage like 25%") from None
        if not 1 <= value <= 100:
            raise RolloutUsageError(f"--phases: {item.strip()} is outside 1%..100%")
        if percents and value <= percents[-1]:
            raise RolloutUsageError(f"--phases: must increase, got {item.strip()} after {_pct(percents[-1])}")
        percents.append(value)
    if not percents or percents[-1] != 100:
        raise RolloutUsageError(f"--phases: the last phase must be 100%, got {text!r}")
    return percents


def _pct(value: Fraction) -> str:
    return f"{float(value):g}%"


def plan_phases(targets: Sequence[str], canary: int, percents: Sequence[Fraction]) -> list[Phase]:
    """The canary first, then one phase per percentage that adds devices (an empty one is dropped)."""
    total = len(targets)
    if total == 0:
        raise RolloutUsageError("no target devices")
    if canary < 1:
        raise RolloutUsageError(f"--canary: must be at least 1, got {canary}")
    if total > 1 and canary >= total:
        raise RolloutUsageError(f"--canary: must be smaller than the number of targets ({total}), got {canary}")
    if total == 1 and canary != 1:
        raise RolloutUsageError(f"--canary: there is one target, so the canary is 1 device, got {canary}")
    phases = [Phase(1, "canary", tuple(targets[:canary]))]
    done = canary
    for percent in percents:
        upto = max(done, math.ceil(percent * total / 100))
        if upto > done:
            phases.append(Phase(len(phases) + 1, _pct(percent), tuple(targets[done:upto])))
            done = upto
    return phases


def select_targets(inventory: Inventory, tags: Sequence[str], names: Sequence[str]) -> list[DeviceConfig]:
    """Devices having every tag (and named, when names are given), sorted by name."""
    try:
        chosen = inventory.select(list(dict.fromkeys(names)))
    except ConfigError as exc:
        raise RolloutUsageError(f"--device: {exc}") from None
    wanted = set(tags)
    if names:
        lacking = [d.name for d in chosen if not wanted <= set(d.tags)]
        if lacking:
            raise RolloutUsageError(f"--device: {', '.join(lacking)} lack tag(s) of --tags {','.join(tags)}")
    targets = sorted((d for d in chosen if wanted <= set(d.tags)), key=lambda d: d.name)
    if not targets:
        raise RolloutUsageError(f"--tags: no device of {inventory.path} has all of {','.join(tags)} "
                                f"(tags there: {', '.join(inventory.tags) or 'none'})")
    return targets


def parse_tags(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


# -- state of a run -------------------------------------------------------------------------------


@dataclass
class DeviceOutcome:
    name: str
    phase: int
    before: str | None = None  # version directory active before this rollout touched the device
    now: str | None = None  # active at the end (read from the device)
    result: str = "not reached"
    attempted: bool = False  # a deploy was started: the device may need a rollback
    error: str | None = None  # the deploy's own failure

    def row(self) -> list[str]:
        before = (self.before or NONE) if self.attempted else "-"
        return [self.name, str(self.phase), before, self.now or NONE, self.result]


@dataclass
class PhaseOutcome:
    phase: Phase
    result: str = "not reached"  # passed / failed / stopped / not reached
    log: str | None = None
    exit_code: int | None = None
    seconds: float = 0.0


@dataclass
class Options:
    artifact_dir: Path
    acceptance: list[str] | None  # pytest args; None: deploy only
    lease_timeout: float
    acceptance_timeout: float
    allow_cpu_fallback: bool
    report_dir: Path


@dataclass
class Rollout:
    inventory: Inventory
    artifact: Artifact
    plan: list[Phase]
    options: Options
    run_id: str = field(default_factory=lambda: f"rollout-{new_run_id()}")
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    devices: dict[str, Device] = field(default_factory=dict)  # leased, in acquisition order
    outcomes: dict[str, DeviceOutcome] = field(default_factory=dict)
    phases: list[PhaseOutcome] = field(default_factory=list)
    reason: str = ""
    # Where progress goes ("phase 1 (canary): ...", "rolling back ..."): the engine never prints itself.
    say: Callable[[str], None] = field(default=log.info, repr=False)

    pool: DevicePool = field(init=False, repr=False)  # the rollout's devices and leases (hil.pool)

    def __post_init__(self) -> None:
        self.pool = DevicePool(self.inventory, run_id=self.run_id, lease_timeout=self.options.lease_timeout)
        self.outcomes = {n: DeviceOutcome(n, p.number) for p in self.plan for n in p.devices}
        self.phases = [PhaseOutcome(p) for p in self.plan]

    @property
    def model(self) -> str:
        return self.artifact.manifest.name


class _Stop(Exception):
    """Ends the rollout: the exit code and why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


# -- one phase ----------------------------------------------------------------------------------


def _active(device: Device, model: str) -> str | None:
    """The version directory of `model` active on the device, or None."""
    return next((m.active for m in status(device) if m.name == model), None)


def _lease(state: Rollout, names: Sequence[str]) -> None:
    """Lease in name order (the same order every rollout uses: no deadlock between two of them)."""
    for name in sorted(names):
        state.say(f"  {name}: leasing (up to {state.options.lease_timeout:g} s)")
        try:
            state.devices[name] = state.pool.lease(name)
        except HilError as exc:
            state.outcomes[name].result = f"failed: {exc}"
            raise _Stop(EXIT_INFRA if isinstance(exc, InfraError) else EXIT_FAILED, str(exc)) from None


def _deploy_one(state: Rollout, name: str) -> None:
    device, outcome = state.devices[name], state.outcomes[name]
    try:
        outcome.before = _active(device, state.model)
        outcome.attempted = True
        result = deploy_as_configured(state.inventory.deploy, device, state.artifact,
                                      allow_provider_fallback=state.options.allow_cpu_fallback)
    except HilError as exc:
        outcome.error = outcome.result = f"failed: {exc}"
        raise _Stop(EXIT_INFRA if isinstance(exc, InfraError) else EXIT_FAILED, f"deploy to {name}: {exc}") from None
    outcome.result = "updated (already active)" if result.already_active else "updated"
    sent = "nothing sent" if result.already_active else f"{result.transferred_bytes} bytes sent"
    new = f"{result.version}-{result.sha256[:12]}"  # the version directory, as deploy.status names it
    state.say(f"  {name}: {outcome.before or NONE} -> {new} ({sent}, {result.seconds:.1f} s)")


def acceptance_command(options: Options, inventory_path: Path, devices: Sequence[str], junit: Path) -> list[str]:
    """The child pytest: the user's args, then this phase's devices and the artifact."""
    assert options.acceptance is not None
    command = [sys.executable, "-m", "pytest", f"--junitxml={junit}", *options.acceptance,
               "--hil-devices", str(inventory_path)]
    for name in devices:
        command += ["--hil-device", name]
    command += ["--hil-artifact", str(options.artifact_dir), "--hil-lease-timeout", f"{options.lease_timeout:g}",
                "--hil-report-dir", str(junit.with_suffix("")), "-p", "no:cacheprovider"]  # its summary.json apart
    if options.allow_cpu_fallback:
        command.append("--hil-allow-cpu-fallback")
    return command


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    """End the child and everything it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_acceptance(command: list[str], log_path: Path, timeout: float, env: dict[str, str]) -> int | None:
    """Run the acceptance pytest with its output in log_path; its exit code, or None when it timed out."""
    with log_path.open("wb") as out:
        out.write(f"$ {shlex.join(command)}\n\n".encode())
        out.flush()
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 start_new_session=True)  # its own group: a timeout ends all of it
        try:
            return child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if child.poll() is None:
                _stop_child(child)


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _accept(state: Rollout, record: PhaseOutcome) -> None:
    phase, options = record.phase, state.options
    if options.acceptance is None:
        record.result = "passed"
        return
    log_path = options.report_dir / f"phase-{phase.number}.log"
    command = acceptance_command(options, state.inventory.path.resolve(), phase.devices,
                                 options.report_dir / f"phase-{phase.number}.xml")
    state.say(f"  acceptance on {', '.join(phase.devices)} (log: {log_path})")
    started = time.monotonic()
    code = run_acceptance(command, log_path, options.acceptance_timeout,
                          {**os.environ, SHARED_RUN_ENV: state.run_id})
    record.seconds, record.log, record.exit_code = time.monotonic() - started, str(log_path), code
    if code == 0:
        record.result = "passed"
        state.say(f"  acceptance passed in {record.seconds:.1f} s")
        return
    record.result = "failed"
    why = (f"timed out after {record.seconds:.1f} s (acceptance timeout {options.acceptance_timeout:g} s)"
           if code is None else f"pytest exit {code}")
    if code == CHILD_INFRA_EXIT:
        why += ": only the lab failed, no verdict on the model"
    state.say(f"  acceptance FAILED ({why}); last lines of {log_path}:\n{_tail(log_path)}")
    raise _Stop(EXIT_INFRA if code == CHILD_INFRA_EXIT else EXIT_FAILED,
                f"phase {phase.number} ({phase.label}): acceptance failed ({why}), see {log_path}")


def _run_phase(state: Rollout, record: PhaseOutcome) -> None:
    phase = record.phase
    state.say(f"phase {phase.number} ({phase.label}): {', '.join(phase.devices)}")
    record.result = "stopped"
    _lease(state, phase.devices)
    for name in phase.devices:
        _deploy_one(state, name)
    _accept(state, record)


# -- rollback and the final state ---------------------------------------------------------------


def _restore(state: Rollout, outcome: DeviceOutcome) -> None:
    """Put back the version the device ran before this rollout (when it changed)."""
    device = state.devices[outcome.name]
    failed = f"{outcome.error}; " if outcome.error else ""
    try:
        active = _active(device, state.model)
        if active == outcome.before:
            if outcome.error is None:
                outcome.result = "kept (it ran this version before)"
            return
        if outcome.before is None:
            outcome.result = (f"{failed or 'failed: '}no earlier version to roll back to (deploy.py cannot "
                              f"deactivate a model); new model left active: {active}")
            return
        record = rollback(device, state.model)
        active = _active(device, state.model)
    except HilError as exc:
        outcome.result = f"{failed or 'failed: '}rollback: {exc}"
        return
    if active == outcome.before:
        outcome.result = f"{failed}rolled back" if failed else "rolled back"
    else:
        outcome.result = f"{failed or 'failed: '}rollback activated {record.activated}, not {outcome.before}"


def roll_back(state: Rollout) -> None:
    """Every device this rollout deployed to, in every phase, newest first."""
    for outcome in reversed([state.outcomes[n] for n in state.devices if state.outcomes[n].attempted]):
        state.say(f"  {outcome.name}: rolling back to {outcome.before or NONE}")
        _restore(state, outcome)


def _read_now(state: Rollout) -> None:
    """What every target runs now: over the leased connections, or a read-only look at the others."""
    for outcome in state.outcomes.values():
        device = state.devices.get(outcome.name) or Device(state.inventory.get(outcome.name))
        try:
            outcome.now = _active(device, state.model)
        except HilError as exc:
            outcome.now = f"unknown ({exc})"
        finally:
            if outcome.name not in state.devices:
                device.close()


def _release(state: Rollout) -> None:
    state.pool.close()  # every lease, then every connection


def execute(state: Rollout) -> int:
    """Run the phases; on a failure roll back everything updated; read the final state and write the record
    (rollout.json). Returns the exit code (hil.exit_codes); summary_text says what happened."""
    code = EXIT_OK
    try:
        try:
            for record in state.phases:
                _run_phase(state, record)
        except _Stop as stop:
            code, state.reason = stop.code, str(stop)
        except Exception as exc:  # anything unforeseen half-way must still roll back what was updated
            code = EXIT_INFRA if isinstance(exc, InfraError) else EXIT_FAILED
            state.reason = f"{type(exc).__name__}: {exc}"
        except KeyboardInterrupt:
            code, state.reason = EXIT_INTERRUPTED, "interrupted"
        if code != EXIT_OK:
            state.say(f"rollout stopped: {state.reason}\nrolling back every device this rollout updated")
            roll_back(state)
        _read_now(state)
    finally:
        _release(state)
    write_record(state, code)
    return code


# -- reporting ----------------------------------------------------------------------------------


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def plan_text(state: Rollout, tags: Sequence[str]) -> str:
    manifest, options = state.artifact.manifest, state.options
    total = sum(len(p.devices) for p in state.plan)
    lines = [f"rollout of {manifest.label} (sha256 {manifest.sha256[:12]}, signature verified) from "
             f"{options.artifact_dir}",
             f"targets: {total} device(s){' tagged ' + ','.join(tags) if tags else ''}",
             "acceptance: " + ("none (deploy only)" if options.acceptance is None else
                               f"pytest {shlex.join(options.acceptance)} (timeout {options.acceptance_timeout:g} s)")]
    done = 0
    rows = []
    for p in state.plan:
        done += len(p.devices)
        rows.append([str(p.number), p.label, f"{done}/{total}", ", ".join(p.devices)])
    return "\n".join([*lines, _table(rows, ["PHASE", "STEP", "UPDATED AFTER", "DEVICES"])])


def record_of(state: Rollout, code: int) -> dict[str, Any]:
    manifest = state.artifact.manifest
    return {
        "run_id": state.run_id, "exit_code": code, "reason": state.reason,
        "outcome": {EXIT_OK: "success", EXIT_INFRA: "stopped by infrastructure, rolled back"}.get(code, "rolled back"),
        "started": state.started, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifact": {"dir": str(state.options.artifact_dir), "name": manifest.name, "version": manifest.version,
                     "sha256": manifest.sha256},
        "acceptance": state.options.acceptance,
        "phases": [{"phase": p.phase.number, "label": p.phase.label, "devices": list(p.phase.devices),
                    "result": p.result, "exit_code": p.exit_code, "seconds": round(p.seconds, 2), "log": p.log}
                   for p in state.phases],
        "devices": [{k: v for k, v in asdict(o).items() if k != "error"} for o in state.outcomes.values()],
    }


def write_record(state: Rollout, code: int) -> Path:
    path = state.options.report_dir / "rollout.json"
    path.write_text(json.dumps(record_of(state, code), indent=2) + "\n")
    return path


def summary_text(state: Rollout, code: int) -> str:
    """Where every device ended, each phase's acceptance log, the verdict and the record's path."""
    rows = [o.row() for o in state.outcomes.values()]
    lines = ["", _table(rows, ["DEVICE", "PHASE", "VERSION BEFORE", "VERSION NOW", "RESULT"])]
    lines += [f"phase {p.phase.number} ({p.phase.label}) acceptance {p.result}: {p.log}" for p in state.phases if p.log]
    verdict = "succeeded" if code == EXIT_OK else f"stopped (exit {code}): {state.reason}"
    lines.append(f"rollout {verdict}\nrecord: {state.options.report_dir / 'rollout.json'}")
    return "\n".join(lines)


def prepare(inventory: Inventory, artifact_dir: Path, *, tags: Sequence[str], names: Sequence[str], canary: int,
            phases: str, acceptance: str | None, lease_timeout: float, acceptance_timeout: float,
            allow_cpu_fallback: bool, report_dir: Path, say: Callable[[str], None] = log.info) -> Rollout:
    """Check every input and the artifact's signature (on the host). Raises HilError for bad input."""
    targets = [d.name for d in select_targets(inventory, tags, names)]
    plan = plan_phases(targets, canary, parse_phases(phases))
    for option, value in (("lease-timeout", lease_timeout), ("acceptance-timeout", acceptance_timeout)):
        if not 0 < value < math.inf:
            raise RolloutUsageError(f"--{option}: must be a number of seconds above 0")
    try:
        pytest_args = shlex.split(acceptance) if acceptance is not None else None
    except ValueError as exc:
        raise RolloutUsageError(f"--acceptance: {exc}") from None
    artifact_dir = artifact_dir.resolve()
    artifact = load_artifact(artifact_dir)
    verify(artifact, trusted_keys(inventory.deploy))  # a bad artifact stops here: nothing is sent
    options = Options(artifact_dir, pytest_args, lease_timeout, acceptance_timeout, allow_cpu_fallback, report_dir)
    return Rollout(inventory, artifact, plan, options, say=say)


def default_report_dir() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path("reports") / f"rollout-{stamp}"
    return path if not path.exists() else path.with_name(f"{path.name}-{os.getpid()}")
