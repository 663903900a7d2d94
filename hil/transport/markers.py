"""The marker protocol for running one command over an interactive serial console (pure, no I/O).

A console gives us one byte stream with no framing: the echo of what we typed, prompts, escape
codes, kernel messages and the command's output all arrive mixed. So each command is typed as one
line that prints a begin marker, runs the command, then prints an end marker with the exit status:

    HILB-<token>\\n<output>\\nHILE-<token>:<status>\\n

The typed line builds both markers with printf from two pieces (`HILB-` and the token as separate
arguments), so its echo can never contain a marker. The command itself travels base64-encoded and
is `eval`ed in a subshell, so quotes, newlines and `cd`/`export` cannot leak into the login shell.

stderr is merged into stdout: a console has one stream, so `parse()` returns one text.
"""

from __future__ import annotations

import base64
import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

BEGIN = "HILB-"
END = "HILE-"

# Escape sequences a shell or terminal may emit around prompts (ECMA-48 shapes).
_ANSI = re.compile(
    r"""
    \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)     # OSC (window title...) ended by BEL or ST
  | \x1b\[[0-?]*[\x20-/]*[@-~]            # CSI: colours, erase line, ?2004h bracketed paste
  | \x1b[PX^_][^\x1b]*\x1b\\              # DCS / SOS / PM / APC strings
  | \x1b[\x20-/]*[0-~]                    # two-byte escapes: ESC 7, ESC =, ESC ( B
    """,
    re.VERBOSE,
)
# Whatever trails a marker on its line is noise (a stray escape code, a `\r`): skip to `\n`.
_REST_OF_LINE = re.compile(r"[^\n]*\n")
_STATUS_LINE = re.compile(r"(\d+)[^\n]*\n")
# A printk line as the kernel writes it to a console: `[   12.345678] usb 1-1: new device`.
_KERNEL_LINE = re.compile(r"\[ *\d+\.\d{6}\] \S.*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ParsedOutput:
    """One command's result as read back from the console."""

    output: str  # stdout and stderr merged, `\r\n` normalised to `\n`
    exit_status: int
    end: int  # index in the parsed buffer just past the end marker's line
    kernel_lines: tuple[str, ...] = ()  # console kernel messages dropped from `output`


def new_token() -> str:
    """A random token that ties markers to one command, so stale output is never mistaken for it."""
    return secrets.token_hex(8)


def strip_ansi(text: str) -> str:
    """`text` without terminal escape sequences (CSI, OSC, DCS and two-byte escapes)."""
    return _ANSI.sub("", text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _script(command: str, env: Mapping[str, str] | None, cwd: str | None) -> str:
    """The shell text the subshell evaluates: working directory, environment, then the command."""
    lines = []
    if cwd is not None:
        lines.append(f"cd -- {shlex.quote(cwd)} || exit 1")
    for name, value in (env or {}).items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"environment variable name {name!r} is not a valid shell identifier")
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(command)
    return "\n".join(lines)


def wrap(
    command: str,
    token: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
) -> str:
    """One line (no newline at the end) to type into a POSIX shell (bash, busybox sh) to run `command`.

    Needs `printf` and `base64 -d` on the device. stdin is /dev/null unless `stdin` bytes are given.
    """
    if not re.fullmatch(r"[0-9A-Za-z]+", token):
        raise ValueError(f"marker token must be alphanumeric, got {token!r}")
    payload = _b64(_script(command, env, cwd).encode("utf-8"))
    run = f'( eval "$(printf %s {payload} | base64 -d)" )'
    body = f"{run} </dev/null" if stdin is None else f"printf %s {_b64(stdin)} | base64 -d | {run}"
    # The end marker starts with its own `\n` so output without a final newline stays exact.
    return f"printf '%s%s\\n' {BEGIN} {token}; {body} 2>&1; printf '\\n%s%s:%s\\n' {END} {token} \"$?\""


def _output_span(buffer: str, token: str) -> int | None:
    """Index where the output starts (after the begin marker line), or None if not there yet."""
    at = buffer.find(BEGIN + token)
    if at < 0:
        return None
    line_end = _REST_OF_LINE.match(buffer, at + len(BEGIN) + len(token))
    return None if line_end is None else line_end.end()


def _is_kernel_line(line: str) -> bool:
    return _KERNEL_LINE.fullmatch(line) is not None


def _drop_kernel_lines(output: str) -> tuple[str, tuple[str, ...]]:
    """Remove console kernel messages that interrupted the output (conservative heuristic).

    A line is dropped only when it is a complete line that is exactly `[ seconds.micro] text` (the
    printk console format) AND the output also has other non-empty lines. So a command whose whole
    output is kernel-log lines (`dmesg`, `dmesg | grep usb`) comes back intact, while a message the
    kernel printed in the middle of `cat /sys/...` output is removed. A message that lands in the
    middle of a line, or during a command that prints nothing else, is kept: we cannot tell it apart.
    """
    pieces = output.split("\n")
    complete, last = pieces[:-1], pieces[-1]  # the last piece has no newline: never a printk line
    kernel = [line for line in complete if _is_kernel_line(line)]
    others = [line for line in [*complete, last] if line and not _is_kernel_line(line)]
    if not kernel or not others:
        return output, ()
    kept = [line for line in complete if not _is_kernel_line(line)]
    return "\n".join([*kept, last]), tuple(kernel)


def _normalise(raw: str) -> str:
    """Undo the terminal's `\n` -> `\r\n` (onlcr); a command's own `\r` survives."""
    return raw.replace("\r\n", "\n")


def parse(buffer: str, token: str, *, drop_kernel_lines: bool = True) -> ParsedOutput | None:
    """The command's output and exit status from everything read so far, or None while incomplete.

    Anything before the begin marker (echo, prompts, escape codes) and after the end marker's line
    (the next prompt) is ignored. The output itself is returned as the command wrote it, except
    that `\r\n` becomes `\n` and, if `drop_kernel_lines`, interrupting kernel messages are removed
    (see `_drop_kernel_lines`).
    """
    start = _output_span(buffer, token)
    if start is None:
        return None
    at = buffer.find(END + token + ":", start)
    if at < 0:
        return None
    status = _STATUS_LINE.match(buffer, at + len(END) + len(token) + 1)
    if status is None:  # the digits may still be arriving
        return None
    output = _normalise(buffer[start:at])
    output = output.removesuffix("\n")  # the newline the end marker printed first
    kernel: tuple[str, ...] = ()
    if drop_kernel_lines:
        output, kernel = _drop_kernel_lines(output)
    return ParsedOutput(output, int(status.group(1)), status.end(), kernel)


def partial_output(buffer: str, token: str) -> str:
    """What a command printed so far (for a timeout message), or "" if it never started."""
    start = _output_span(buffer, token)
    if start is None:
        return ""
    end = buffer.find(END + token, start)
    return _normalise(buffer[start : end if end >= 0 else len(buffer)])
