"""Eager coroutine start: run a coroutine at once, and make a task of it only if it has to wait.

An authenticated REGISTER on the in-memory store never waits, yet a task per
request costs a scheduling round trip through the event loop. Python 3.12 has
this built in (asyncio.eager_task_factory); this is the same idea for 3.11.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coro` until it completes or first suspends; return the task that finishes it, if any."""
    try:
        awaited = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_resume(coro, awaited))


async def _resume(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    """Drive a started coroutine on: wait for what it waits on, then hand it the outcome."""
    while True:
        try:
            if awaited is None:
                await asyncio.sleep(0)  # a bare yield: give the loop one turn
            else:
                # The future still carries the flag it set when it yielded to us;
                # a Task clears it on receipt, and awaiting it again requires that.
                awaited._asyncio_future_blocking = False
                await awaited
        except BaseException as error:  # including cancellation at shutdown: the coroutine decides
            try:
                awaited = coro.throw(error)
            except StopIteration:
                return
        else:
            try:
                awaited = coro.send(None)
            except StopIteration:
                return
