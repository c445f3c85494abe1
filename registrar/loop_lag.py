"""Event-loop lag: how late the registrar's event loop wakes a timer, the measure of what waits behind its work.

Everything a registrar does runs on one event loop, so a request that waits
for etcd (an INVITE's lookup, a REGISTER's write) waits, once etcd has
answered, for whatever the loop is doing then: a burst of datagrams, a
garbage collection. How late a timer fires says how long that is, whatever
the cause; a lag of tens of milliseconds that persists means a busy core or
long collections, and every message waits as long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Ten wakeups a second: a few microseconds of CPU each, and a stall of 10 ms or more is seen.
LAG_INTERVAL = 0.1


async def measure(observe: Callable[[float], None], interval: float = LAG_INTERVAL) -> None:
    """Forever: sleep `interval`, and `observe` how many seconds later than asked the loop woke."""
    while True:
        asked = time.monotonic() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, time.monotonic() - asked))
