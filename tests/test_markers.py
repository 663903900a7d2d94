"""Unit tests for hil/transport/markers.py: wrap, parse and strip_ansi of the console marker protocol."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hil.transport.markers import (
    BEGIN,
    END,
    ParsedOutput,
    new_token,
    parse,
    partial_output,
    strip_ansi,
    wrap,
)

TOKEN = "0123456789abcdef"
KERNEL_LINE = re.compile(r"\[ *\d+\.\d{6}\] \S.*")

# What a console prints around a command: prompts, colour, titles, bracketed paste, erase-line,
# a kernel message, a half-typed line cancelled with Ctrl-C.
NOISE = [
    "\x1b[?2004h",
    "\x1b[?2004l\r",
    "\x1b]0;root@orin-01: ~\x07",
    "\x1b]2;title\x1b\\",
    "\x1b[01;32mroot@orin-01\x1b[00m:\x1b[01;34m~\x1b[00m# ",
    "\x1b[K",
    "\x1b[2K\r",
    "[  123.456789] usb 1-1: new high-speed USB device number 2\r\n",
    "login: ",
    "bash-5.2# ",
    "echo unfinished^C\r\n",
    "\r\n",
]
noise = st.lists(st.one_of(st.sampled_from(NOISE), st.text(max_size=20)), max_size=8).map("".join)
outputs = st.text(max_size=300)
statuses = st.integers(min_value=0, max_value=255)


def tty(text: str) -> str:
    """What a terminal with `onlcr` (the default) puts on the wire for `text`."""
    return text.replace("\n", "\r\n")


def console(output: str, status: int, token: str = TOKEN, before: str = "", after: str = "hil$ ") -> str:
    """A console buffer for one wrapped command: noise, the echoed line, markers and output."""
    echo = tty(wrap("some command", token) + "\n")
    framed = tty(f"{BEGIN}{token}\n{output}\n{END}{token}:{status}\n")
    return before + echo + "\x1b[?2004l\r" + framed + after


def no_kernel_lines(text: str) -> bool:
    return not any(KERNEL_LINE.fullmatch(line) for line in text.split("\n"))


# --- new_token / strip_ansi -----------------------------------------------------------------


def test_new_token_is_random_hex() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in tokens)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("\x1b[01;32mgreen\x1b[0m", "green"),
        ("\x1b[?2004hprompt$ \x1b[?2004l", "prompt$ "),
        ("\x1b]0;user@host: ~\x07$ ", "$ "),
        ("\x1b]2;title\x1b\\$ ", "$ "),
        ("abc\x1b[Kdef\x1b[2K", "abcdef"),
        ("\x1b(Bplain\x1b=", "plain"),
        ("no escapes at all\r\n", "no escapes at all\r\n"),
    ],
)
def test_strip_ansi(raw: str, clean: str) -> None:
    assert strip_ansi(raw) == clean


# --- wrap ---------------------------------------------------------------------------------------


def test_wrap_is_one_line_without_literal_markers() -> None:
    line = wrap("echo 'a'\necho \"b\" $HOME `x`\n", TOKEN, {"A": "x\ny'z"}, "/tmp/it's", b"in\n")
    assert "\n" not in line and "\r" not in line
    assert BEGIN + TOKEN not in line
    assert END + TOKEN not in line


def test_wrap_rejects_bad_env_names_and_tokens() -> None:
    with pytest.raises(ValueError, match="not a valid shell identifier"):
        wrap("true", TOKEN, {"A-B": "1"})
    with pytest.raises(ValueError, match="alphanumeric"):
        wrap("true", "to ken")


@given(command=st.text(max_size=200), token=st.text("0123456789abcdef", min_size=8, max_size=32))
def test_wrap_output_is_one_line_and_its_echo_never_parses(command: str, token: str) -> None:
    line = wrap(command, token, {"X": command}, command or None, command.encode())
    assert "\n" not in line and "\r" not in line
    assert BEGIN + token not in line and END + token not in line
    echoed = "hil$ " + tty(line + "\n")
    assert parse(echoed, token) is None
    # Echo with a redraw escape in the middle (readline wrapping a long line) still never parses.
    middle = len(line) // 2
    assert parse(line[:middle] + "\x1b[K\r" + line[middle:] + "\r\n", token) is None


SHELLS = [s for s in ("bash", "sh", "busybox") if shutil.which(s)]


@pytest.mark.parametrize("shell", SHELLS)
def test_wrap_runs_in_a_real_shell(shell: str, tmp_path) -> None:
    command = 'echo "it\'s" \'quoted\'\nprintf \'x\\ty\\n\'\necho "$GREETING" "$(pwd)"\ncat\necho err >&2\nexit 7'
    line = wrap(command, TOKEN, {"GREETING": "hello\nworld 'q'"}, str(tmp_path), b"from stdin\n")
    argv = [shell, "sh", "-c", line] if shell == "busybox" else [shell, "-c", line]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    parsed = parse(done.stdout, TOKEN)
    assert parsed is not None, done
    assert parsed.output == f"it's quoted\nx\ty\nhello\nworld 'q' {tmp_path}\nfrom stdin\nerr\n"
    assert parsed.exit_status == 7


@pytest.mark.parametrize("shell", SHELLS)
def test_wrap_without_stdin_reads_dev_null_and_failed_cd_is_reported(shell: str, tmp_path) -> None:
    line = wrap("cat; echo after", TOKEN, cwd=str(tmp_path / "missing"))
    argv = [shell, "sh", "-c", line] if shell == "busybox" else [shell, "-c", line]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False, input="x")
    parsed = parse(done.stdout, TOKEN)
    assert parsed is not None
    assert parsed.exit_status == 1
    assert "after" not in parsed.output and "missing" in parsed.output


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=200).filter(lambda t: "\x00" not in t), status=statuses)
def test_wrap_round_trips_arbitrary_text_through_sh(text: str, status: int) -> None:
    command = f"printf %s {shlex.quote(text)}; exit {status}"
    done = subprocess.run(["sh", "-c", wrap(command, TOKEN)], capture_output=True, timeout=10, check=False)
    # A pipe has no terminal: apply the `onlcr` a console would, then expect the text back exactly.
    parsed = parse(tty(done.stdout.decode()), TOKEN, drop_kernel_lines=False)
    assert parsed is not None
    assert (parsed.output, parsed.exit_status) == (text, status)


# --- parse --------------------------------------------------------------------------------------


def test_parse_simple_console_exchange() -> None:
    buffer = console("hello\nworld\n", 3, before="\x1b]0;t\x07bash-5.2# ")
    parsed = parse(buffer, TOKEN)
    assert parsed == ParsedOutput("hello\nworld\n", 3, len(buffer) - len("hil$ "))


def test_parse_keeps_output_without_final_newline_and_own_carriage_returns() -> None:
    assert parse(console("no newline", 0), TOKEN).output == "no newline"
    assert parse(console("progress 10%\rprogress 99%\r", 0), TOKEN).output == "progress 10%\rprogress 99%\r"
    assert parse(console("", 0), TOKEN).output == ""
    assert parse(console("\n", 0), TOKEN).output == "\n"


def test_parse_keeps_escape_codes_inside_the_output() -> None:
    assert parse(console("\x1b[31mred\x1b[0m\n", 0), TOKEN).output == "\x1b[31mred\x1b[0m\n"


def test_parse_ignores_other_tokens_and_waits_for_the_status_line() -> None:
    stale = console("old output\n", 1, token="feedfacefeedface")
    assert parse(stale, TOKEN) is None
    assert parse(f"{BEGIN}{TOKEN}\r\nx\r\n\r\n{END}{TOKEN}:12", TOKEN) is None
    assert parse(f"{BEGIN}{TOKEN}\r\nx\r\n\r\n{END}{TOKEN}:12\r\n", TOKEN).exit_status == 12


def test_parse_tolerates_escape_codes_on_marker_lines() -> None:
    buffer = f"\x1b[?2004l\r{BEGIN}{TOKEN}\x1b[K\r\nout\r\n\r\n{END}{TOKEN}:0\x1b[0m\r\n\x1b[?2004hhil$ "
    assert parse(buffer, TOKEN) == ParsedOutput("out\n", 0, buffer.index("\x1b[?2004hhil"))


def test_parse_drops_interrupting_kernel_lines_only() -> None:
    kernel = "[  123.456789] usb 1-1: new high-speed USB device number 2 using xhci_hcd"
    parsed = parse(console(f"42\n{kernel}\n43\n", 0), TOKEN)
    assert parsed.output == "42\n43\n"
    assert parsed.kernel_lines == (kernel,)
    # The whole output is kernel lines: that is `dmesg` itself, keep it.
    dmesg = f"{kernel}\n[    0.000000] Linux version 6.1\n"
    assert parse(console(dmesg, 0), TOKEN).output == dmesg
    # Not quite a kernel line (no microseconds, text before the stamp, no newline): keep.
    for almost in ("[ 12.34] usb\n", "x [  1.000000] usb\n", "a\n[  1.000000] usb"):
        assert parse(console("a\n" + almost, 0), TOKEN).output == "a\n" + almost
    assert parse(console(f"42\n{kernel}\n", 0), TOKEN, drop_kernel_lines=False).output == f"42\n{kernel}\n"


def test_partial_output() -> None:
    assert partial_output("nothing yet", TOKEN) == ""
    assert partial_output(f"echo\r\n{BEGIN}{TOKEN}\r\nstarted\r\nmore", TOKEN) == "started\nmore"
    assert partial_output(console("done\n", 0), TOKEN) == "done\n\n"


@given(before=noise, output=outputs, status=statuses, after=noise)
def test_parse_recovers_exact_output_from_a_noisy_console(before: str, output: str, status: int, after: str) -> None:
    assume(TOKEN not in before + output + after)
    assume(no_kernel_lines(output))
    parsed = parse(console(output, status, before=before, after=after), TOKEN)
    assert parsed is not None
    assert (parsed.output, parsed.exit_status) == (output, status)


@given(before=noise, output=outputs, status=statuses, data=st.data())
def test_parse_returns_none_until_the_end_marker_line_is_complete(
    before: str, output: str, status: int, data: st.DataObject
) -> None:
    assume(TOKEN not in before + output)
    assume(no_kernel_lines(output))
    buffer = console(output, status, before=before)
    complete = parse(buffer, TOKEN)
    assert complete is not None
    cut = data.draw(st.integers(min_value=0, max_value=len(buffer)), label="cut")
    if cut < complete.end:
        assert parse(buffer[:cut], TOKEN) is None
        so_far = partial_output(buffer[:cut], TOKEN).rstrip("\r")
        assert f"{output}\n{END}{TOKEN}".startswith(so_far)
    else:
        assert parse(buffer[:cut], TOKEN) == complete


@given(
    lines=st.lists(st.text(st.characters(blacklist_characters="\n\r"), min_size=1, max_size=30), min_size=1),
    kernel=st.lists(st.tuples(st.integers(0, 10**6), st.text("abcdef: 0123", min_size=1)), min_size=1),
    data=st.data(),
)
def test_parse_drops_kernel_lines_interleaved_with_real_output(
    lines: list[str], kernel: list[tuple[int, str]], data: st.DataObject
) -> None:
    assume(no_kernel_lines("\n".join(lines)) and any(line.strip() for line in lines))
    assume(TOKEN not in "".join(lines))
    mixed = list(lines)
    for seconds, text in kernel:
        at = data.draw(st.integers(0, len(mixed)), label="position")
        mixed.insert(at, f"[{seconds:>5}.{seconds % 10**6:06d}] x{text}")
    parsed = parse(console("\n".join(mixed) + "\n", 0), TOKEN)
    assert parsed is not None
    assert parsed.output == "\n".join(lines) + "\n"
    assert len(parsed.kernel_lines) == len(kernel)


# -- a transcript recorded on a console found in the wild (tests/handbuilt.py: login, colour prompt, ----
# OSC window title, bracketed paste, erase-line, echo before hil quiets it, a kernel message mid-output)

DATA = Path(__file__).parent / "data"


def test_recorded_noisy_console_transcript_parses_exactly() -> None:
    raw = (DATA / "console-edge01.bin").read_bytes().decode()
    expected = json.loads((DATA / "console-edge01.json").read_text())
    parsed = parse(raw, expected["token"])
    assert parsed is not None
    assert (parsed.output, parsed.exit_status) == (expected["output"], expected["status"])
    assert parsed.kernel_lines == ("[   12.345678] usb 1-1: new high-speed USB device number 2 using ehci-pci",)
    # Every prefix that stops before the end marker is complete waits for more.
    cut = raw.index(f"HILE-{expected['token']}")
    assert parse(raw[:cut], expected["token"]) is None
