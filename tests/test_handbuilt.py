"""The hand-built device is what tests/handbuilt.py says it is, checked with the OpenSSH client and pyserial only."""

from __future__ import annotations

import re
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import serial

from tests.handbuilt import KERNEL_MESSAGE, HandBuilt

# OSC (window title) and CSI sequences: colours, erase-line, bracketed paste.
ANSI = re.compile(r"\x1b\][^\x07]*\x07|\x1b\[[0-?]*[ -/]*[@-~]")
SHELL_PROMPT = r"hiledge@edge-01:~\$ $"
LOGIN_PROMPT = r"edge-01 login: $"


def ssh(device: HandBuilt, *args: str, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(device.ssh_config), "-o", "BatchMode=yes", *args],
                          input=input, capture_output=True, text=True, timeout=timeout)


def test_target_through_the_bastion(handbuilt: HandBuilt) -> None:
    proc = ssh(handbuilt, "edge-01", "hostname; id -un; id -u; hostname -I")
    assert proc.returncode == 0, proc.stderr
    hostname, user, uid, addresses = proc.stdout.split("\n")[:4]
    assert (hostname, user, addresses.strip()) == ("edge-01", "hiledge", "10.77.5.3")
    assert uid != "0"
    assert ssh(handbuilt, "edge-bastion", "hostname").stdout.strip() == "edge-bastion"


