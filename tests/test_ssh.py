"""The SSH transport against a real sshd in the emulated lab: exactness, timeouts, reconnect, host keys."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from hil.device import Device
from hil.errors import AuthError, CommandTimeout, ConnectError, HostKeyError, InfraError
from hil.lab import EmulatedLab
from hil.lab.host import find_tool, host_run
from hil.transport.ssh import SshTransport
from tests.conftest import GHOST_ADDRESS

pytestmark = pytest.mark.usefixtures("lab")


def test_output_streams_and_status_are_exact(device_a: Device) -> None:
    result = device_a.run("printf 'a\\nb'; printf 'oops' >&2; exit 42", timeout=10)
    assert (result.stdout, result.stderr, result.exit_status) == ("a\nb", "oops", 42)


def test_env_cwd_and_stdin(device_a: Device) -> None:
    result = device_a.run('pwd; echo "$GREETING"; cat', timeout=10, env={"GREETING": "hi there"}, cwd="/etc",
                          stdin=b"from stdin\n")
    assert result.stdout == "/etc\nhi there\nfrom stdin\n"
    assert device_a.run("cat", timeout=10).stdout == ""  # no stdin given: EOF, not a hang


def test_missing_cwd_is_an_error_status(device_a: Device) -> None:
    result = device_a.run("true", timeout=10, cwd="/no/such/dir")
    assert result.exit_status != 0
    assert "/no/such/dir" in result.stderr


def test_large_output_is_complete(device_a: Device) -> None:
    result = device_a.run("head -c 5000000 /dev/zero | tr '\\0' x", timeout=30)
    assert len(result.stdout) == 5_000_000 and set(result.stdout) == {"x"}


def test_concurrent_commands_stay_isolated(device_a: Device) -> None:
    results: dict[int, tuple[str, str, int]] = {}

    def work(i: int) -> None:
        r = device_a.run(f"sleep 0.2; echo out{i}; echo err{i} >&2; exit {i}", timeout=10)
        results[i] = (r.stdout, r.stderr, r.exit_status)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(10)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: (f"out{i}\n", f"err{i}\n", i) for i in range(10)}
    assert time.monotonic() - started < 1.5, "commands ran one after another, not concurrently"


def test_one_connection_serves_every_command(lab: EmulatedLab) -> None:
    sshd_log = lab.config.dir / "emu-b" / "sshd.log"

    def logins() -> int:
        return sshd_log.read_text().count("Accepted publickey")

    before = logins()
    device = Device(lab.inventory.get("emu-b"))
    try:
        for _ in range(50):
            device.run("true", timeout=10)
        assert device.ssh.connects == 1
        assert logins() - before == 1  # the device's sshd agrees: one login for fifty commands
    finally:
        device.close()


def test_timeout_kills_the_command_and_its_children(device_a: Device) -> None:
    tag = uuid.uuid4().hex[:8]
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        device_a.run(f"echo started; sh -c 'sleep 300 #{tag}' & sleep 301 #{tag}\nwait", timeout=1)
    waited = time.monotonic() - started
    assert waited < 3
    assert info.value.stdout == "started\n"
    assert "1 s timeout" in str(info.value)
    said = re.search(r"answered after (\d+\.\d) s", str(info.value))
    assert said and 1.0 <= float(said.group(1)) <= waited + 0.05, str(info.value)  # the time really waited
    left = device_a.run(f"ps -eo args | grep -v grep | grep -c {tag} || true", timeout=10).stdout.strip()
    assert left == "0"
    assert device_a.run("echo still here", timeout=10).stdout == "still here\n"  # same connection goes on
    assert device_a.ssh.connects == 1


def test_reconnects_after_the_link_went_down_and_up(lab: EmulatedLab, device_a: Device) -> None:
    assert device_a.run("echo before", timeout=10).stdout == "before\n"
    lab.set_link("emu-a", up=False)
    try:
        started = time.monotonic()
        with pytest.raises(InfraError):
            device_a.run("echo during", timeout=1)
        assert time.monotonic() - started < 10
    finally:
        lab.set_link("emu-a", up=True)
    assert device_a.run("echo after", timeout=10).stdout == "after\n"
    assert device_a.ssh.connects == 2


def _transport(device: Device, **changes: object) -> SshTransport:
    return SshTransport(device.name, dataclasses.replace(device.config.ssh, **changes))


def test_changed_host_key_is_refused(device_a: Device, tmp_path: Path) -> None:
    host_run([find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")])
    keytype, key = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{device_a.config.ssh.host} {keytype} {key}\n")
    with pytest.raises(HostKeyError, match="does not match") as info:
        _transport(device_a, known_hosts=known).run("true", timeout=5)
    assert "ssh-keygen -R" in str(info.value)


def test_unknown_host_key_is_refused(device_a: Device, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(HostKeyError, match="unknown"):
        _transport(device_a, known_hosts=known).run("true", timeout=5)


def test_wrong_client_key_is_refused(device_a: Device, tmp_path: Path) -> None:
    host_run([find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")])
    with pytest.raises(AuthError, match="authentication refused"):
        _transport(device_a, key=tmp_path / "stranger").run("true", timeout=5)


def test_unreachable_device_fails_fast(device_a: Device) -> None:
    # An unused address inside the lab subnet: the lab bridge owns it, nothing leaves the machine.
    transport = _transport(device_a, host=GHOST_ADDRESS, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ConnectError, match=re.escape(GHOST_ADDRESS)):
        transport.run("true", timeout=5)
    assert time.monotonic() - started < 1.0 + 1.0


def test_put_and_get_report_progress(device_a: Device, tmp_path: Path) -> None:
    data = bytes(range(256)) * 12288  # 3 MiB
    (tmp_path / "up.bin").write_bytes(data)
    remote = f"{device_a.workdir}/transfer-{uuid.uuid4().hex}.bin"
    seen: list[tuple[int, int]] = []
    try:
        device_a.put(tmp_path / "up.bin", remote, progress=lambda done, total: seen.append((done, total)))
        assert seen and seen[-1] == (len(data), len(data))
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        device_a.get(remote, tmp_path / "down.bin")
        assert (tmp_path / "down.bin").read_bytes() == data
    finally:
        device_a.run(f"rm -f {remote}", timeout=10)
