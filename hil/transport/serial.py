"""Run commands over a device's serial console (the side door), with the marker protocol.

The console is one interactive shell shared by every call, so a lock keeps one command in flight.
Before the first command (and after anything that may have left the shell in a bad state, such as a
timeout) the transport syncs: Ctrl-C, log in if asked, quiet the shell (no echo, no bracketed
paste, a plain prompt), then prove it answers with a marker round trip.

Output on a console is stdout and stderr merged: `Result.stderr` is always "".
"""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import serial

from hil.config import SerialConfig
from hil.deadline import Deadline
from hil.errors import AuthError, CommandTimeout, ConnectError, ConnectionLost, HilError, TransportError
from hil.transport.base import Result
from hil.transport.markers import END, ParsedOutput, new_token, parse, partial_output, strip_ansi, wrap

log = logging.getLogger(__name__)


class SerialError(TransportError):
    """The serial console could not be used."""


class SerialConnectError(SerialError, ConnectError):
    """The port cannot be opened, or no shell answers on it."""


class SerialAuthError(SerialConnectError, AuthError):
    """The console asked for a login that is not configured, or refused the one given."""


CONSOLE_LOG_LIMIT = 1 << 20  # bytes of raw console kept for reports
PROMPT = "hil$ "
# Quiet the shell; every step tolerates shells that lack it (busybox has no `bind`, dash no history).
SETUP_LINE = (
    "stty -echo 2>/dev/null; bind 'set enable-bracketed-paste off' 2>/dev/null; "
    f"PS1='{PROMPT}'; PS2=''; unset PROMPT_COMMAND HISTFILE; set +o history 2>/dev/null"
)

_POLL = 0.05  # longest single blocking read: how late a deadline can be noticed, not a latency
_QUIET = 0.25  # no output for this long after Ctrl-C: the console has said what it will say
_SETTLE = 0.05  # a prompt-looking tail must stay unchanged this long before we answer it
_AFTER_LOGIN_QUIET = 2.0  # a login may take a while to ask for the password
_AFTER_PASSWORD_QUIET = 1.0
_WRITE_STALL = 10.0  # a console that accepts no byte for this long is stuck
_CHUNK = 1024  # write in pieces and drain replies in between, so an echoing shell cannot deadlock
_TAIL = 512
# A tty in canonical mode (a shell between two readline calls) keeps at most 4095 bytes of a line
# and drops the rest; longer lines are only sent once the shell shows its prompt (readline is raw).
_CANONICAL_SAFE = 3000

_LOGIN_PROMPT = re.compile(r"login:\s*$", re.IGNORECASE)
_PASSWORD_PROMPT = re.compile(r"password:\s*$", re.IGNORECASE)
_SHELL_PROMPT = re.compile(r"[#$%>]\s*$")
_LOGIN_REFUSED = re.compile(r"login incorrect|authentication fail|permission denied", re.IGNORECASE)


class _Expired(Exception):
    """Internal: a deadline passed while waiting for the console."""


