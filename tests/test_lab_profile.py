"""The real-board profile of an emulated device: a non-root login, sudo, a console that logs in, a venv."""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import time
from pathlib import Path

import pytest
import serial

from hil.config import LAB_VENV_ROOT, load_inventory
from hil.device import Device
from hil.errors import AuthError, LabError
from hil.lab import EmulatedLab, users
from hil.lab.host import find_tool, host_run
from hil.transport.ssh import SshTransport
from tests.conftest import TEST_SUDO_PASSWORD_ENV, needs_root, write_devices

pytestmark = needs_root

PROFILE_LAB_TOML = """
[lab]
name = "hilprof"
subnet = "10.77.26.0/24"

[[devices]]
name = "prof-a"
emulated = true
memory = "128MiB"
disk = "16MiB"
python = "{venv}/bin/python"
[devices.ssh]
user = "hilprofa"
"""


def test_login_is_not_root_and_sudo_wants_the_password(device_b: Device) -> None:
    assert device_b.login()[0] != 0
    assert device_b.run("id -un", timeout=10).stdout.strip() == device_b.config.login_user
    refused = device_b.run("sudo -n true", timeout=10)
    assert refused.exit_status != 0 and "password is required" in refused.stderr
    assert device_b.run("id -u", timeout=10, root=True).stdout == "0\n"
    # sudo finds the device's own hostname (no "unable to resolve host" on every call).
    assert "unable to resolve" not in device_b.run("id -u", timeout=10, root=True).stderr


def test_root_cannot_log_in(device_b: Device) -> None:
    as_root = dataclasses.replace(device_b.config.ssh, user="root")
    transport = SshTransport(device_b.name, as_root, device_b.config.python)
    try:
        with pytest.raises(AuthError):
            transport.run("true", timeout=10)
    finally:
        transport.close()


def test_python_is_the_venv_and_python3_lacks_onnxruntime(device_b: Device) -> None:
    facts = device_b.facts(refresh=True)
    assert facts.python_executable == device_b.config.python == f"{device_b.config.venv}/bin/python"
    assert facts.onnxruntime and facts.uid != 0
    plain = device_b.run("command -v python3; python3 -c 'import onnxruntime'", timeout=20)
    assert plain.stdout.strip() == "/usr/bin/python3"
    assert plain.exit_status != 0 and "No module named 'onnxruntime'" in plain.stderr


def test_workdir_and_clock_belong_to_the_login(device_b: Device) -> None:
    owner = device_b.run(f"stat -c %U {device_b.workdir}; stat -c %U \"$FAKETIME_TIMESTAMP_FILE\"", timeout=10)
    assert owner.stdout.split() == [device_b.config.login_user] * 2


def _read_until(port: serial.Serial, pattern: str, timeout: float = 10.0) -> str:
    text, deadline = "", time.monotonic() + timeout
    while not re.search(pattern, text):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {pattern!r}, got {text!r}")
        text += port.read(4096).decode(errors="replace")
    return text


def test_console_asks_for_login_and_password(lab: EmulatedLab, device_b: Device) -> None:
    device_b.close_console()
    port = serial.Serial(str(lab.config.console_path("emu-b")), timeout=0.1)
    user = device_b.config.login_user
    try:
        port.write(b"\x03\n")
        if not re.search(r"login: $", _read_until(port, r"login: $|\$ $")):
            port.write(b"exit\n")  # a shell an earlier test left logged in
            _read_until(port, r"emu-b login: $")
        port.write(f"{user}\n".encode())
        _read_until(port, r"Password: $")
        port.write(b"not-the-password\n")
        text = _read_until(port, r"Login incorrect\s+emu-b login: $")
        assert "not-the-password" not in text  # typed without echo
        port.write(f"{user}\n".encode())
        _read_until(port, r"Password: $")
        port.write(f"{device_b.config.serial.password.reveal()}\n".encode())
        _read_until(port, rf"{user}@emu-b:.*\$ $")
        port.write(b"id -un\n")
        assert re.search(rf"[\r\n]{user}\r\n", _read_until(port, rf"{user}\r\n.*\$ $"))
        port.write(b"exit\n")
        _read_until(port, r"emu-b login: $")  # starts over, as a respawned getty does
    finally:
        port.close()
    # And hil logs itself in when it needs the console, and works as that user there.
    assert device_b.console("id -un", timeout=20).stdout == f"{user}\n"
    assert device_b.config.serial.password.reveal() == os.environ[TEST_SUDO_PASSWORD_ENV]  # the sudo one here


