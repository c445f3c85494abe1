"""registrar.ratelog: one line per interval with a count of those held back; exceptions summed up without their text."""

from __future__ import annotations

import logging

import pytest

from registrar.ratelog import RateLimitedLog, exception_summary
from tests.helpers import FakeClock


def test_one_line_per_interval_and_the_next_says_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.ratelog")
    clock = FakeClock(100.0)
    log = RateLimitedLog(logging.getLogger("test.ratelog"), logging.WARNING, interval=10.0, clock=clock)
    log("bad message from %s", "a")
    clock.advance(4)
    log("bad message from %s", "b")
    log("bad message from %s", "c")
    clock.advance(6)
    log("bad message from %s", "d")  # 10 s after the first: goes out, with the count
    clock.advance(10)
    log("bad message from %s", "e")  # nothing held back since: no count
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.WARNING, "bad message from a"),
        (logging.WARNING, "bad message from d (and 2 more like it in the last 10 s)"),
        (logging.WARNING, "bad message from e"),
    ]


def test_a_level_not_logged_costs_nothing_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.ratelog")
    log = RateLimitedLog(logging.getLogger("test.ratelog"), logging.DEBUG, clock=FakeClock())
    log("dropped %s", "x")
    assert caplog.records == []


def _raise_with_wire_text() -> None:
    raise ValueError('bad Via "\r\nX-Injected: y')


def test_an_exception_is_summed_up_as_its_type_and_place_without_its_text() -> None:
    with pytest.raises(ValueError) as caught:
        _raise_with_wire_text()
    summary = exception_summary(caught.value)
    line = _raise_with_wire_text.__code__.co_firstlineno + 1
    assert summary == f"ValueError in unit/test_ratelog.py:{line} (_raise_with_wire_text)"
    assert exception_summary(KeyError("x")) == "KeyError"  # never raised: no place to name
