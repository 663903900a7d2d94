"""SSH through lossy and slow links: a network fault tells the transport, which then reconnects with timeouts
sized for the fault and retries until the fault's deadline (hil.transport.ssh.SshTransport.begin_degraded)."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hil import faults
from hil.config import SshConfig
from hil.device import Device
from hil.errors import ConnectError, SlowLinkError
from hil.faults.base import Fault
from hil.transport.base import Transport
from hil.transport.ssh import DEGRADED_CONNECT_TIMEOUT, DEGRADED_HANDSHAKE_TIMEOUT, SshTransport, open_socket

RECONNECTS = 6


def _dropped_packets(device: Device, tag: str) -> int:
    """Packets the fault's iptables rules dropped so far (read over the console: it is not the lossy link)."""
    listing = device.console("iptables -w -L -v -n -x", timeout=15).stdout
    return sum(int(line.split()[0]) for line in listing.splitlines() if tag in line and line.split()[0].isdigit())


def _reconnect_and_run(device: Device, fault: Fault) -> list[float]:
    """Drop the session RECONNECTS times under the fault; each time the next command must reconnect and run."""
    link = device.ssh.degradation
    assert link is not None and fault.kind in link.reason
    assert link.deadline.remaining() is not None and link.deadline.remaining() > 60  # the fault's own deadline
    connects, times = device.ssh.connects, []
    for i in range(RECONNECTS):
        device.ssh.close()
        started = time.monotonic()
        result = device.run(f"echo reconnect-{i}; id -un", timeout=5)
        times.append(time.monotonic() - started)
        assert result.stdout.split() == [f"reconnect-{i}", device.config.ssh.user or "root"]
    assert device.ssh.connects - connects == RECONNECTS  # a fresh session each time, not a kept one
    return times


@pytest.mark.usefixtures("lab")
@pytest.mark.parametrize("make", [
    pytest.param(lambda d: faults.packet_loss(d, 0.2, max_seconds=180), id="20-percent-loss"),
    pytest.param(lambda d: faults.bandwidth_cap(d, kbit=1000, max_seconds=180), id="1-mbit-cap"),
])
def test_reconnects_through_a_degraded_link(device_a: Device, make: Callable[[Device], Fault]) -> None:
    device_a.run("true", timeout=10)
    with make(device_a) as fault:
        before = _dropped_packets(device_a, fault.id)
        times = _reconnect_and_run(device_a, fault)
        if fault.kind == "packet_loss":
            assert _dropped_packets(device_a, fault.id) > before, "the loss rule dropped nothing: no loss was tested"
    assert device_a.ssh.degradation is None  # the fault is undone: normal timeouts again
    assert device_a.run("echo after", timeout=10).stdout == "after\n"
    print(f"{fault.kind}: {RECONNECTS} reconnects in {', '.join(f'{t:.2f}' for t in times)} s")


def test_a_degraded_link_sizes_timeouts_and_ends_with_its_fault() -> None:
    transport = SshTransport("unit", SshConfig(host="192.0.2.1", connect_timeout=5.0))  # never dialled
    assert isinstance(transport, Transport)  # the protocol the serial console satisfies too
    assert transport._timeouts() == (5.0, 5.0) and transport.degradation is None
    first = transport.begin_degraded("packet_loss {'rate': 0.2}", 100)
    assert transport._timeouts() == (DEGRADED_CONNECT_TIMEOUT, DEGRADED_HANDSHAKE_TIMEOUT)
    with transport.degraded("bandwidth_cap {'kbit': 1000}", 200) as second:
        assert transport.degradation is second  # overlapping faults: the one that lasts longest counts
    assert transport.degradation is first
    transport.end_degraded(first)
    assert transport.degradation is None and transport._timeouts() == (5.0, 5.0)
    gone = transport.begin_degraded("delay", 0.0)  # past its deadline: the dead-man has undone it
    assert transport.degradation is None and transport._timeouts() == (5.0, 5.0)
    transport.end_degraded(gone)