def test_down_removes_users_sudo_rules_and_venvs(tmp_path: Path) -> None:
    venv = LAB_VENV_ROOT / "hilprof" / "custom" / "ort-venv"  # a path the login can reach (tmp_path is 0700)
    inventory = load_inventory(write_devices(tmp_path, PROFILE_LAB_TOML.format(venv=venv)))
    lab = EmulatedLab(inventory)
    try:
        lab.up()
        entry = pwd.getpwnam("hilprofa")
        assert entry.pw_gecos == users.comment(lab.config, "prof-a")
        assert users.sudoers_file(lab.config, "prof-a").read_text().endswith("hilprofa ALL=(ALL:ALL) NOPASSWD: ALL\n")
        assert (venv / "bin" / "python").exists()
        device = Device(inventory.get("prof-a"))
        try:
            assert device.run("id -u", timeout=10, root=True).stdout == "0\n"  # passwordless sudo
            assert device.console("id -un", timeout=20).stdout == "hilprofa\n"  # a made-up console password
        finally:
            device.close()
        # A device gone from devices.toml loses its login at the next `up`.
        EmulatedLab(load_inventory(write_devices(tmp_path, "[lab]\nname = \"hilprof\"\n"
                                                            "subnet = \"10.77.26.0/24\"\n"),
                                   require_devices=False)).up()
        with pytest.raises(KeyError):
            pwd.getpwnam("hilprofa")
        assert not users.sudoers_file(lab.config, "prof-a").exists()
        lab.up()
    finally:
        lab.down()
    with pytest.raises(KeyError):
        pwd.getpwnam("hilprofa")
    assert not users.sudoers_file(lab.config, "prof-a").exists() and not venv.exists()


def test_a_user_the_lab_did_not_make_is_left_alone(tmp_path: Path) -> None:
    host_run([find_tool("useradd"), "--no-create-home", "--comment", "someone else", "hilprofa"])
    try:
        lab = EmulatedLab(load_inventory(write_devices(tmp_path, PROFILE_LAB_TOML.format(venv=tmp_path / "v"))))
        try:
            with pytest.raises(LabError, match=r"ssh.user 'hilprofa' already exists on this machine"):
                lab.up()
        finally:
            lab.down()
        assert pwd.getpwnam("hilprofa").pw_gecos == "someone else"  # not removed by down either
    finally:
        host_run([find_tool("userdel"), "hilprofa"], check=False)


def test_a_venv_the_login_cannot_reach_is_refused_with_the_reason(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    lab = EmulatedLab(load_inventory(write_devices(tmp_path, PROFILE_LAB_TOML.format(venv=closed / "venv"))))
    try:
        with pytest.raises(LabError, match=rf"venv {closed}/venv lies in a directory its non-root login "
                                           r"cannot enter \(/tmp/\S+ has mode drwx------\)"):
            lab.up()
    finally:
        lab.down()
    assert not (closed / "venv").exists()


def test_sessions_preload_a_libfaketime_the_login_can_read(lab: EmulatedLab, device_b: Device) -> None:
    # The lab's own copy, not the one in hil's venv: a checkout in a 0700 directory (mktemp -d, a home)
    # would make every command of the non-root login print an ld.so error and lose its clock.
    result = device_b.run('printf %s "$LD_PRELOAD"; test -r "$LD_PRELOAD"', timeout=10)
    assert result.ok and result.stdout.startswith(f"{lab.config.dir}/"), result
    assert "ld.so" not in result.stderr
    assert device_b.console("echo quiet", timeout=20).stdout == "quiet\n"  # no ld.so error on the console
