"""Device: the one door to a device (SSH, and its serial console where wired)."""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from hil.conditions import PROBE as CONDITIONS_PROBE
from hil.conditions import parse_probe, timing_warnings
from hil.config import DEFAULT_WORKDIR, DeviceConfig
from hil.deadline import Deadline
from hil.errors import CommandFailed, HilError, InfraError, PrivilegeUnavailable, TransportError
from hil.transport.base import ProgressCallback, Result
from hil.transport.serial import SerialTransport
from hil.transport.ssh import DegradedLink, SshTransport

log = logging.getLogger(__name__)

_PROBE_SOURCE = (Path(__file__).parent / "ondevice" / "probe.py").read_text()
DEFAULT_TIMEOUT = 60.0
CLOCK_SAMPLES = 7
MIN_FREE_BYTES = 16 * 1024 * 1024  # below this a workdir cannot take even a small model
_ASKPASS = b'#!/bin/sh\nprintf "%s\\n" "$HIL_SUDO_PASSWORD"\n'


@dataclass(frozen=True)
class ClockOffset:
    """Device wall clock minus host wall clock, from the fastest of several round trips."""

    offset: float
    uncertainty: float  # half that round trip: the true offset lies within offset +- uncertainty

    def __str__(self) -> str:
        return f"{self.offset * 1000:+.1f} ms +- {self.uncertainty * 1000:.1f} ms"


@dataclass(frozen=True)
class Facts:
    device: str
    emulated: bool
    hostname: str
    arch: str
    kernel: str
    os: str
    cpu_count: int
    cpu_quota: float | None
    memory_total_bytes: int | None
    memory_limit_bytes: int | None
    disk_path: str
    disk_free_bytes: int
    disk_total_bytes: int
    python: str
    python_executable: str
    uid: int
    numpy: str | None
    onnxruntime: str | None
    providers: tuple[str, ...]
    onnxruntime_error: str | None
    clock: ClockOffset

    def summary(self) -> dict[str, str]:
        """Flat strings, for JUnit properties and report environments."""
        out = {k: "" if v is None else str(v) for k, v in asdict(self).items() if k not in ("clock", "providers")}
        out["providers"] = ",".join(self.providers)
        out["clock_offset"] = str(self.clock)
        return out


@dataclass(frozen=True)
class RebootResult:
    device: str
    seconds: float  # from the reboot command to SSH answering with facts re-read
    down_after: float | None  # when the device stopped answering (None: it was never seen down)


@dataclass(frozen=True)
class Health:
    device: str
    ok: bool
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    timing_warnings: tuple[str, ...] = ()  # the warnings that make latency verdicts inconclusive
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.ok:
            return f"{self.device}: healthy ({self.seconds:.2f} s)"
        return f"{self.device}: UNHEALTHY: " + "; ".join(self.problems)


