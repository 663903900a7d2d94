"""SSH to a device: one persistent connection, one long-lived command channel, reconnect on drop.

A channel per command costs ~80 ms (sshd sets up a session for each); hil instead starts its
command server (cmdserver.py) once per connection and sends every command through that one
channel, ~1 ms each, with stdout, stderr, exit status, env, cwd, stdin and timeout kept exact
and separate per command. Files move over one SFTP session per connection.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import logging
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from hil.config import Secret, SshConfig
from hil.deadline import Deadline
from hil.errors import (
    AuthError,
    CommandTimeout,
    ConfigError,
    ConnectError,
    ConnectionLost,
    HostKeyError,
    SlowLinkError,
    TransportError,
)
from hil.transport.base import ProgressCallback, Result
from hil.transport.endpoint import Endpoint, resolve

log = logging.getLogger(__name__)

_SERVER_SOURCE = (Path(__file__).parents[1] / "ondevice" / "cmdserver.py").read_text()
_SERVER_BOOT = ("import sys, base64; "
                "exec(compile(base64.b64decode(sys.stdin.buffer.readline()), 'hil-command-server', 'exec'))")
# How long past a command's own timeout we wait for the device to report the kill.
ANSWER_GRACE = 2.0
SERVER_START_TIMEOUT = 10.0
# While a fault degrades the link (loss, a bandwidth cap, delay), each step of opening a session (TCP connect,
# banner, key exchange, authentication, channel open, command server start) may take this long: under 20%
# loss each way TCP's retransmission back-off alone stretches a round trip to seconds.
DEGRADED_CONNECT_TIMEOUT = 10.0
DEGRADED_HANDSHAKE_TIMEOUT = 30.0
DEGRADED_ANSWER_GRACE = 15.0


@dataclass(frozen=True)
class DegradedLink:
    """A fault that makes the link to a device lossy or slow (not cut) until `deadline`.

    While one is active (SshTransport.degraded), sessions open with timeouts sized for the fault and a
    dropped session is retried until the fault's deadline instead of the normal reconnect_timeout.
    """

    reason: str
    deadline: Deadline


def _transport_factory(handshake_timeout: float) -> Any:
    """paramiko's Transport with its key-exchange timeout set (SSHClient.connect has no argument for it)."""

    def make(sock: Any, **kwargs: Any) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)
        transport.handshake_timeout = handshake_timeout
        return transport

    return make


def open_socket(host: str, port: int, timeout: float, interface: str | None) -> socket.socket:
    """A TCP connection to the device; with `interface`, the kernel keeps it on that interface only."""
    last: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            if interface is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot use interface {interface} ({exc.strerror}); "
                                             "for an emulated device: is the lab up? (hil lab up)") from None
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"no address for {host}")


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    answer: dict[str, Any] | None = None


