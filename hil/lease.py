"""Leases: a run holds a device exclusively, with the lock on the device itself (no server to run).

The holder is `flock` on `<workdir>/.hil/lease.lock`, started over its own SSH channel and kept
alive by that channel's stdin: when the run ends, dies or loses its connection, sshd ends the
holder and the kernel frees the lock. Who holds it (user@host, run id, since) is written next to it.

A process started with HIL_LEASE_RUN_ID=<run id> (the acceptance pytest of `hil rollout`) works under a lease
that run already holds, instead of waiting for it: the holder stays responsible for the device.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import logging
import os
import random
import shlex
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import paramiko

from hil.deadline import Deadline
from hil.device import Device
from hil.errors import DeviceBusy, LeaseUnavailable, TransportError

log = logging.getLogger(__name__)

GRANTED = "HIL-LEASE-GRANTED"
FAILED = "HIL-LEASE-FAILED"  # then the exit status and the login user: the lock could not be made or taken
BUSY_STATUS = 99  # flock's exit status when the lock stayed held until its timeout (flock -E)
# errno names by their strerror text, to name the errno of a failed mkdir or open on the device.
_ERRNO_BY_TEXT = {os.strerror(n): (n, name) for n, name in errno.errorcode.items()}
SHARED_RUN_ENV = "HIL_LEASE_RUN_ID"  # join a lease this run id holds (see the module doc)


@dataclass(frozen=True)
class LeaseInfo:
    holder: str  # user@host
    run_id: str
    since: str

    def __str__(self) -> str:
        return f"{self.holder} (run {self.run_id}, since {self.since})"


def _paths(device: Device) -> tuple[str, str]:
    base = f"{device.workdir}/.hil"
    return f"{base}/lease.lock", f"{base}/lease.json"


class Lease:
    """`with Lease(device, run_id, timeout=60): ...` holds the device for the block."""

    def __init__(self, device: Device, run_id: str, timeout: float = 60.0) -> None:
        self.device = device
        self.info = LeaseInfo(f"{getpass.getuser()}@{socket.gethostname()}", run_id,
                              datetime.now(UTC).isoformat(timespec="seconds"))
        self.timeout = timeout
        self.channel: paramiko.Channel | None = None
        self.waited = 0.0

    def acquire(self) -> Lease:
        shared = os.environ.get(SHARED_RUN_ENV)
        holder = holder_of(self.device) if shared else None
        if holder is not None and holder.run_id == shared:
            log.info("%s: working under the lease of %s", self.device.name, holder)
            return self  # nothing to release: the parent run keeps holding the device
        lock, info = _paths(self.device)
        record = shlex.quote(json.dumps(self.info.__dict__))
        hold = f"printf '%s\\n' {record} > {shlex.quote(info)}; echo {GRANTED}; exec cat > /dev/null"
        # Not `exec flock`: when mkdir or flock fails, the shell says so with the status and the login user.
        # flock exits BUSY_STATUS only when the lock stayed held for the whole wait; any other failure (it
        # cannot create or open the file) exits at once with its own message.
        command = (f"mkdir -p {shlex.quote(lock.rsplit('/', 1)[0])} && flock -E {BUSY_STATUS} -x -w "
                   f"{self.timeout:g} {shlex.quote(lock)} sh -c {shlex.quote(hold)} || "
                   f"{{ rc=$?; echo \"{FAILED} $rc $(id -un)\" >&2; exit $rc; }}")
        waited = Deadline.after(None)
        channel = self.device.open_session_channel(command)
        output = b""
        deadline = Deadline.after(self.timeout + self.device.config.ssh.connect_timeout + 5)
        channel.settimeout(0.2)
        while GRANTED.encode() not in output:
            if channel.exit_status_ready() or deadline.expired:
                self._refused(channel, lock, waited)  # raises
            try:
                chunk = channel.recv(4096)
            except TimeoutError:
                continue
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise TransportError(f"device '{self.device.name}': lease channel failed: {exc}") from None
            output += chunk
        self.channel = channel
        self.waited = waited.elapsed()
        log.info("%s: leased to %s after %.1f s", self.device.name, self.info, self.waited)
        return self

    def _refused(self, channel: paramiko.Channel, lock: str, waited: Deadline) -> None:
        """The holder ended (or never answered) without the lock: busy, or the lock cannot be made at all."""
        status = channel.recv_exit_status() if channel.exit_status_ready() else None
        stderr = b""
        with contextlib.suppress(Exception):
            while channel.recv_stderr_ready():
                stderr += channel.recv_stderr(4096)
        channel.close()
        text = stderr.decode(errors="replace")
        if status is not None and status != BUSY_STATUS:
            lines = [line for line in text.splitlines() if line.strip()]
            marker = next((line.split() for line in lines if line.startswith(FAILED)), [])
            user = marker[2] if len(marker) > 2 else (self.device.config.ssh.user or "?")
            said = "; ".join(line.strip() for line in lines if not line.startswith(FAILED)) or f"exit {status}"
            raise LeaseUnavailable(f"device '{self.device.name}': cannot create or open the lease lock {lock} as user "
                                   f"'{user}': {_errno_of(said)}{said}. Make {self.device.workdir} writable by "
                                   f"'{user}' on the device, or set `workdir` in devices.toml to a directory "
                                   "it owns")
        holder = holder_of(self.device)
        raise DeviceBusy(f"device '{self.device.name}' is leased by {holder or 'another run'}; still busy after "
                         f"{waited.elapsed():.1f} s (--hil-lease-timeout {self.timeout:g} s)")

    @property
    def alive(self) -> bool:
        """Still held: a connection that dropped (and reconnected) took the holder, and the lock, with it."""
        channel = self.channel
        return channel is not None and not channel.closed and not channel.exit_status_ready() \
            and channel.get_transport() is not None and channel.get_transport().is_active()

    def release(self) -> None:
        if self.channel is not None:
            self.channel.close()  # the holder's stdin ends: it exits and the lock is free
            self.channel = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _errno_of(message: str) -> str:
    """'[Errno 13] EACCES: ' for a message that ends in a strerror text ('... Permission denied'), else ''."""
    for text, (number, name) in _ERRNO_BY_TEXT.items():
        if message.rstrip().endswith(text):
            return f"[Errno {number}] {name}: "
    return ""


def holder_of(device: Device) -> LeaseInfo | None:
    """Who holds the device now, or None when it is free."""
    lock, info = _paths(device)
    out = device.run(f"flock -n {shlex.quote(lock)} true 2>/dev/null && echo FREE || cat {shlex.quote(info)}",
                     timeout=15).stdout.strip()
    if out in ("", "FREE"):
        return None
    try:
        return LeaseInfo(**json.loads(out))
    except (ValueError, TypeError):
        return LeaseInfo("unknown", "?", "?")


def lease_together(devices: Sequence[Device], run_id: str, timeout: float, *, attempt_s: float = 1.0) -> list[Lease]:
    """Lease every device or none, for a test that needs several at once.

    Each attempt takes the leases in name order, waiting at most attempt_s for each; when one is
    busy it gives back what it took, backs off a random while and tries again, until timeout.
    Never holding some devices while waiting for others, two runs cannot deadlock, and the random
    back-off keeps them from retrying in lockstep.
    """
    ordered = sorted(devices, key=lambda d: d.name)
    deadline = Deadline.after(timeout)
    busy: DeviceBusy | None = None
    while True:
        taken: list[Lease] = []
        try:
            for device in ordered:
                taken.append(Lease(device, run_id, max(deadline.remaining_or(attempt_s), 0.1)).acquire())
            return taken
        except DeviceBusy as exc:
            busy = exc
        except BaseException:
            for lease in taken:
                lease.release()
            raise
        for lease in taken:
            lease.release()
        if deadline.expired:
            names = ", ".join(d.name for d in ordered)
            raise DeviceBusy(f"devices {names} could not be leased together: still busy after "
                             f"{deadline.elapsed():.1f} s (--hil-lease-timeout {timeout:g} s); last: {busy}")
        deadline.sleep(random.uniform(0.2, 1.5))
