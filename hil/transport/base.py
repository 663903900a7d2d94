"""What every transport offers, and the result of one command."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# Called as progress(bytes_done, bytes_total) while a file moves.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Result:
    """One finished command: exact output, exit status and how long it took on the wire."""

    command: str
    stdout: str
    stderr: str
    exit_status: int
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@runtime_checkable
class Transport(Protocol):
    """A channel to one device that runs commands (SSH and the serial console both are one; Device picks
    which). Implementations keep their connection open between calls."""

    def run(
        self,
        command: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Result: ...

    def close(self) -> None: ...