@pytest.mark.usefixtures("lab")
def test_network_drop_and_flapping_do_not_mark_the_link_degraded(device_a: Device) -> None:
    # A cut link must keep failing fast (the undo goes over the console or the dead-man), not wait for it.
    assert not faults.network_drop(device_a).degrades_link and not faults.flapping(device_a, 1, 1, 1).degrades_link
    assert faults.packet_loss(device_a, 0.2).degrades_link and faults.bandwidth_cap(device_a, 1000).degrades_link


def test_reconnect_messages_say_the_time_really_waited() -> None:
    transport = SshTransport("unit", SshConfig(host="127.0.0.1", port=1, connect_timeout=0.5, reconnect_timeout=1.2))
    transport._ever_connected = True  # as after a drop: retried within reconnect_timeout
    started = time.monotonic()
    with pytest.raises(Exception, match=r"gave up reconnecting after (\d+\.\d) s, (\d+) attempt") as info:
        transport.connect()
    waited = time.monotonic() - started
    said = float(re.search(r"after (\d+\.\d) s", str(info.value)).group(1))  # type: ignore[union-attr]
    assert abs(said - waited) < 0.3 and 1.0 <= said < 3.0


class _SilentOnce:
    """A TCP relay to a device's sshd that swallows the first connection (no SSH banner ever comes, as through
    a link a killed run left lossy) and relays every later one to the real sshd."""

    def __init__(self, target: tuple[str, int], bind_interface: str | None) -> None:
        self.target, self.bind_interface = target, bind_interface
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted == 1:
                self._held.append(client)  # connected, and then silence
                continue
            upstream = open_socket(*self.target, 5.0, self.bind_interface)
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for held in self._held:
            held.close()


@pytest.mark.usefixtures("lab")
def test_a_first_contact_whose_handshake_stalls_is_retried_not_failed(device_a: Device, tmp_path: Path) -> None:
    # A killed run can leave a lossy link behind; the next run's first contact (its sweep, which would undo
    # that fault) then stalls in the handshake. sshd answered, so the device is alive: retry, do not fail.
    ssh = device_a.config.ssh
    assert ssh.known_hosts is not None
    relay = _SilentOnce((ssh.host, ssh.port or 22), ssh.bind_interface)
    try:
        pinned = [line.split(" ", 1)[1] for line in ssh.known_hosts.read_text().splitlines()
                  if line.split(" ", 1)[0] == ssh.host]
        assert pinned, f"no host key of {ssh.host} in {ssh.known_hosts}"
        known = tmp_path / "known_hosts"
        known.write_text("".join(f"[127.0.0.1]:{relay.port} {key}\n" for key in pinned))
        config = dataclasses.replace(ssh, host="127.0.0.1", port=relay.port, known_hosts=known,
                                     bind_interface=None, connect_timeout=1.0, reconnect_timeout=10.0)
        transport = SshTransport("emu-a-relayed", config)
        try:
            result = transport.run("id -un", timeout=20)
            assert result.stdout.strip() == (ssh.user or "root")
            assert relay.accepted == 2 and transport.connects == 1  # one stalled contact, then the session
            assert transport.degradation is None  # the retry's longer timeouts ended with it
        finally:
            transport.close()
    finally:
        relay.close()


def test_a_dead_device_still_fails_fast_on_first_contact() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: refused, like a device whose sshd is down
    transport = SshTransport("unit", SshConfig(host="127.0.0.1", port=port, connect_timeout=0.5,
                                               reconnect_timeout=30.0))
    with pytest.raises(ConnectError) as info:
        transport.connect()
    # One attempt, no retrying: a dead device is an infrastructure failure at once, not 30 s later.
    assert not isinstance(info.value, SlowLinkError) and "reconnecting" not in str(info.value), info.value