class _CommandChannel:
    """The command server's channel: requests out, answers in, matched by id."""

    def __init__(self, channel: paramiko.Channel, device: str) -> None:
        self.channel = channel
        self.device = device
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.broken: str | None = None
        self._reader = threading.Thread(target=self._read_answers, name=f"hil-ssh-{device}", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.broken is None and not self.channel.closed

    def request(self, message: dict[str, Any], wait: float) -> dict[str, Any]:
        rid = next(self._ids)
        pending = _Pending()
        with self._lock:
            if self.broken:
                raise ConnectionLost(f"device '{self.device}': connection lost: {self.broken}")
            self._pending[rid] = pending
        try:
            self._send({**message, "id": rid})
            if not pending.done.wait(wait):
                raise TimeoutError
        except BaseException:
            with self._lock:
                self._pending.pop(rid, None)
            if message.get("op") == "run":
                with contextlib.suppress(Exception):
                    self._send({"op": "kill", "id": rid})  # Ctrl-C or no answer: stop it on the device
            raise
        assert pending.answer is not None
        if "lost" in pending.answer:
            raise ConnectionLost(f"device '{self.device}': connection lost: {pending.answer['lost']}")
        return pending.answer

    def _send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._send_lock:
            try:
                self.channel.sendall(data)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._fail(f"send failed: {exc}")
                raise ConnectionLost(f"device '{self.device}': connection lost while sending: {exc}") from None

    def _read_answers(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.channel.recv(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._deliver(json.loads(line))
        except Exception as exc:  # the reader must end cleanly and tell every waiter
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        status = self.channel.exit_status if self.channel.exit_status_ready() else None
        self._fail(f"command server ended (exit status {status})")

    def _deliver(self, answer: dict[str, Any]) -> None:
        with self._lock:
            pending = self._pending.pop(answer.get("id", -1), None)
        if pending is not None:
            pending.answer = answer
            pending.done.set()

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = reason
            waiting, self._pending = self._pending, {}
        for pending in waiting.values():
            pending.answer = {"lost": reason}
            pending.done.set()

    def close(self) -> None:
        self._fail("closed")
        with contextlib.suppress(Exception):
            self.channel.close()


class SshTransport:
    """The main door to a device. Thread-safe: commands from several threads run concurrently."""

    def __init__(self, device_name: str, config: SshConfig, python: str = "python3") -> None:
        self.device = device_name
        self.config = config
        self.python = python
        self._client: paramiko.SSHClient | None = None
        self._jumps: list[paramiko.SSHClient] = []  # jump hosts, first hop first
        self._commands: _CommandChannel | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()
        self._ever_connected = False
        self.connects = 0  # how many sessions were opened: 1 unless the link dropped
        self._degraded: list[DegradedLink] = []  # faults that make the link lossy or slow now
        self._degraded_lock = threading.Lock()  # not self._lock: a fault's exit must not wait for a reconnect

    # -- connection -------------------------------------------------------------------------

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active() and self._commands and self._commands.alive)

    @property
    def connected(self) -> bool:
        """The session is open and its command channel alive (as far as we know without asking)."""
        with self._lock:
            return self._alive()

    def connect(self, within: float | None = None) -> None:
        """Open the session now (it is also opened on first use, and reopened after a drop).

        After a drop, reconnecting is retried for `reconnect_timeout`, or `within` seconds if less; while a
        fault degrades the link (begin_degraded), until that fault's deadline instead.
        """
        with self._lock:
            if self._alive():
                return
            self._drop()
            slow_first_contact: DegradedLink | None = None
            if not self._ever_connected:
                try:
                    self._open()  # first contact: fail fast, a dead device must not stall the run
                    return
                except SlowLinkError as exc:
                    # Its sshd answered, so the device is alive: the link is lossy or slow (a fault that a
                    # killed run left applied, which the next run's sweep must still reach to undo).
                    window = self.config.reconnect_timeout if within is None else \
                        min(within, self.config.reconnect_timeout)
                    log.warning("%s; retrying for up to %g s with handshake timeouts of %g s", exc, window,
                                max(self.config.connect_timeout, DEGRADED_HANDSHAKE_TIMEOUT))
                    slow_first_contact = self.begin_degraded("a slow first contact", window)
            try:
                self._retry_open(within)
            finally:
                if slow_first_contact is not None:
                    self.end_degraded(slow_first_contact)

    def _retry_open(self, within: float | None) -> None:
        """Open the session, retrying a while: the device may be rebooting or the link flapping."""
        with self._lock:
            link = self._degraded_link()
            if link is not None:
                # A fault said the link is bad until its deadline: retry until then, whatever the caller's
                # own timeout (the fault, its undo included, needs the device back).
                window = link.deadline.remaining() or 0.0
                why = f" (link degraded by {link.reason})"
            else:
                window = self.config.reconnect_timeout if within is None else \
                    min(within, self.config.reconnect_timeout)
                why = ""
            deadline = Deadline.after(window)
            delay = 0.1
            attempts = 0
            while True:
                attempts += 1
                try:
                    self._open()
                    log.info("device %s: reconnected after %.1f s, %d attempt(s)%s", self.device,
                             deadline.elapsed(), attempts, why)
                    return
                except (HostKeyError, AuthError):
                    raise
                except ConnectError as exc:
                    if deadline.expired:
                        raise ConnectError(f"{exc} (gave up reconnecting after {deadline.elapsed():.1f} s, "
                                           f"{attempts} attempt(s){why})") from None
                    deadline.sleep(delay)
                    delay = min(delay * 2, 2.0)

    # -- degraded links ---------------------------------------------------------------------

    def begin_degraded(self, reason: str, seconds: float) -> DegradedLink:
        """A fault degrades the link for at most `seconds` from now (call end_degraded when it is undone)."""
        link = DegradedLink(reason, Deadline.after(seconds))
        with self._degraded_lock:
            self._degraded.append(link)
        log.info("device %s: link degraded by %s for up to %g s", self.device, reason, seconds)
        return link

    def end_degraded(self, link: DegradedLink) -> None:
        with self._degraded_lock:
            if link in self._degraded:
                self._degraded.remove(link)

    @contextlib.contextmanager
    def degraded(self, reason: str, seconds: float) -> Iterator[DegradedLink]:
        """`with ssh.degraded("packet_loss 20%", 180): ...` (begin_degraded / end_degraded as a block)."""
        link = self.begin_degraded(reason, seconds)
        try:
            yield link
        finally:
            self.end_degraded(link)

    @property
    def degradation(self) -> DegradedLink | None:
        """The fault degrading the link now, if any (see begin_degraded)."""
        return self._degraded_link()

    def _degraded_link(self) -> DegradedLink | None:
        """The active degradation that lasts longest (several faults may overlap), or None."""
        with self._degraded_lock:
            live = [link for link in self._degraded if not link.deadline.expired]
        return max(live, key=lambda link: link.deadline.remaining() or 0.0, default=None)

    def _timeouts(self) -> tuple[float, float]:
        """(TCP connect, each later step of opening a session): normal, or sized for a degraded link."""
        t = self.config.connect_timeout
        if self._degraded_link() is None:
            return t, t
        return max(t, DEGRADED_CONNECT_TIMEOUT), max(t, DEGRADED_HANDSHAKE_TIMEOUT)

    def _open(self) -> None:
        try:
            endpoint = resolve(self.config)
        except ConfigError as exc:
            raise ConnectError(f"device '{self.device}': {exc}") from None
        jumps: list[paramiko.SSHClient] = []
        try:
            client = self._connect(endpoint, jumps, password=self.config.password, role="device")
        except BaseException:
            for jump in jumps:
                jump.close()
            raise
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(max(1, int(self.config.keepalive)))
        self._client, self._jumps = client, jumps
        try:
            self._commands = self._start_server(transport)
        except BaseException:
            self._drop()
            raise
        self._ever_connected = True
        self.connects += 1

    def _dial(self, endpoint: Endpoint, jumps: list[paramiko.SSHClient]
              ) -> socket.socket | paramiko.Channel | paramiko.ProxyCommand:
        """A byte stream to the endpoint's sshd: a TCP socket, a ProxyCommand, or a tunnel through jump hosts."""
        tcp, t = self._timeouts()
        if endpoint.proxy_command is not None:
            # ssh_config's ProxyCommand: the command's stdin/stdout is the byte stream to sshd.
            try:
                return paramiko.ProxyCommand(endpoint.proxy_command)
            except paramiko.ProxyCommandFailure as exc:
                raise ConnectError(f"device '{self.device}': ProxyCommand {endpoint.proxy_command!r} failed: "
                                   f"{exc}") from None
        if endpoint.jump is None:
            return open_socket(endpoint.hostname, endpoint.port, tcp, endpoint.bind_interface)
        bastion = self._connect(endpoint.jump, jumps, password=None, role="jump host")
        jumps.append(bastion)
        transport = bastion.get_transport()
        assert transport is not None  # connect() succeeded
        transport.set_keepalive(max(1, int(self.config.keepalive)))
        try:
            return transport.open_channel("direct-tcpip", (endpoint.hostname, endpoint.port), ("127.0.0.1", 0),
                                          timeout=t)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"device '{self.device}': jump host {endpoint.jump} cannot reach "
                               f"{endpoint.hostname}:{endpoint.port}: {exc}") from None

    def _connect(self, endpoint: Endpoint, jumps: list[paramiko.SSHClient], password: Secret | None, role: str
                 ) -> paramiko.SSHClient:
        """An authenticated client for one hop, host key strictly checked (also behind a jump host)."""
        where = f"device '{self.device}' ({endpoint})" if role == "device" else \
            f"device '{self.device}': {role} {endpoint}"
        known = ", ".join(str(p) for p in endpoint.known_hosts)
        client = paramiko.SSHClient()
        for path in endpoint.known_hosts:
            if path.is_file():
                try:
                    client.load_host_keys(str(path))
                except (OSError, paramiko.SSHException) as exc:
                    raise HostKeyError(f"{where}: cannot read known_hosts {path}: {exc}") from None
        if endpoint.strict:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            log.warning("%s: host key checking is OFF (strict_host_key_checking = false)", where)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        t = self._timeouts()[1]
        host_entry = endpoint.hostname if endpoint.port == 22 else f"[{endpoint.hostname}]:{endpoint.port}"
        started = Deadline.after(None)
        sock: socket.socket | paramiko.Channel | paramiko.ProxyCommand | None = None
        try:
            sock = self._dial(endpoint, jumps)
            # Keys from devices.toml or IdentityFile, then the ssh-agent, then ~/.ssh/id_*, then a password.
            # `timeout` bounds the key exchange here (the socket is already connected); paramiko's own
            # handshake_timeout (15 s) is set to the same through the transport.
            client.connect(
                endpoint.hostname, port=endpoint.port, username=endpoint.user, sock=sock,
                key_filename=[str(k) for k in endpoint.key_files] or None,
                password=password.reveal() if password else None,
                look_for_keys=not endpoint.key_files, allow_agent=True,
                timeout=t, banner_timeout=t, auth_timeout=t, channel_timeout=t,
                transport_factory=_transport_factory(t),
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"{where}: host key does not match the one pinned in {known} "
                f"(got {exc.key.get_name()} {exc.key.fingerprint}): the device was reinstalled, or this "
                f"is not the device you think. If you trust it, remove the old key with "
                f"`ssh-keygen -R '{host_entry}' -f {endpoint.known_hosts[0]}` and pin the new one") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            if "timeout" in str(exc).lower():
                # Not a refusal: the device did not finish authenticating in time (a lossy or slow link).
                raise SlowLinkError(f"{where}: authentication did not complete within {started.elapsed():.1f} s "
                                    f"(allowed {t:g} s; slow or lossy link?)") from None
            raise AuthError(f"{where}: authentication refused ({exc}); check the user, the key (ssh.key or "
                            "IdentityFile) or the ssh-agent, or ssh.password") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    f"{where}: host key is unknown (not in {known}); pin it first, e.g. "
                    f"`ssh-keyscan -p {endpoint.port} {endpoint.hostname} >> {endpoint.known_hosts[0]}` "
                    "after checking its fingerprint") from None
            # Its sshd was reached, so a failed handshake means a bad link more likely than a dead device.
            error = ConnectError if sock is None else SlowLinkError
            raise error(f"{where}: SSH handshake failed after {started.elapsed():.1f} s: {exc}") from None
        except TimeoutError:
            client.close()
            if sock is not None:
                raise SlowLinkError(f"{where}: the SSH handshake did not finish within {started.elapsed():.1f} s "
                                    f"(allowed {t:g} s; slow or lossy link?)") from None
            raise ConnectError(f"{where}: no answer within {started.elapsed():.1f} s "
                               "(device off, cable out, wrong address?)") from None
        except OSError as exc:
            client.close()
            raise ConnectError(f"{where}: cannot connect: {exc.strerror or exc}") from None
        return client

    def open_session_channel(self, command: str) -> paramiko.Channel:
        """A channel of its own running `command`, for what must live exactly as long as this connection
        (a lease's lock holder): when the connection dies, sshd ends the command."""
        with self._lock:
            self._channel()
            assert self._client is not None
            transport = self._client.get_transport()
            assert transport is not None
            try:
                channel = transport.open_session(timeout=self._timeouts()[1])
                channel.exec_command(command)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise ConnectionLost(f"device '{self.device}': cannot open a channel: {exc}") from None
            return channel

    def _start_server(self, transport: paramiko.Transport) -> _CommandChannel:
        try:
            channel = transport.open_session(timeout=self._timeouts()[1])
            # The server itself runs without the session's LD_PRELOAD; it hands it on to each command.
            # Its source arrives as the first line of stdin, so `ps` on the device shows a short command.
            channel.exec_command(f'HIL_SESSION_LD_PRELOAD="${{LD_PRELOAD-}}" LD_PRELOAD= exec '
                                 f"{shlex.quote(self.python)} -u -c {shlex.quote(_SERVER_BOOT)} hil-command-server")
            channel.sendall(base64.b64encode(_SERVER_SOURCE.encode()) + b"\n")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"device '{self.device}': cannot open a command channel: {exc}") from None
        commands = _CommandChannel(channel, self.device)
        try:
            commands.request({"op": "ping"}, max(SERVER_START_TIMEOUT, self._timeouts()[1]))
        except (TimeoutError, TransportError):
            err = b""
            with contextlib.suppress(Exception):
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(4096)
            commands.close()
            raise ConnectError(
                f"device '{self.device}': cannot start hil's command server with '{self.python}' "
                f"({err.decode(errors='replace').strip()[-300:] or 'no answer'}): install Python 3 on the "
                f"device or set its `python` in devices.toml") from None
        return commands

    def _drop(self) -> None:
        for thing in (self._sftp, self._commands, self._client, *reversed(self._jumps)):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self._sftp = self._commands = self._client = None
        self._jumps = []

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- commands ---------------------------------------------------------------------------

    def _channel(self, within: float | None = None) -> _CommandChannel:
        with self._lock:
            if not self._alive():
                self.connect(within)
            assert self._commands is not None
            return self._commands

    def run(
        self,
        command: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        started = time.monotonic()
        commands = self._channel(within=timeout)
        request = {"op": "run", "cmd": command, "env": dict(env or {}), "cwd": cwd, "timeout": timeout,
                   "stdin": base64.b64encode(stdin).decode() if stdin is not None else None}
        grace = ANSWER_GRACE if self._degraded_link() is None else DEGRADED_ANSWER_GRACE
        sent = Deadline.after(None)
        try:
            answer = commands.request(request, timeout + grace)
        except TimeoutError:
            # The device did not even report the kill: the path to it is dead, start afresh next time.
            self.close()
            raise ConnectionLost(f"device '{self.device}': no answer to {command!r} within "
                                 f"{sent.elapsed():.1f} s; connection dropped") from None
        except ConnectionLost:
            self.close()
            raise
        if "error" in answer:
            raise TransportError(f"device '{self.device}': {answer['error']}")
        stdout = base64.b64decode(answer["stdout"]).decode(errors="replace")
        stderr = base64.b64decode(answer["stderr"]).decode(errors="replace")
        if answer["timed_out"]:
            raise CommandTimeout(f"device '{self.device}': {command!r} ran past its {timeout:g} s timeout "
                                 f"and was killed (answered after {time.monotonic() - started:.1f} s)",
                                 stdout=stdout, stderr=stderr)
        return Result(command, stdout, stderr, answer["status"], time.monotonic() - started)

    # -- files ------------------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            self._channel()
            if self._sftp is None:
                assert self._client is not None
                try:
                    self._sftp = self._client.open_sftp()
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    raise TransportError(f"device '{self.device}': cannot open SFTP: {exc}") from None
                self._sftp.get_channel().settimeout(max(30.0, self.config.connect_timeout))
            return self._sftp

    def put(self, local: Path, remote: str, *, progress: ProgressCallback | None = None) -> None:
        try:
            self._sftp_client().put(str(local), remote, callback=progress)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise TransportError(f"device '{self.device}': upload {local} -> {remote} failed: {exc}") from None

    def remote_size(self, remote: str) -> int | None:
        """Size of a file on the device, or None when it does not exist."""
        try:
            return self._sftp_client().stat(remote).st_size
        except FileNotFoundError:
            return None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise TransportError(f"device '{self.device}': stat {remote} failed: {exc}") from None

    def append_from(self, local: Path, remote: str, offset: int, *, progress: ProgressCallback | None = None,
                    chunk: int = 1 << 20) -> int:
        """Send local[offset:] to the end of `remote` (which holds exactly `offset` bytes); returns bytes sent.

        The basis of resumable uploads: after a broken connection, the caller reconnects, asks
        remote_size() and continues from there instead of starting over.
        """
        total = local.stat().st_size
        sent = 0
        try:
            with local.open("rb") as src, self._sftp_client().open(remote, "ab") as dst:
                dst.set_pipelined(True)
                src.seek(offset)
                while data := src.read(chunk):
                    dst.write(data)
                    sent += len(data)
                    if progress is not None:
                        progress(offset + sent, total)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()  # the session is suspect: the next call reconnects
            raise TransportError(f"device '{self.device}': upload {local} -> {remote} broke after "
                                 f"{offset + sent} of {total} bytes: {exc}") from None
        return sent

    def get(self, remote: str, local: Path, *, progress: ProgressCallback | None = None) -> None:
        try:
            self._sftp_client().get(remote, str(local), callback=progress)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise TransportError(f"device '{self.device}': download {remote} -> {local} failed: {exc}") from None