class Device:
    """A device from devices.toml. Connections open on first use and stay open."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.name = config.name
        self.ssh = SshTransport(config.name, config.ssh, config.python)
        self._serial: SerialTransport | None = None
        self._facts: Facts | None = None
        self._login: tuple[int, str] | None = None  # (uid, home) of the login user
        self._workdir: str | None = None
        self._root: tuple[bool, str] | None = None  # (can become root, why not)
        self._askpass_ready = False

    def __repr__(self) -> str:
        return f"Device({self.name!r})"

    @property
    def workdir(self) -> str:
        """Where hil keeps its files on the device; `~` and the default are resolved for the login user."""
        if self._workdir is None:
            configured = self.config.workdir
            if configured is not None and not configured.startswith("~"):
                self._workdir = configured
            else:
                uid, home = self.login()
                if configured is not None:
                    self._workdir = home + configured[1:]
                else:
                    self._workdir = DEFAULT_WORKDIR if uid == 0 else f"{home.rstrip('/')}/hil"
        return self._workdir

    def login(self) -> tuple[int, str]:
        """(uid, home directory) of the user hil logs in as."""
        if self._login is None:
            out = self.run('id -u; printf "%s\\n" "$HOME"', timeout=15, check=True).stdout.split("\n")
            self._login = (int(out[0]), out[1])
        return self._login

    # -- privilege ----------------------------------------------------------------------------

    def can_become_root(self) -> tuple[bool, str]:
        """Whether root operations can run here, and if not, why (cached)."""
        if self._root is None:
            if self.login()[0] == 0:
                self._root = (True, "logged in as root")
            elif self.config.become.method == "none":
                self._root = (False, f"logged in as uid {self.login()[0]} and become.method = \"none\"")
            else:
                result = self.run("true", timeout=15, root=True)
                reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "sudo refused"
                self._root = (result.ok, "sudo works" if result.ok else f"sudo failed: {reason}")
        return self._root

    def require_root(self, operation: str) -> None:
        """Raise PrivilegeUnavailable (a skip in pytest) unless root operations can run here."""
        ok, why = self.can_become_root()
        if not ok:
            raise PrivilegeUnavailable(f"device '{self.name}': {operation} needs root, and hil cannot become "
                                       f"root there: {why} (see [devices.become] in devices.toml)")

    def _askpass(self) -> str:
        """A helper that prints $HIL_SUDO_PASSWORD for `sudo -A`; it holds no secret itself."""
        path = f"{self.workdir}/.hil-askpass"
        if not self._askpass_ready:
            quoted = shlex.quote(path)
            self.run(f"mkdir -p {shlex.quote(self.workdir)} && cat > {quoted} && chmod 700 {quoted}",
                     stdin=_ASKPASS, timeout=15, check=True)
            self._askpass_ready = True
        return path

    def _as_root(self, command: str, env: Mapping[str, str] | None) -> tuple[str, dict[str, str]]:
        """The command wrapped in sudo. A password goes through an askpass helper reading an environment
        variable, so it never lands in a file, a log, or the command's stdin."""
        if self.config.become.method == "none":
            raise PrivilegeUnavailable(f"device '{self.name}': root needed, but become.method = \"none\"")
        password = self.config.become.password
        if password is None:
            return self._sudo(command, env), {}
        return self._sudo(command, env, askpass=self._askpass()), {"HIL_SUDO_PASSWORD": password.reveal()}

    def _sudo(self, command: str, env: Mapping[str, str] | None, *, askpass: str | None = None,
              create_askpass: bool = False) -> str:
        """`command` under sudo: `-n` without a password, else `-A` with the askpass helper (made first
        where it may be missing, e.g. on a console when SSH never made it)."""
        inner = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in (env or {}).items()) + " " if env else ""
        wrapped = f"{inner}/bin/sh -c {shlex.quote(command)}"
        if self.config.become.password is None:
            return f"sudo -n -- {wrapped}"
        assert askpass is not None
        quoted = shlex.quote(askpass)
        make = ""
        if create_askpass:
            lines = " ".join(shlex.quote(line) for line in _ASKPASS.decode().splitlines())
            make = (f"{{ [ -x {quoted} ] || {{ mkdir -p {shlex.quote(str(Path(askpass).parent))} && "
                    f"printf '%s\\n' {lines} > {quoted} && chmod 700 {quoted}; }}; }} && ")
        return f"{make}SUDO_ASKPASS={quoted} sudo -A -p '' -- {wrapped}"

    # -- commands and files ------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        check: bool = False,
        root: bool = False,
    ) -> Result:
        """Run a shell command on the device over SSH; check=True raises CommandFailed on non-zero exit.

        root=True runs it as root (through sudo when the login user is not root).
        """
        if root and self.login()[0] != 0:
            wrapped, secret_env = self._as_root(command, env)
            result = self.ssh.run(wrapped, timeout=timeout, env=secret_env, cwd=cwd, stdin=stdin)
            result = Result(command, result.stdout, result.stderr, result.exit_status, result.duration)
        else:
            result = self.ssh.run(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin)
        log.debug("%s: %r -> %d in %.1f ms", self.name, command, result.exit_status, result.duration * 1000)
        if check and not result.ok:
            raise CommandFailed(f"device '{self.name}': {command!r} exited {result.exit_status}: "
                                f"{result.stderr.strip()[-500:]}", result.exit_status, result.stdout, result.stderr)
        return result

    def put(self, local: Path | str, remote: str, *, progress: ProgressCallback | None = None) -> None:
        self.ssh.put(Path(local), remote, progress=progress)

    def get(self, remote: str, local: Path | str, *, progress: ProgressCallback | None = None) -> None:
        self.ssh.get(remote, Path(local), progress=progress)

    @property
    def serial(self) -> SerialTransport:
        """The serial console transport; raises when the device has none wired."""
        if self.config.serial is None:
            raise InfraError(f"device '{self.name}' has no serial console configured ([devices.serial] in "
                             "devices.toml)")
        if self._serial is None:
            self._serial = SerialTransport(self.name, self.config.serial)
        return self._serial

    def console(self, command: str, *, timeout: float = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None,
                cwd: str | None = None, root: bool = False) -> Result:
        """Run a command over the serial console (works when the network does not).

        root=True runs it as root, through sudo when the console's user is not root, as `run` does: the
        console of a real device is logged in as that device's ordinary user. A sudo password goes to
        the console only as an environment variable of this one command (never echoed: the console runs
        with `stty -echo` and no history), read by the askpass helper; it never lands in a file or a log.
        """
        if not root:
            return self.serial.run(command, timeout=timeout, env=env, cwd=cwd)
        uid = self.serial.run("id -u", timeout=timeout).stdout.strip()
        if uid == "0":
            return self.serial.run(command, timeout=timeout, env=env, cwd=cwd)
        if self.config.become.method == "none":
            raise PrivilegeUnavailable(f"device '{self.name}': root needed on the serial console (logged in as uid "
                                       f"{uid or '?'}), but become.method = \"none\"")
        wrapped = self._sudo(command, env, askpass=f"{self.workdir}/.hil-askpass", create_askpass=True)
        password = self.config.become.password
        secret_env = {"HIL_SUDO_PASSWORD": password.reveal()} if password is not None else {}
        result = self.serial.run(wrapped, timeout=timeout, env=secret_env, cwd=cwd)
        return Result(command, result.stdout, result.stderr, result.exit_status, result.duration)

    # -- facts and health --------------------------------------------------------------------

    def clock_offset(self, samples: int = CLOCK_SAMPLES) -> ClockOffset:
        """Measured with `date` on the device: the clock its processes see, faked or not."""
        best: tuple[float, float] | None = None  # (round trip, offset)
        for _ in range(samples):
            before = time.time()
            result = self.run("date +%s.%N", timeout=10)
            after = time.time()
            try:
                device_time = float(result.stdout)
            except ValueError:
                # Exit status and stderr too: an empty answer has causes other than a date without %N.
                raise TransportError(f"device '{self.name}': `date +%s.%N` printed {result.stdout.strip()!r}, "
                                     f"not seconds (exit status {result.exit_status}, stderr "
                                     f"{result.stderr.strip()[-300:]!r}); hil needs a date with %N (coreutils)"
                                     ) from None
            rtt = after - before
            if best is None or rtt < best[0]:
                best = (rtt, device_time - (before + after) / 2)
        assert best is not None
        return ClockOffset(offset=best[1], uncertainty=best[0] / 2)

    def facts(self, refresh: bool = False) -> Facts:
        """What the device is, cached for the session (refresh=True re-reads it)."""
        if self._facts is not None and not refresh:
            return self._facts
        python = shlex.quote(self.config.python)
        result = self.run(f"{python} - {shlex.quote(self.workdir)}", stdin=_PROBE_SOURCE.encode(), timeout=30)
        try:
            raw = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise TransportError(
                f"device '{self.name}': cannot read facts with '{self.config.python}' (exit {result.exit_status}): "
                f"{(result.stderr or result.stdout).strip()[-300:]}; is Python 3 installed there?") from None
        disk = raw.pop("disk")
        self._facts = Facts(
            device=self.name, emulated=self.config.emulated, disk_path=disk["path"],
            disk_free_bytes=disk["free_bytes"], disk_total_bytes=disk["total_bytes"],
            providers=tuple(raw.pop("providers")), clock=self.clock_offset(), **raw)
        return self._facts

    def forget_facts(self) -> None:
        """Facts are re-read on next use (after a fault changed the clock or the disk, say)."""
        self._facts = None

    def timing_warnings(self) -> list[str]:
        """What makes timings here unreliable now: CPU governor, thermal headroom (see hil.conditions)."""
        return timing_warnings(*parse_probe(self.run(CONDITIONS_PROBE, timeout=15).stdout))

    def health(self, max_clock_offset: float = 5.0, *, console: bool = True) -> Health:
        """Reachable (and its serial console, if it has one and `console`), workdir writable with free space,
        clock sane, onnxruntime importable; CPU governor and thermal headroom as warnings."""
        started = time.monotonic()
        problems: list[str] = []
        warnings: list[str] = []
        try:
            workdir = shlex.quote(self.workdir)
            probe = f"{workdir}/.hil-health-{int(time.time() * 1000)}"
            self.run(f"mkdir -p {workdir} && touch {probe} && rm -f {probe}", timeout=15, check=True)
            facts = self.facts(refresh=True)
        except InfraError as exc:
            return Health(self.name, False, (str(exc),), seconds=time.monotonic() - started)
        except HilError as exc:
            problems.append(f"workdir {self.workdir} is not writable: {exc}")
            return Health(self.name, False, tuple(problems), seconds=time.monotonic() - started)
        if facts.disk_free_bytes < MIN_FREE_BYTES:
            problems.append(f"only {facts.disk_free_bytes / 2**20:.1f} MiB free at {self.workdir}; "
                            f"needs at least {MIN_FREE_BYTES / 2**20:.0f} MiB")
        if facts.onnxruntime is None:
            problems.append(f"onnxruntime does not import with {self.config.python}: {facts.onnxruntime_error}; "
                            f"install it on the device (pip install onnxruntime)")
        if abs(facts.clock.offset) > max_clock_offset:
            warnings.append(f"device clock is off by {facts.clock}")
        if console and self.config.serial is not None:
            was_open = self._serial is not None
            try:
                answered = self.console("echo hil-serial-ok", timeout=15).stdout.strip() == "hil-serial-ok"
                reason = "" if answered else "its shell did not echo back"
            except HilError as exc:
                answered, reason = False, str(exc)
            if not was_open:
                self.close_console()  # a console is exclusive: hold it only while a test uses it
            if not answered:
                problems.append(f"serial console {self.config.serial.port} does not answer: {reason}")
        try:
            timing = self.timing_warnings()
        except InfraError as exc:
            return Health(self.name, False, (str(exc),), seconds=time.monotonic() - started)
        return Health(self.name, not problems, tuple(problems), (*warnings, *timing), time.monotonic() - started,
                      details={"facts": facts.summary()}, timing_warnings=tuple(timing))

    # -- reboot -------------------------------------------------------------------------------

    def _boot_marker(self, timeout: float) -> str:
        """Changes with every boot: the kernel's boot id, and when PID 1 started (for devices whose
        "reboot" restarts their processes, like emulated ones)."""
        return self.run("cat /proc/sys/kernel/random/boot_id; cut -d' ' -f22 /proc/1/stat",
                        timeout=timeout, check=True).stdout.strip()

    def reboot(self, timeout: float | None = None) -> RebootResult:
        """Reboot; wait until the device went down and came back (SSH answering, facts re-read)."""
        deadline = Deadline.after(timeout if timeout is not None else self.config.reboot_timeout)
        before = self._boot_marker(15)
        started = time.monotonic()
        # Detached and delayed, so this command returns before the device goes down.
        command = f"nohup /bin/sh -c {shlex.quote('sleep 1; ' + self.config.reboot_command)} >/dev/null 2>&1 &"
        self.run(command, timeout=15, check=True, root=True)
        log.info("%s: rebooting (%s)", self.name, self.config.reboot_command)
        went_down: float | None = None
        while not deadline.expired:
            if not self.ssh.connected and went_down is None:
                went_down = time.monotonic() - started
            try:
                self.ssh.connect(within=deadline.remaining_or(5.0))
                marker = self._boot_marker(timeout=deadline.remaining_or(5.0))
            except InfraError:
                went_down = went_down or time.monotonic() - started
                self.ssh.close()
                deadline.sleep(0.3)
                continue
            if marker != before:
                if self._serial is not None:  # the console may be a new pty now
                    self._serial.close()
                    self._serial = None
                self.facts(refresh=True)
                seconds = time.monotonic() - started
                log.info("%s: back after %.1f s", self.name, seconds)
                return RebootResult(self.name, seconds, went_down)
            deadline.sleep(0.3)
        state = "did not come back" if went_down is not None else "never went down"
        raise InfraError(f"device '{self.name}': reboot with {self.config.reboot_command!r} {state} after "
                         f"{deadline.elapsed():.1f} s (reboot_timeout {deadline.seconds:g} s in devices.toml)")

    def close_console(self) -> None:
        """Let go of the serial console (only one process can have it open); it reopens on next use."""
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    # -- the session itself: what deploys, faults and leases need of it, without reaching into the transport

    def connect(self, within: float | None = None) -> None:
        """Open the SSH session now (retrying after a drop for up to `within` s; see SshTransport.connect)."""
        self.ssh.connect(within)

    def drop_session(self) -> None:
        """Close the SSH session (the next command opens a fresh one); the console stays open."""
        self.ssh.close()

    def remote_size(self, remote: str) -> int | None:
        """Size of a file on the device, or None when it does not exist."""
        return self.ssh.remote_size(remote)

    def append_from(self, local: Path, remote: str, offset: int, *, progress: ProgressCallback | None = None) -> int:
        """Send local[offset:] to the end of `remote` (resumable uploads); returns the bytes sent."""
        return self.ssh.append_from(local, remote, offset, progress=progress)

    def open_session_channel(self, command: str) -> paramiko.Channel:
        """A channel running `command` that lives exactly as long as this connection (a lease's holder)."""
        return self.ssh.open_session_channel(command)

    def begin_degraded(self, reason: str, seconds: float) -> DegradedLink:
        """A fault makes the link lossy or slow for up to `seconds`: reconnects wait for it (end_degraded)."""
        return self.ssh.begin_degraded(reason, seconds)

    def end_degraded(self, link: DegradedLink) -> None:
        self.ssh.end_degraded(link)

    def close(self) -> None:
        self.ssh.close()
        if self._serial is not None:
            self._serial.close()
