"""Unit tests for hil/deadline.py.

Most tests run on a fake clock, so they are exact and instant; a few use the real clock with small
durations and loose bounds (these machines are noisy).
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hil.deadline
from hil.deadline import Deadline


class FakeClock:
    """Stands in for the `time` module inside hil.deadline: monotonic() and sleep() on a fake timeline."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"time.sleep({seconds}) would raise ValueError"
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(hil.deadline, "time", fake)
    return fake


def deadline_on(clock: FakeClock, seconds: float | None) -> Deadline:
    # `started` defaults to the real time.monotonic (bound when the class was defined), so pass it.
    return Deadline(seconds, started=clock.monotonic())


# ---------------------------------------------------------------------------------------------
# Fake clock: exact behaviour


def test_remaining_counts_down_to_zero(clock: FakeClock) -> None:
    deadline = deadline_on(clock, 10.0)
    assert deadline.expires_at == pytest.approx(1010.0)
    assert deadline.remaining() == pytest.approx(10.0)
    clock.advance(4.0)
    assert deadline.remaining() == pytest.approx(6.0)
    assert not deadline.expired
    clock.advance(6.0)
    assert deadline.remaining() == 0.0
    assert deadline.expired
    clock.advance(100.0)
    assert deadline.remaining() == 0.0
    assert deadline.expired


def test_elapsed(clock: FakeClock) -> None:
    deadline = deadline_on(clock, 1.0)
    clock.advance(2.5)
    assert deadline.elapsed() == pytest.approx(2.5)  # elapsed keeps counting past the deadline


def test_unbounded(clock: FakeClock) -> None:
    deadline = deadline_on(clock, None)
    assert deadline.expires_at is None
    assert deadline.remaining() is None
    clock.advance(1e9)
    assert deadline.remaining() is None
    assert not deadline.expired
    assert deadline.remaining_or(3.0) == 3.0


def test_remaining_or_caps(clock: FakeClock) -> None:
    deadline = deadline_on(clock, 10.0)
    assert deadline.remaining_or(2.0) == 2.0
    assert deadline.remaining_or(30.0) == pytest.approx(10.0)
    clock.advance(9.0)
    assert deadline.remaining_or(2.0) == pytest.approx(1.0)
    clock.advance(5.0)
    assert deadline.remaining_or(2.0) == 0.0


def test_zero_and_negative_deadlines_are_expired_at_once(clock: FakeClock) -> None:
    for seconds in (0.0, -5.0):
        deadline = deadline_on(clock, seconds)
        assert deadline.expired
        assert deadline.remaining() == 0.0
        assert deadline.remaining_or(1.0) == 0.0


def test_sleep_stops_at_the_deadline(clock: FakeClock) -> None:
    deadline = deadline_on(clock, 1.0)
    deadline.sleep(0.25)
    assert clock.sleeps == [pytest.approx(0.25)]
    deadline.sleep(5.0)
    assert clock.sleeps[-1] == pytest.approx(0.75)
    assert deadline.expired
    assert clock.now == pytest.approx(1001.0)
    deadline.sleep(5.0)  # after the deadline: no sleep at all (and never a negative one)
    assert clock.sleeps[-1] == 0.0
    assert clock.now == pytest.approx(1001.0)


def test_sleep_unbounded_sleeps_the_full_time(clock: FakeClock) -> None:
    deadline_on(clock, None).sleep(7.0)
    assert clock.sleeps == [7.0]


def test_after_is_the_constructor(clock: FakeClock) -> None:
    deadline = Deadline.after(3.0)
    assert isinstance(deadline, Deadline)
    assert deadline.seconds == 3.0
    assert Deadline.after(None).remaining() is None


@given(
    seconds=st.one_of(st.none(), st.floats(-1e6, 1e6)),
    steps=st.lists(st.floats(0, 1e5), max_size=20),
    cap=st.floats(0, 1e6),
)
@settings(max_examples=200, deadline=None)
def test_remaining_is_monotone_and_never_negative(seconds: float | None, steps: list[float], cap: float) -> None:
    clock = FakeClock()
    original = hil.deadline.time
    hil.deadline.time = clock  # type: ignore[assignment]  # (monkeypatch is function-scoped, hypothesis is not)
    try:
        deadline = deadline_on(clock, seconds)
        previous = deadline.remaining()
        for step in steps:
            clock.advance(step)
            left = deadline.remaining()
            if seconds is None:
                assert left is None
                assert not deadline.expired
                assert deadline.remaining_or(cap) == cap
                continue
            assert 0.0 <= left <= previous
            assert deadline.expired == (left == 0.0)
            assert deadline.remaining_or(cap) == min(cap, left)
            previous = left
    finally:
        hil.deadline.time = original  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# Real clock: loose bounds only


def test_real_remaining_decreases() -> None:
    deadline = Deadline.after(5.0)
    first = deadline.remaining()
    time.sleep(0.02)
    second = deadline.remaining()
    assert 0.0 < second < first <= 5.0
    assert deadline.elapsed() >= 0.02
    assert not deadline.expired


def test_real_expires() -> None:
    deadline = Deadline.after(0.05)
    time.sleep(0.1)
    assert deadline.expired
    assert deadline.remaining() == 0.0
    assert deadline.remaining_or(1.0) == 0.0


def test_real_sleep_never_past_the_deadline() -> None:
    deadline = Deadline.after(0.05)
    start = time.monotonic()
    deadline.sleep(10.0)
    took = time.monotonic() - start
    assert deadline.expired
    assert took < 2.0  # asked for 10 s; the deadline cut it to ~0.05 s (generous bound for a busy machine)
    start = time.monotonic()
    deadline.sleep(10.0)  # already expired: returns at once
    assert time.monotonic() - start < 1.0


def test_real_sleep_short_of_the_deadline() -> None:
    deadline = Deadline.after(10.0)
    start = time.monotonic()
    deadline.sleep(0.05)
    took = time.monotonic() - start
    assert took >= 0.04
    assert took < 2.0
    assert not deadline.expired
