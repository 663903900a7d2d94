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

from hil.config import DeviceConfig
from hil.errors import CommandFailed, HilError, InfraError, TransportError
from hil.transport.base import ProgressCallback, Result
from hil.transport.serial import SerialTransport
from hil.transport.ssh import SshTransport

log = logging.getLogger(__name__)

_PROBE_SOURCE = (Path(__file__).parent / "probe.py").read_text()
DEFAULT_TIMEOUT = 60.0
CLOCK_SAMPLES = 7
MIN_FREE_BYTES = 16 * 1024 * 1024  # below this a workdir cannot take even a small model


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
class Health:
    device: str
    ok: bool
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
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

    def __repr__(self) -> str:
        return f"Device({self.name!r})"

    @property
    def workdir(self) -> str:
        return self.config.workdir

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
    ) -> Result:
        """Run a shell command on the device over SSH; check=True raises CommandFailed on non-zero exit."""
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
                cwd: str | None = None) -> Result:
        """Run a command over the serial console (works when the network does not)."""
        return self.serial.run(command, timeout=timeout, env=env, cwd=cwd)

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
                raise TransportError(f"device '{self.name}': `date +%s.%N` printed {result.stdout.strip()!r}, "
                                     "not seconds; hil needs a date with %N (coreutils)") from None
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

    def health(self, max_clock_offset: float = 5.0) -> Health:
        """Reachable, workdir writable with free space, clock sane, onnxruntime importable."""
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
        return Health(self.name, not problems, tuple(problems), tuple(warnings), time.monotonic() - started,
                      {"facts": facts.summary()})

    def close(self) -> None:
        self.ssh.close()
        if self._serial is not None:
            self._serial.close()
