"""Eager coroutine start: run a coroutine at once, and drive it on only if it has to wait.

An authenticated REGISTER on the in-memory store never waits, yet a task per
request costs a scheduling round trip through the event loop. Python 3.12 has
this built in (asyncio.eager_task_factory); this is the same idea for 3.11.

A coroutine that does wait (on the etcd store, for its batch's transaction) is
then resumed from the done callback of the future it waits on, as a Task would
resume it, but without a Task: no entry in asyncio's set of all tasks, no
context copy, no turn of the loop just to start waiting (bench/instructions.py --store
etcd: 17k instructions less per REGISTER). What it waits on holds it
until then; nothing cancels it, as nothing cancels a request being answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def start_eagerly(coro: Coroutine[Any, Any, None]) -> bool:
    """Run `coro` until it completes (True) or first suspends (False); then drive it on to its end."""
    try:
        awaited = coro.send(None)
    except StopIteration:
        return True
    _wait(coro, awaited)
    return False


def _wait(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    if awaited is None:
        # A bare yield (asyncio.sleep(0)): give the loop one turn.
        asyncio.get_running_loop().call_soon(_resume, coro, None)
        return
    # Future.__await__ set the flag to ask whoever drives the coroutine to wait for
    # the future; that is us, and resuming the coroutine requires the flag off.
    awaited._asyncio_future_blocking = False
    awaited.add_done_callback(lambda future: _resume(coro, future))


def _resume(coro: Coroutine[Any, Any, None], _: object) -> None:
    # Future.__await__ picks up the result or exception of the future itself.
    try:
        awaited = coro.send(None)
    except StopIteration:
        return
    _wait(coro, awaited)
