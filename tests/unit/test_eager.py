"""start_eagerly: coroutines that never wait finish in the call; ones that wait finish in a task."""

from __future__ import annotations

import asyncio

import pytest

from registrar.eager import start_eagerly


async def test_a_coroutine_that_never_waits_completes_without_a_task() -> None:
    done = []

    async def quick() -> None:
        done.append(1)

    assert start_eagerly(quick()) is None
    assert done == [1]


async def test_a_coroutine_that_waits_on_a_future_gets_its_result_in_a_task() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen = []

    async def waits() -> None:
        seen.append("started")
        seen.append(await future)

    task = start_eagerly(waits())
    assert task is not None and seen == ["started"]
    future.set_result("value")
    await task
    assert seen == ["started", "value"]


async def test_a_coroutine_sees_the_exception_of_what_it_awaited() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen = []

    async def handles() -> None:
        try:
            await future
        except KeyError as error:
            seen.append(error.args[0])
        await asyncio.sleep(0)  # a bare yield after resuming
        seen.append("after")

    task = start_eagerly(handles())
    future.set_exception(KeyError("boom"))
    await task
    assert seen == ["boom", "after"]


async def test_cancelling_the_task_cancels_the_coroutine() -> None:
    cleaned = []

    async def sleeps() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(True)

    task = start_eagerly(sleeps())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]
