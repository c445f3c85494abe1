"""The real-etcd harness (tests/etcd_server.py) and the aetcd behaviour the etcd store relies on.

What these pin down, on etcd 3.4 (Debian bookworm) with aetcd 1.0 over grpcio:
- etcd down (stopped or killed): every request fails at once with aetcd's ConnectionFailedError
  (gRPC UNAVAILABLE), with or without a client timeout; creating a watch fails the same way.
- an open watch ends with ConnectionFailedError the moment etcd goes away.
- etcd back on the same address: the same Client object works again without reconnect code; gRPC's
  channel retries by itself, on its reconnect backoff (1 s, then x1.6 up to 120 s by default), so the
  first success may lag the restart by up to that backoff. A new watch on the same Client works.
- etcd hung (SIGSTOP): requests do not fail fast; with a client timeout they raise ConnectionTimeoutError
  (gRPC DEADLINE_EXCEEDED), without one they wait forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aetcd
import pytest
import uvloop
from aetcd.exceptions import ConnectionFailedError, ConnectionTimeoutError

from tests.etcd_server import EtcdServer

pytestmark = pytest.mark.integration

KEY = b"/sipreg-test/key"
PREFIX = b"/sipreg-test/"


def client_for(etcd: EtcdServer, **kwargs) -> aetcd.Client:
    host, port = etcd.endpoint.rsplit(":", 1)
    return aetcd.Client(host=host, port=int(port), **kwargs)


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[aetcd.Client]:
    async with client_for(etcd) as connected:
        yield connected


async def value(client: aetcd.Client, key: bytes = KEY) -> bytes | None:
    result = await client.get(key)
    return None if result is None else result.value


async def until_it_answers(client: aetcd.Client, within: float = 10) -> list[Exception]:
    """Retry a get until it succeeds; the errors seen on the way. gRPC's reconnect backoff sets the wait."""
    errors: list[Exception] = []
    deadline = time.monotonic() + within
    while True:
        try:
            await client.get(KEY)
            return errors
        except Exception as error:  # noqa: BLE001 - collected and checked by the caller
            errors.append(error)
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd did not answer within {within} s; last error {error!r}") from error
        await asyncio.sleep(0.02)


async def next_event(watch, within: float = 5):
    async def first():
        async for event in watch:
            return event

    return await asyncio.wait_for(first(), within)


def test_the_server_listens_on_loopback_ports_picked_at_run_time(etcd: EtcdServer, tmp_path: Path) -> None:
    host, port = etcd.endpoint.split(":")
    assert host == "127.0.0.1" and int(port) == etcd.client_port != etcd.peer_port
    assert etcd.url == f"etcd://127.0.0.1:{etcd.client_port}"
    assert etcd.running and etcd.healthy()
    assert etcd.data_dir.is_relative_to(tmp_path) and etcd.log_path.is_relative_to(tmp_path)


async def test_put_and_get(client: aetcd.Client) -> None:
    await client.put(KEY, b"hello")
    assert await value(client) == b"hello"
    assert await value(client, PREFIX + b"absent") is None


@pytest.mark.parametrize("kill", [False, True], ids=["stop", "kill"])
async def test_a_key_survives_a_restart_on_the_same_address(etcd: EtcdServer, client: aetcd.Client, kill: bool) -> None:
    endpoint = etcd.endpoint
    await client.put(KEY, b"kept")
    # The client's connection is open: etcd closes it first, leaving it in TIME_WAIT on etcd's port.
    # etcd listens with SO_REUSEADDR, so it binds that port again at once.
    etcd.restart(kill=kill)
    assert etcd.endpoint == endpoint and etcd.healthy()
    await until_it_answers(client)
    assert await value(client) == b"kept"
    async with client_for(etcd) as fresh:
        assert await value(fresh) == b"kept"


async def test_while_etcd_is_down_requests_fail_fast_and_the_same_client_works_once_it_is_back(
    etcd: EtcdServer, client: aetcd.Client
) -> None:
    await client.put(KEY, b"before")
    etcd.stop()

    started = time.monotonic()
    with pytest.raises(ConnectionFailedError):
        await client.get(KEY)
    with pytest.raises(ConnectionFailedError):
        await client.put(KEY, b"lost")
    with pytest.raises(ConnectionFailedError):
        await client.watch_prefix(PREFIX)
    assert time.monotonic() - started < 1, "refused connections fail at once, no timeout involved"

    etcd.start()
    errors = await until_it_answers(client)
    assert all(isinstance(error, ConnectionFailedError) for error in errors), errors
    assert await value(client) == b"before"
    await client.put(KEY, b"after")
    assert await value(client) == b"after"


async def test_an_open_watch_raises_connection_failed_when_etcd_stops_and_a_new_one_works_after(
    etcd: EtcdServer, client: aetcd.Client
) -> None:
    watch = await client.watch_prefix(PREFIX)
    await client.put(KEY, b"one")
    assert (await next_event(watch)).kv.value == b"one"

    etcd.kill()
    with pytest.raises(ConnectionFailedError):
        await next_event(watch, within=2)

    etcd.start()
    await until_it_answers(client)
    watch = await client.watch_prefix(PREFIX)
    await client.put(KEY, b"two")
    assert (await next_event(watch)).kv.value == b"two"
    await watch.cancel()


async def test_a_hung_etcd_times_out_with_connection_timeout(etcd: EtcdServer) -> None:
    async with client_for(etcd, timeout=1) as client:
        await client.put(KEY, b"v")
        etcd.pause()
        try:
            started = time.monotonic()
            with pytest.raises(ConnectionTimeoutError):
                await client.get(KEY)
            assert 0.9 < time.monotonic() - started < 10  # it gives up, after its timeout (generous: shared CPUs)
        finally:
            etcd.resume()
        assert await value(client) == b"v"


def test_aetcd_runs_under_uvloop(etcd: EtcdServer) -> None:
    """The registrar runs on uvloop: put, get and a watch work there as on the default loop."""

    async def scenario() -> tuple[bytes | None, bytes, type]:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with client_for(etcd) as client:
            watch = await client.watch_prefix(PREFIX)
            await client.put(KEY, b"on uvloop")
            got = await value(client)
            event = await next_event(watch)
            await watch.cancel()
            return got, event.kv.value, type(event)

    got, watched, kind = uvloop.run(scenario())
    assert got == watched == b"on uvloop"
    assert kind is aetcd.rtypes.Event


def test_start_fails_with_the_log_tail_when_etcd_cannot_come_up(etcd: EtcdServer, tmp_path: Path) -> None:
    second = EtcdServer(tmp_path / "second")
    second.client_port = etcd.client_port  # taken by the running one
    with pytest.raises(RuntimeError, match="(?s)etcd exited with .*address already in use"):
        second.start()
    assert not second.running
    second.stop()  # harmless after a failed start


def test_stop_also_ends_a_paused_etcd(etcd: EtcdServer) -> None:
    process = etcd.process
    etcd.pause()
    started = time.monotonic()
    etcd.stop()
    assert process.returncode is not None and time.monotonic() - started < 5
    assert not etcd.running
    etcd.stop()  # idempotent