class SerialTransport:
    """A Transport over one serial console; opened lazily, kept open between calls."""

    def __init__(self, device_name: str, config: SerialConfig, *, drop_kernel_lines: bool = True) -> None:
        self.device_name = device_name
        self.config = config
        self.drop_kernel_lines = drop_kernel_lines
        self._port: serial.SerialBase | None = None
        self._synced = False
        self._lock = threading.Lock()
        self._rx = bytearray()  # what was read during the current exchange
        self._mark = 0  # where in _rx the text after the last end marker starts
        self._log = bytearray()
        # Prompts known for sure end a wait at once; look-alikes must stay quiet for _SETTLE first.
        self._prompts = [re.compile(re.escape(PROMPT) + r"$")]
        if config.prompt:
            self._prompts.append(re.compile(f"(?:{config.prompt})\\s*$"))
        self._stops = [_LOGIN_PROMPT, _PASSWORD_PROMPT, _SHELL_PROMPT]

    def __repr__(self) -> str:
        return f"SerialTransport({self.device_name!r}, {self.config.port!r})"

    @property
    def console_log(self) -> bytes:
        """The raw bytes read from the console (the last CONSOLE_LOG_LIMIT of them)."""
        return bytes(self._log)

    def run(
        self,
        command: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """Run `command` in the console's shell; stderr is merged into stdout."""
        line = wrap(command, token := new_token(), env, cwd, stdin)
        with self._lock:
            self._ready()
            log.debug("device %s: serial run %r", self.device_name, command)
            deadline = Deadline(timeout)
            try:
                parsed = self._exchange(line, token, deadline)
            except _Expired:
                partial = partial_output(self._text(), token)
                self._recover()
                raise CommandTimeout(
                    f"device '{self.device_name}': command {command!r} timed out after {deadline.elapsed():.1f} s "
                    f"(timeout {timeout:g} s) "
                    f"on serial console {self.config.port} (sent Ctrl-C)",
                    stdout=partial,
                ) from None
            except ConnectionLost as exc:
                raise ConnectionLost(f"{exc} (while running {command!r})") from exc
        if parsed.kernel_lines:
            log.info("device %s: kernel messages during %r: %s", self.device_name, command, parsed.kernel_lines)
        return Result(command, parsed.output, "", parsed.exit_status, deadline.elapsed())

    def close(self) -> None:
        with self._lock:
            self._drop_port()

    def __enter__(self) -> SerialTransport:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- opening and syncing ---------------------------------------------------------------

    def _ready(self) -> None:
        if self._port is None:
            self._open()
        if not self._synced:
            self._sync()

    def _open(self) -> None:
        port = self.config.port
        try:
            self._port = serial.serial_for_url(
                port, baudrate=self.config.baud, timeout=_POLL, write_timeout=_WRITE_STALL, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SerialConnectError(self._open_failure(exc)) from exc
        self._synced = False
        log.debug("device %s: opened serial console %s", self.device_name, port)

    def _open_failure(self, exc: Exception) -> str:
        port = self.config.port
        where = f"device '{self.device_name}': cannot open serial console {port}"
        code = getattr(exc, "errno", None)
        if "://" not in port and not Path(port).exists():
            return (
                f"{where}: no such port. For an emulated device: is the lab up? (`hil lab up`). "
                "For real hardware: check the USB-serial cable and `serial.port` in devices.toml."
            )
        if code in (errno.EACCES, errno.EPERM):
            return f"{where}: permission denied. Add your user to group 'dialout' (then log in again)."
        if code in (errno.EBUSY, errno.EAGAIN):
            return f"{where}: port busy. Another process holds it (another hil worker, minicom, screen)."
        return f"{where}: {exc}. Check the cable, the port path and its permissions."

    def _sync(self) -> None:
        deadline = Deadline(self.config.timeout)
        probe, token = new_token(), new_token()
        try:
            self._clear()
            self._send(b"\x03\n", deadline)  # abandon whatever is running or half-typed
            text = self._settle(deadline, _QUIET, self._stops)
            if not any(p.search(text) for p in (*self._prompts, _LOGIN_PROMPT, _PASSWORD_PROMPT)):
                # Nothing prompt-like yet: a getty just respawned after a logout may still be starting,
                # and a line sent now would be taken as a user name.
                text = self._settle(deadline, _AFTER_LOGIN_QUIET, self._stops)
            self._log_in_if_asked(text, deadline)
            parsed = self._probe(probe, token, deadline)
        except _Expired:
            if not _LOGIN_PROMPT.search(self._tail()):
                raise SerialConnectError(self._sync_failure("no shell answered", deadline)) from None
            # Our lines reached a login prompt that showed up late (a getty respawning after a
            # logout took them for a user name and a password): log in now and ask again.
            log.info("device %s: a login prompt came late on %s; logging in", self.device_name, self.config.port)
            retry = Deadline(self.config.timeout)
            try:
                self._log_in_if_asked(self._tail(), retry)
                parsed = self._probe(probe, token := new_token(), retry)
            except _Expired:
                raise SerialConnectError(self._sync_failure("no shell answered", deadline)) from None
        if parsed.output.strip() != probe:
            raise SerialConnectError(self._sync_failure(f"unexpected reply {parsed.output!r}", deadline))
        self._synced = True
        log.debug("device %s: synced to the shell on %s", self.device_name, self.config.port)

    def _probe(self, probe: str, token: str, deadline: Deadline) -> ParsedOutput:
        self._send(SETUP_LINE.encode() + b"\n", deadline)
        return self._exchange(wrap(f"echo {probe}", token), token, deadline)

    def _sync_failure(self, what: str, waited: Deadline) -> str:
        tail = self._text()[-200:]
        return (
            f"device '{self.device_name}': {what} on serial console {self.config.port} after "
            f"{waited.elapsed():.1f} s (serial.timeout {self.config.timeout:g} s; is a shell or login prompt on it? "
            f"set `serial.prompt`, "
            f"`login`, `password` in devices.toml); last output: {tail!r}"
        )

    def _log_in_if_asked(self, text: str, deadline: Deadline) -> None:
        sent_password = False
        for _ in range(4):  # login, password, and a retry prompt at most
            if _LOGIN_PROMPT.search(text):
                if sent_password:
                    raise SerialAuthError(self._auth_failure("refused the login"))
                text = self._answer_login(deadline)
            elif _PASSWORD_PROMPT.search(text):
                if sent_password:
                    raise SerialAuthError(self._auth_failure("asked for the password again"))
                text = self._answer_password(deadline)
                sent_password = True
            else:
                break
        if sent_password and _LOGIN_REFUSED.search(text):
            raise SerialAuthError(self._auth_failure("refused the login"))

    def _answer_login(self, deadline: Deadline) -> str:
        if self.config.login is None:
            raise SerialAuthError(self._auth_failure("asks for a login but `serial.login` is not set"))
        log.info("device %s: logging in on %s as %s", self.device_name, self.config.port, self.config.login)
        self._clear()
        self._send(self.config.login.encode() + b"\n", deadline)
        # Not stopping at "login:" here: a prompt reprinted for our own newline may still arrive.
        return self._settle(deadline, _AFTER_LOGIN_QUIET, [_PASSWORD_PROMPT, _SHELL_PROMPT])

    def _answer_password(self, deadline: Deadline) -> str:
        if self.config.password is None:
            raise SerialAuthError(self._auth_failure("asks for a password but `serial.password` is not set"))
        self._clear()
        self._send(self.config.password.reveal().encode() + b"\n", deadline)  # never logged
        return self._settle(deadline, _AFTER_PASSWORD_QUIET, [_LOGIN_PROMPT, _SHELL_PROMPT])

    def _auth_failure(self, what: str) -> str:
        return (
            f"device '{self.device_name}': serial console {self.config.port} {what} "
            f"(login {self.config.login!r}); check `serial.login` / `serial.password` in devices.toml"
        )

    def _recover(self) -> None:
        """After a timeout: Ctrl-C the command and resync, so the next call finds a clean shell."""
        self._synced = False
        try:
            self._sync()
        except HilError as exc:
            log.warning("device %s: console did not recover after a timeout: %s", self.device_name, exc)

    # --- reading and writing -----------------------------------------------------------------

    def _exchange(self, line: str, token: str, deadline: Deadline) -> ParsedOutput:
        """Type one wrapped line and read until its end marker is parsed."""
        if len(line) > _CANONICAL_SAFE:
            self._settle(deadline, _QUIET, [_SHELL_PROMPT])
        self._clear()
        self._send(line.encode() + b"\n", deadline)
        marker = (END + token).encode()
        searched = 0
        while True:
            if (at := self._rx.find(marker, searched)) >= 0:
                parsed = parse(self._text(), token, drop_kernel_lines=self.drop_kernel_lines)
                if parsed is not None:
                    self._mark = self._rx.find(b"\n", at) + 1  # the next prompt comes after this
                    return parsed
            else:
                searched = max(0, len(self._rx) - len(marker))
            if deadline.expired:
                raise _Expired
            self._read_chunk()

    def _settle(self, deadline: Deadline, quiet: float, stops: Sequence[re.Pattern[str]]) -> str:
        """Read until the console is quiet for `quiet` s, or briefly quiet after a tail matching `stops`.

        A tail matching one of our known prompts ends the wait at once. Returns the tail read so far
        without escape codes. Never raises on the deadline: the marker round trip that follows is
        what decides whether the shell answers.
        """
        last_data = time.monotonic()
        while not deadline.expired:
            tail = self._tail()
            if any(p.search(tail) for p in self._prompts):
                break
            if self._read_chunk():
                last_data = time.monotonic()
                continue
            idle = time.monotonic() - last_data
            if idle >= quiet or (idle >= _SETTLE and any(p.search(self._tail()) for p in stops)):
                break
        return self._tail()

    def _tail(self) -> str:
        """The end of what was read since the last end marker, as plain text."""
        start = max(self._mark, len(self._rx) - _TAIL)
        return strip_ansi(bytes(self._rx[start:]).decode("utf-8", "replace")).replace("\r", "")

    def _clear(self) -> None:
        self._rx.clear()
        self._mark = 0

    def _text(self) -> str:
        return self._rx.decode("utf-8", "replace")

    def _send(self, data: bytes, deadline: Deadline) -> None:
        port = self._require_port()
        for at in range(0, len(data), _CHUNK):
            if deadline.expired:
                raise _Expired
            try:
                port.write(data[at : at + _CHUNK])
            except serial.SerialTimeoutException as exc:
                self._lost(f"accepted no input for {_WRITE_STALL:g} s", exc)
            except (serial.SerialException, OSError) as exc:
                self._lost("failed on write", exc)
            self._drain()

    def _drain(self) -> None:
        """Read what is already waiting, without blocking."""
        port = self._require_port()
        try:
            waiting = port.in_waiting
        except (serial.SerialException, OSError) as exc:
            self._lost("failed on read", exc)
        if waiting:
            self._read_chunk()

    def _read_chunk(self) -> bytes:
        """Block at most _POLL for at least one byte, then take everything already waiting."""
        port = self._require_port()
        try:
            data = port.read(port.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:
            self._lost("failed on read", exc)
        if data:
            self._rx += data
            self._log += data
            if len(self._log) > CONSOLE_LOG_LIMIT:
                del self._log[: len(self._log) - CONSOLE_LOG_LIMIT]
        return data

    def _require_port(self) -> serial.SerialBase:
        if self._port is None:
            raise ConnectionLost(f"device '{self.device_name}': serial console {self.config.port} is closed")
        return self._port

    def _lost(self, what: str, exc: Exception) -> NoReturn:
        self._drop_port()
        raise ConnectionLost(
            f"device '{self.device_name}': serial console {self.config.port} {what}: {exc} "
            "(did the lab go down, or the cable come out?)"
        ) from exc

    def _drop_port(self) -> None:
        port, self._port, self._synced = self._port, None, False
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError) as exc:
                log.debug("device %s: closing %s: %s", self.device_name, self.config.port, exc)
