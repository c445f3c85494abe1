"""Unit tests for the event-loop lag measure: a loop kept busy shows as lag, an idle one as next to none."""

from __future__ import annotations

import asyncio
import time

from registrar import loop_lag
from registrar.metrics import Metrics


async def test_a_busy_loop_is_seen_as_late_wakeups_and_an_idle_one_is_not() -> None:
    lags: list[float] = []
    measuring = asyncio.create_task(loop_lag.measure(lags.append, interval=0.01))
    try:
        await asyncio.sleep(0.05)  # idle: a few wakeups, each about on time
        idle = list(lags)
        time.sleep(0.08)  # the loop's one thread kept busy, as a burst of datagrams or a collection would
        await asyncio.sleep(0.03)
    finally:
        measuring.cancel()
    assert idle, "no wakeup measured while idle"
    assert min(idle) < 0.02  # a shared machine may be late now and then, not every time
    assert max(lags[len(idle):]) >= 0.07  # the wakeup due during the block came at its end


def test_the_lag_is_exported_as_a_histogram() -> None:
    metrics = Metrics()
    metrics.loop_lag.observe(0.003)
    registry = metrics.registry
    assert registry.get_sample_value("sipreg_event_loop_lag_seconds_count") == 1
    assert registry.get_sample_value("sipreg_event_loop_lag_seconds_bucket", {"le": "0.0025"}) == 0
    assert registry.get_sample_value("sipreg_event_loop_lag_seconds_bucket", {"le": "0.005"}) == 1
