"""Integration tests for hil/transport/serial.py on a real pty with a real shell (socat), no mocks."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.config import Secret, SerialConfig
from hil.deadline import Deadline
from hil.errors import AuthError, CommandTimeout, ConnectError, ConnectionLost, InfraError
from hil.transport.base import Transport
from hil.transport.serial import SerialAuthError, SerialConnectError, SerialTransport

SOCAT = shutil.which("socat")
BASH = "bash --norc --noprofile -i"
pytestmark = pytest.mark.skipif(SOCAT is None, reason="socat is not installed")


@dataclass
class Console:
    path: Path
    process: subprocess.Popen[bytes]

    def transport(self, name: str = "emu-01", **config: object) -> SerialTransport:
        return SerialTransport(name, SerialConfig(port=str(self.path), timeout=5.0, **config))  # type: ignore[arg-type]


StartConsole = Callable[..., Console]


@pytest.fixture
def start_console(tmp_path: Path) -> Iterator[StartConsole]:
    """Start socat serving `program` on a pty linked at tmp_path/<name>; stop it (by pid) at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(program: str = BASH, name: str = "console", greets: bool = True) -> Console:
        link = tmp_path / name
        with (tmp_path / f"{name}.socat.log").open("wb") as errors:
            process = subprocess.Popen(
                [SOCAT, "-d", f"pty,link={link},raw,echo=0", f"exec:{program},pty,stderr,setsid,sigint,sane,ctty"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        started.append(process)
        deadline = Deadline(5.0)
        while not link.exists():
            assert process.poll() is None, f"socat exited: {(tmp_path / f'{name}.socat.log').read_text()}"
            assert not deadline.expired, f"socat did not create {link} within 5 s"
            deadline.sleep(0.01)
        if greets:
            wait_until_greeted(link, deadline)
        else:
            deadline.sleep(0.3)  # let the program set itself up before anything is typed
        return Console(link, process)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_until_greeted(link: Path, deadline: Deadline) -> None:
    """Wait for the program's first output (its prompt) and for it to go quiet.

    socat makes the link before the shell is up; a Ctrl-C that arrives before bash handles SIGINT
    kills the shell, and socat with it. A real console is long up when tests start.
    """
    fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        greeting = b""
        while not deadline.expired:
            readable, _, _ = select.select([fd], [], [], 0.1)
            if readable:
                chunk = os.read(fd, 4096)
                assert chunk, f"{link} hung up: the program behind it exited"
                greeting += chunk
            elif greeting:
                return
        pytest.fail(f"no prompt on {link} within 5 s (read {greeting!r})")
    finally:
        os.close(fd)


@pytest.fixture
def console(start_console: StartConsole) -> Console:
    return start_console()


@pytest.fixture
def transport(console: Console) -> Iterator[SerialTransport]:
    serial_transport = console.transport()
    yield serial_transport
    serial_transport.close()


# --- round trips --------------------------------------------------------------------------------


def test_is_a_transport(transport: SerialTransport) -> None:
    assert isinstance(transport, Transport)  # the protocol Device relies on, checked at run time
    assert transport.run("true", timeout=5).ok


@pytest.mark.parametrize(
    ("command", "output", "status"),
    [
        ("echo hello", "hello\n", 0),
        ("printf 'no newline'", "no newline", 0),
        ("echo one\necho two\n\necho three", "one\ntwo\nthree\n", 0),
        ('echo "it\'s" \'a "quote"\' \\$HOME `echo tick`', 'it\'s a "quote" $HOME tick\n', 0),
        ("echo 'héllo ✓ 日本語'", "héllo ✓ 日本語\n", 0),
        ("echo out; echo err >&2", "out\nerr\n", 0),
        ("sh -c 'exit 3'", "", 3),
        ("exit 4", "", 4),
        ("false", "", 1),
        ("sh -c 'kill -9 $$'", "", 137),
        ("printf 'a\\r\\nb\\rc\\n'", "a\r\nb\rc\n", 0),
        ("cat; echo read-nothing", "read-nothing\n", 0),
        ("printf '\\033[31mred\\033[0m\\n'", "\x1b[31mred\x1b[0m\n", 0),
    ],
)
def test_round_trip_is_exact(transport: SerialTransport, command: str, output: str, status: int) -> None:
    result = transport.run(command, timeout=5)
    assert (result.stdout, result.stderr, result.exit_status) == (output, "", status)
    assert result.command == command
    assert 0 < result.duration < 5


def test_shell_survives_syntax_errors_and_exit(transport: SerialTransport) -> None:
    assert transport.run("if then fi", timeout=5).exit_status == 2
    assert transport.run("exit 9", timeout=5).exit_status == 9
    assert transport.run("echo still here", timeout=5).stdout == "still here\n"


def test_large_output_is_exact(transport: SerialTransport) -> None:
    result = transport.run("seq 1 20000", timeout=20)
    assert result.stdout == "".join(f"{i}\n" for i in range(1, 20001))


def test_env_and_cwd_apply_to_the_command_only(transport: SerialTransport, tmp_path: Path) -> None:
    env = {"A": "x y", "B": 'it\'s\n"q" $HOME'}
    result = transport.run('pwd; printf "%s|" "$A" "$B"', timeout=5, env=env, cwd=str(tmp_path))
    assert result.stdout == f'{tmp_path}\nx y|it\'s\n"q" $HOME|'
    after = transport.run('pwd; echo "${A-unset}"', timeout=5)
    assert after.stdout != f"{tmp_path}\nx y\n" and after.stdout.endswith("unset\n")


def test_missing_cwd_fails_the_command(transport: SerialTransport, tmp_path: Path) -> None:
    result = transport.run("echo should-not-run", timeout=5, cwd=str(tmp_path / "missing"))
    assert result.exit_status == 1 and "should-not-run" not in result.stdout


def test_stdin_bytes_are_passed(transport: SerialTransport) -> None:
    assert transport.run("cat", timeout=5, stdin=b"line 1\nline 2 \xe2\x9c\x93\n").stdout == "line 1\nline 2 ✓\n"
    big = bytes(range(256)) * 800  # 200 KiB, every byte value
    assert transport.run("wc -c", timeout=20, stdin=big).stdout == f"{len(big)}\n"
    digest = hashlib.sha256(big).hexdigest()
    for _ in range(3):  # back to back: each long line must wait for the prompt, not race it
        assert transport.run("sha256sum", timeout=20, stdin=big).stdout == f"{digest}  -\n"


# --- recovery -----------------------------------------------------------------------------------


def test_timeout_interrupts_the_command_and_the_console_recovers(transport: SerialTransport) -> None:
    transport.run("true", timeout=5)  # sync first, so only the command is timed
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        transport.run("echo started; sleep 31.4159", timeout=1)
    waited = time.monotonic() - started
    assert waited < 1 + 2
    assert caught.value.stdout == "started\n"
    message = str(caught.value)
    assert "emu-01" in message and "sleep 31.4159" in message and "(timeout 1 s)" in message
    said = re.search(r"timed out after (\d+\.\d) s", message)
    assert said and 1.0 <= float(said.group(1)) <= waited + 0.05, message  # the time really waited
    assert transport.run("echo ok", timeout=5).stdout == "ok\n"
    assert transport.run("pgrep -f 'sleep 31[.]4159' || echo gone", timeout=5).stdout == "gone\n"


def test_half_typed_line_is_discarded(console: Console) -> None:
    other = os.open(console.path, os.O_RDWR | os.O_NOCTTY)
    os.write(other, b"echo unfinished")
    os.close(other)
    with console.transport() as transport:
        result = transport.run("echo fine", timeout=5)
    assert result.stdout == "fine\n"


def test_reopening_the_port_many_times_keeps_socat_alive(console: Console) -> None:
    for attempt in range(5):
        with console.transport() as transport:
            assert transport.run(f"echo {attempt}", timeout=5).stdout == f"{attempt}\n"
        assert console.process.poll() is None, "socat exited when the client closed the pty"


def test_closed_transport_reopens_on_next_use(transport: SerialTransport) -> None:
    assert transport.run("echo a", timeout=5).stdout == "a\n"
    transport.close()
    assert transport.run("echo b", timeout=5).stdout == "b\n"


def test_console_going_away_is_connection_lost_then_a_clear_error(console: Console) -> None:
    transport = console.transport()
    assert transport.run("true", timeout=5).ok
    console.process.terminate()
    console.process.wait(timeout=5)
    with pytest.raises(ConnectionLost, match="emu-01"):
        transport.run("true", timeout=5)
    with pytest.raises(SerialConnectError, match="hil lab up"):
        transport.run("true", timeout=5)


def test_concurrent_runs_are_serialised(transport: SerialTransport) -> None:
    failures: list[str] = []

    def worker(n: int) -> None:
        for i in range(10):
            got = transport.run(f"echo {n}-{i}", timeout=10).stdout
            if got != f"{n}-{i}\n":
                failures.append(got)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []


# --- difficult consoles -------------------------------------------------------------------------

NOISY_RC = r"""
PS1='\[\e]0;\u@\h: \w\a\]\[\e[01;32m\]\u@\h\[\e[00m\]:\[\e[01;34m\]\w\[\e[00m\]\$ '
PROMPT_COMMAND='printf "\e]2;busy title\e\\"'
bind 'set enable-bracketed-paste on'
readonly PS1 PROMPT_COMMAND  # so they stay noisy even after hil tries to quiet the shell
"""


def test_noisy_colour_prompt_with_titles_and_bracketed_paste(start_console: StartConsole, tmp_path: Path) -> None:
    rc = tmp_path / "noisy.rc"
    rc.write_text(NOISY_RC)
    console = start_console(f"bash --rcfile {rc} --noprofile -i")
    with console.transport() as transport:
        assert transport.run("echo 'a b'; printf c", timeout=5).stdout == "a b\nc"
        assert transport.run("sh -c 'exit 5'", timeout=5).exit_status == 5
        assert b"\x1b]2;busy title" in transport.console_log  # the noise really was there


LOGIN_SCRIPT = """\
#!/bin/bash
# A getty-like login prompt: Ctrl-C only redraws it, the password is read without echo.
trap 'printf "\\n"' INT
while :; do
  printf 'login: '
  IFS= read -r user; rc=$?
  [ "$rc" -eq 1 ] && exit 0
  [ -z "$user" ] && continue
  printf 'Password: '
  stty -echo; IFS= read -r password; stty echo; printf '\\n'
  if [ "$user" = operator ] && [ "$password" = "{password}" ]; then
    exec bash --norc --noprofile -i
  fi
  sleep 0.2
  printf 'Login incorrect\\n'
done
"""
PASSWORD = "s3cret-p4ss"


@pytest.fixture
def login_console(start_console: StartConsole, tmp_path: Path) -> Console:
    script = tmp_path / "login.sh"
    script.write_text(LOGIN_SCRIPT.replace("{password}", PASSWORD))
    script.chmod(0o755)
    return start_console(str(script))


def test_login_prompt_is_answered(login_console: Console, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hil")
    with login_console.transport(login="operator", password=Secret(PASSWORD, "HIL_TEST_PW")) as transport:
        assert transport.run("echo logged in", timeout=5).stdout == "logged in\n"
        assert transport.run("true", timeout=5).ok
        assert b"login: " in transport.console_log
        assert PASSWORD.encode() not in transport.console_log
    assert PASSWORD not in caplog.text


def test_wrong_password_is_an_auth_error(login_console: Console) -> None:
    transport = login_console.transport(login="operator", password=Secret("Not-The-Pa55"))
    with pytest.raises(SerialAuthError, match=r"emu-01.*refused") as caught:
        transport.run("true", timeout=5)
    assert isinstance(caught.value, AuthError) and "Not-The-Pa55" not in str(caught.value)
    transport.close()


def test_login_prompt_without_configured_login(login_console: Console) -> None:
    with pytest.raises(SerialAuthError, match=r"serial\.login"), login_console.transport() as transport:
        transport.run("true", timeout=5)


def test_missing_port_names_device_path_and_remedy(tmp_path: Path) -> None:
    port = tmp_path / "no-such-console"
    transport = SerialTransport("orin-01", SerialConfig(port=str(port)))
    with pytest.raises(SerialConnectError) as caught:
        transport.run("true", timeout=5)
    message = str(caught.value)
    assert "orin-01" in message and str(port) in message and "hil lab up" in message
    assert isinstance(caught.value, ConnectError) and isinstance(caught.value, InfraError)


def test_no_shell_on_the_port_is_a_clear_sync_error(start_console: StartConsole, tmp_path: Path) -> None:
    # `cat` (deaf to Ctrl-C) echoes lines back but never runs them: the markers never come.
    script = tmp_path / "not-a-shell.sh"
    script.write_text("#!/bin/sh\ntrap '' INT\nexec cat\n")
    script.chmod(0o755)
    console = start_console(str(script), greets=False)
    transport = SerialTransport("emu-02", SerialConfig(port=str(console.path), timeout=1.0))
    started = time.monotonic()
    with pytest.raises(SerialConnectError, match=r"emu-02.*no shell answered.*last output") as caught:
        transport.run("true", timeout=5)
    said = re.search(r"after (\d+\.\d) s \(serial\.timeout 1 s", str(caught.value))
    assert said and 0.9 <= float(said.group(1)) <= time.monotonic() - started + 0.05, str(caught.value)
    transport.close()


# --- many in a row (speed itself is measured in benchmarks/roundtrip.py) ------------------------------


def test_back_to_back_commands_stay_in_step(transport: SerialTransport) -> None:
    for i in range(100):
        result = transport.run(f"echo {i}; sh -c 'exit {i % 7}'", timeout=5)
        assert (result.stdout, result.exit_status) == (f"{i}\n", i % 7)


def test_plain_posix_sh_without_line_editing(start_console: StartConsole) -> None:
    console = start_console("sh -i")  # dash on Debian: no readline, no `bind`, no history option
    with console.transport() as transport:
        assert transport.run("echo \"$0\" ok; sh -c 'exit 6'", timeout=5).exit_status == 6
        assert transport.run("printf 'a\\nb'", timeout=5, env={"X": "1"}, stdin=b"").stdout == "a\nb"