def test_sftp_through_the_bastion(handbuilt: HandBuilt) -> None:
    proc = subprocess.run(["sftp", "-F", str(handbuilt.ssh_config), "-o", "BatchMode=yes", "-b", "-", "edge-01"],
                          input="pwd\n", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "/home/hiledge" in proc.stdout


def test_target_refuses_the_host(handbuilt: HandBuilt) -> None:
    started = time.monotonic()
    proc = ssh(handbuilt, "-o", "ConnectTimeout=2", "-p", "2200", "-i", str(handbuilt.key), "hiledge@10.77.5.3", "true")
    assert proc.returncode == 255
    assert "timed out" in proc.stderr  # dropped, not refused: only the bastion gets through
    assert time.monotonic() - started >= 1.5


def test_host_keys_are_pinned(handbuilt: HandBuilt, tmp_path: Path) -> None:
    lines = handbuilt.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["[10.77.5.2]:2222", "[10.77.5.3]:2200"]
    empty = tmp_path / "known_hosts"
    empty.touch()
    proc = ssh(handbuilt, "-o", f"UserKnownHostsFile={empty}", "edge-bastion", "true")
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_sudo_needs_the_password(handbuilt: HandBuilt) -> None:
    proc = ssh(handbuilt, "edge-01", "sudo -n true")
    assert proc.returncode != 0
    assert "password is required" in proc.stderr
    proc = ssh(handbuilt, "edge-01", "sudo -S -p '' id -u", input=handbuilt.password + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


def test_python_is_the_venv(handbuilt: HandBuilt) -> None:
    check = "import numpy, onnxruntime; print(onnxruntime.__version__)"
    proc = ssh(handbuilt, "edge-01", f"{handbuilt.python} -c '{check}'")
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+\s*", proc.stdout)
    # The python3 on the user's PATH is the system one, without onnxruntime.
    proc = ssh(handbuilt, "edge-01", "echo $PATH; command -v python3; python3 -c 'import onnxruntime'")
    path, python3 = proc.stdout.split("\n")[:2]
    assert "/work/main" not in path and ".venv" not in path and "pyenv" not in path
    assert python3 == "/usr/bin/python3"
    assert proc.returncode != 0 and "No module named 'onnxruntime'" in proc.stderr


def test_workdir_is_a_small_tmpfs_of_the_target(handbuilt: HandBuilt) -> None:
    proc = ssh(handbuilt, "edge-01", "stat -f -c '%T %b %S' ~/hil && touch ~/hil/x && rm ~/hil/x")
    assert proc.returncode == 0, proc.stderr
    fstype, blocks, block_size = proc.stdout.split()
    assert fstype == "tmpfs" and int(blocks) * int(block_size) == 64 * 1024 * 1024


def test_devices_toml(handbuilt: HandBuilt) -> None:
    [device] = tomllib.loads(handbuilt.devices_toml.read_text())["devices"]
    assert device["name"] == "edge-01" and device["python"] == handbuilt.python
    assert device["ssh"] == {"host": "edge-01", "config_file": str(handbuilt.ssh_config),
                             "known_hosts": str(handbuilt.known_hosts), "connect_timeout": 5}
    assert device["become"] == {"method": "sudo", "password": "${HIL_EDGE_SUDO_PASSWORD}"}
    assert device["serial"]["port"] == str(handbuilt.console)
    assert handbuilt.console.exists() and handbuilt.key.stat().st_mode & 0o077 == 0


class Console:
    def __init__(self, port: Path) -> None:
        self.port = serial.Serial(str(port), timeout=0.05)
        self.raw = b""
        self.last = b""  # the raw bytes the last expect() consumed

    def send(self, text: str) -> None:
        self.port.write(text.encode())

    def expect(self, pattern: str, timeout: float = 5.0) -> str:
        """Reads until `pattern` matches the text without escape codes; returns that text, and starts over."""
        deadline = time.monotonic() + timeout
        while True:
            self.raw += self.port.read(4096)
            text = ANSI.sub("", self.raw.decode(errors="replace"))
            if re.search(pattern, text, re.DOTALL):
                self.last, self.raw = self.raw, b""
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout} s for {pattern!r}, got {self.raw!r}")

    def logged_out(self) -> None:
        """At the login prompt, whatever an earlier user left (a failed test may leave a shell)."""
        self.send("\r")  # what was printed before we opened the port is gone, as on a real line
        # A shell left logged in: the user's noisy prompt, or the quiet one hil sets (`hil$ `).
        if not re.search(LOGIN_PROMPT, self.expect(f"{LOGIN_PROMPT}|{SHELL_PROMPT}|hil\\$ $")):
            self.send("exit\r")
            self.expect(LOGIN_PROMPT)

    def login(self, password: str) -> None:
        self.logged_out()
        self.send("hiledge\r")
        self.expect(r"Password: $")
        self.send(password + "\r")
        self.expect(SHELL_PROMPT)

    def close(self) -> None:
        self.port.close()


def test_serial_console_login(handbuilt: HandBuilt) -> None:
    console = Console(handbuilt.console)
    try:
        console.logged_out()
        console.send("hiledge\r")
        console.expect(r"Password: $")
        console.send("not-the-password\r")
        text = console.expect(r"Login incorrect\s+" + LOGIN_PROMPT)
        assert "not-the-password" not in text  # typed without echo
        console.send("hiledge\r")
        console.expect(r"Password: $")
        console.send(handbuilt.password + "\r")
        console.expect(SHELL_PROMPT)
        assert handbuilt.password.encode() not in console.last
        console.send("echo hi\r")
        console.expect(r"echo hi\r\n.*\bhi\r\n.*" + SHELL_PROMPT)
        # The kernel has its say about 2 s after the login, prompt or not.
        console.expect(re.escape(KERNEL_MESSAGE), timeout=5)
        console.send("hostname; id -un\r")
        console.expect(r"[\r\n]edge-01\r\nhiledge\r\n.*" + SHELL_PROMPT)
        console.send("exit\r")
        console.expect(r"logout.*" + LOGIN_PROMPT)  # back at the login prompt, as after a getty respawn
    finally:
        console.close()


def test_serial_console_prompt_is_noisy(handbuilt: HandBuilt) -> None:
    console = Console(handbuilt.console)
    try:
        console.login(handbuilt.password)
        raw = console.last
        assert b"\x1b]0;hiledge@edge-01: ~\x07" in raw  # window title
        assert b"\x1b[?2004h" in raw  # bracketed paste
        assert b"\x1b[K" in raw and b"\x1b[01;32m" in raw  # erase-line, colours
        console.send("exit\r")
        console.expect(LOGIN_PROMPT)
    finally:
        console.close()


@pytest.mark.parametrize("field", ["directory", "ssh_config", "known_hosts", "key", "devices_toml"])
def test_files_are_in_the_directory(handbuilt: HandBuilt, field: str) -> None:
    path = getattr(handbuilt, field)
    assert path.exists() and (path == handbuilt.directory or path.parent == handbuilt.directory)
