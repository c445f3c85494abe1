"""Test doubles shared by the unit tests."""

from __future__ import annotations


class FakeClock:
    """A clock that stands still until told: a mutable float, callable like time.time."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
