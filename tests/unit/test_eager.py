"""start_eagerly: coroutines that never wait finish in the call; ones that wait are resumed by what they await."""

from __future__ import annotations

import asyncio

from registrar.eager import start_eagerly


async def test_a_coroutine_that_never_waits_completes_in_the_call() -> None:
    done = []

    async def quick() -> None:
        done.append(1)

    assert start_eagerly(quick()) is True
    assert done == [1]


async def test_a_coroutine_that_waits_on_a_future_gets_its_result_without_a_task() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen = []

    async def waits() -> None:
        seen.append("started")
        seen.append(await future)
        finished.set_result(None)

    tasks = asyncio.all_tasks()
    assert start_eagerly(waits()) is False
    assert seen == ["started"] and asyncio.all_tasks() == tasks
    future.set_result("value")
    await finished
    assert seen == ["started", "value"]


async def test_a_coroutine_sees_the_exception_of_what_it_awaited_and_may_wait_again() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen = []

    async def handles() -> None:
        try:
            await future
        except KeyError as error:
            seen.append(error.args[0])
        await asyncio.sleep(0)  # a bare yield after resuming
        await asyncio.sleep(0.001)  # a timer's future
        seen.append("after")
        finished.set_result(None)

    start_eagerly(handles())
    future.set_exception(KeyError("boom"))
    await finished
    assert seen == ["boom", "after"]
