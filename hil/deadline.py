"""One object for "how long may this still take", passed down instead of scattered sleeps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Deadline:
    """A point in monotonic time; `None` seconds means no limit."""

    seconds: float | None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(seconds)

    @property
    def expires_at(self) -> float | None:
        return None if self.seconds is None else self.started + self.seconds

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None when unbounded."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - time.monotonic())

    def remaining_or(self, cap: float) -> float:
        """Seconds left, but at most `cap` (for a single wait inside a longer operation)."""
        left = self.remaining()
        return cap if left is None else min(cap, left)

    @property
    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sleep(self, seconds: float) -> None:
        """Sleep at most `seconds`, never past the deadline."""
        time.sleep(self.remaining_or(seconds))
