"""Resolving where to connect: devices.toml over ssh_config over defaults, jump chains, and jumps for real."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from hil.config import SshConfig
from hil.device import Device
from hil.errors import ConfigError, HostKeyError
from hil.lab import EmulatedLab
from hil.transport.endpoint import resolve

SSH_CONFIG = """
Host edge-01
  HostName 10.0.0.3
  Port 2200
  User edge
  IdentityFile ~/keys/edge
  ProxyJump bastion
  UserKnownHostsFile /etc/hil/known_hosts /etc/hil/known_hosts2
Host bastion
  HostName 10.0.0.2
  Port 2222
  User jump
Host direct
  HostName 10.0.0.9
  ProxyJump none
  StrictHostKeyChecking no
"""


@pytest.fixture
def ssh_config(tmp_path: Path) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(SSH_CONFIG)
    return path


def test_alias_resolves_like_ssh(ssh_config: Path) -> None:
    ep = resolve(SshConfig(host="edge-01", config_file=ssh_config))
    assert (ep.hostname, ep.port, ep.user) == ("10.0.0.3", 2200, "edge")
    assert ep.key_files == (Path("~/keys/edge").expanduser(),)
    assert ep.known_hosts == (Path("/etc/hil/known_hosts"), Path("/etc/hil/known_hosts2"))
    assert ep.jump is not None and (ep.jump.hostname, ep.jump.port, ep.jump.user) == ("10.0.0.2", 2222, "jump")
    assert ep.strict and ep.jump.strict
    assert str(ep) == "edge@10.0.0.3:2200 via jump@10.0.0.2:2222"


def test_devices_toml_wins_over_ssh_config(ssh_config: Path, tmp_path: Path) -> None:
    ep = resolve(SshConfig(host="edge-01", config_file=ssh_config, port=22, user="root", key=tmp_path / "k",
                           known_hosts=tmp_path / "kh", jump="ops@gate:2022"))
    assert (ep.port, ep.user, ep.key_files, ep.known_hosts) == (22, "root", (tmp_path / "k",), (tmp_path / "kh",))
    assert ep.jump is not None and (ep.jump.hostname, ep.jump.port, ep.jump.user) == ("gate", 2022, "ops")


def test_jump_chains_resolve_hop_by_hop(ssh_config: Path) -> None:
    ep = resolve(SshConfig(host="10.0.0.50", config_file=ssh_config, jump="bastion,edge-01"))
    assert ep.jump is not None and ep.jump.hostname == "10.0.0.3"  # the last hop, nearest the device
    assert ep.jump.jump is not None and ep.jump.jump.hostname == "10.0.0.2"  # the first hop
    assert ep.jump.jump.jump is None


def test_defaults_and_opt_outs(ssh_config: Path) -> None:
    ep = resolve(SshConfig(host="direct", config_file=ssh_config))
    assert (ep.hostname, ep.port, ep.user, ep.jump) == ("10.0.0.9", 22, "root", None)
    assert not ep.strict  # the user's StrictHostKeyChecking no is honoured, as ssh would
    plain = resolve(SshConfig(host="10.0.0.7"))
    assert (plain.hostname, plain.port, plain.user) == ("10.0.0.7", 22, "root")


def test_malformed_jump_is_a_config_error(ssh_config: Path) -> None:
    with pytest.raises(ConfigError, match="jump host"):
        resolve(SshConfig(host="x", config_file=ssh_config, jump="a b"))


# -- for real, in the test lab ----------------------------------------------------------------


def test_through_a_jump_host_with_strict_host_keys(lab: EmulatedLab, tmp_path: Path) -> None:
    """emu-a is the bastion for emu-b; both host keys are checked (the lab pins them)."""
    a, b = lab.inventory.get("emu-a"), lab.inventory.get("emu-b")
    via_a = dataclasses.replace(b, ssh=dataclasses.replace(b.ssh, jump=f"root@{a.ssh.host}"))
    device = Device(via_a)
    try:
        assert device.run("hostname", timeout=10).stdout == "emu-b\n"
        assert len(device.ssh._jumps) == 1
        # The bastion's own key must be pinned too: with an empty known_hosts, the first hop is refused.
        empty = tmp_path / "known_hosts"
        empty.write_text("")
        blind = Device(dataclasses.replace(via_a, ssh=dataclasses.replace(via_a.ssh, known_hosts=empty)))
        with pytest.raises(HostKeyError, match=r"jump host .* host key is unknown"):
            blind.run("true", timeout=10)
    finally:
        device.close()


def test_keys_from_an_ssh_agent(lab: EmulatedLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.02"], check=True)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(lab.config.client_key)], env=env, check=True, timeout=10)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on: the agent must do it
        config = lab.inventory.get("emu-a")
        device = Device(dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, key=None)))
        try:
            assert device.run("echo via agent", timeout=10).stdout == "via agent\n"
        finally:
            device.close()
    finally:
        agent.kill()
        agent.wait()


def test_ssh_config_proxycommand_is_honoured(lab: EmulatedLab, tmp_path: Path) -> None:
    """ssh_config's ProxyCommand carries the session (it was silently ignored): the proxy runs, and the
    device's host key is still checked against the pinned one."""
    a = lab.inventory.get("emu-a")
    marker = tmp_path / "proxied"
    config = tmp_path / "ssh_config"
    config.write_text(f"Host edge-behind-proxy\n  HostName {a.ssh.host}\n"
                      f"  ProxyCommand sh -c 'touch {marker}; exec socat - TCP:%h:%p'\n")
    ssh = dataclasses.replace(a.ssh, host="edge-behind-proxy", config_file=config, bind_interface=None)
    assert resolve(ssh).proxy_command == f"sh -c 'touch {marker}; exec socat - TCP:{a.ssh.host}:22'"
    device = Device(dataclasses.replace(a, ssh=ssh))
    try:
        assert device.run("hostname", timeout=10).stdout == "emu-a\n"
        assert marker.exists()
    finally:
        device.close()
    both = tmp_path / "both"
    both.write_text("Host x\n  ProxyJump bastion\n  ProxyCommand socat - TCP:%h:%p\n")
    with pytest.raises(ConfigError, match="both ProxyJump and ProxyCommand"):
        resolve(SshConfig(host="x", config_file=both))
