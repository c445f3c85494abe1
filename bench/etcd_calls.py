"""What one etcd read costs the registrar's process: through grpcio (as the etcd store reads) and through etcd's JSON gateway.

    python bench/etcd_calls.py [--reads 3000]

A registrar reading on demand pays for every etcd call in CPU on its own core: grpcio's
asyncio stack hands each call between its threads and the event loop. This starts a fresh
etcd on loopback, puts one key of a bindings record's size, and reads it --reads times, one
read at a time, both ways: a serializable Range through the etcd store's own session (aetcd's
grpc channel), and a POST to etcd's `/v3/kv/range` gateway on an aiohttp keep-alive connection,
which runs on the event loop. It prints the CPU of the whole process (every thread) and the
wall time per read.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop
from aetcd import rpc

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH, which may name the compiled build

from registrar.store.etcd_session import EtcdSession, parse_endpoints, put_op  # noqa: E402
from tests.etcd_server import EtcdServer  # noqa: E402

KEY = b"/sipreg/v1/bindings/bench.example.test/u000001"
RECORD = b"x" * 300  # about a one-Contact bindings record
WARM_UP = 200


async def per_read(read: Callable[[], Awaitable[bytes]], reads: int) -> tuple[float, float]:
    """µs of process CPU and of wall time per read, after a warm-up."""
    for _ in range(WARM_UP):
        assert await read() == RECORD
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(reads):
        await read()
    return (time.process_time() - cpu) * 1e6 / reads, (time.perf_counter() - wall) * 1e6 / reads


async def measure(etcd: EtcdServer, reads: int) -> None:
    session = EtcdSession(parse_endpoints(etcd.url))
    await session.txn(rpc.TxnRequest(success=[put_op(KEY, RECORD)]))

    async def through_grpc() -> bytes:
        [answer] = session.read([KEY])
        kv, _ = await answer
        return kv.value

    body = json.dumps({"key": base64.b64encode(KEY).decode(), "serializable": True})
    async with aiohttp.ClientSession() as http:

        async def through_gateway() -> bytes:
            async with http.post(f"http://{etcd.endpoint}/v3/kv/range", data=body) as response:
                found = await response.json(content_type=None)
            return base64.b64decode(found["kvs"][0]["value"])

        for name, read in (("grpcio (the etcd store's session)", through_grpc), ("JSON gateway on aiohttp", through_gateway)):
            cpu, wall = await per_read(read, reads)
            print(f"{name}: {cpu:,.0f} µs of CPU, {wall:,.0f} µs of wall time per read ({reads:,} reads)", flush=True)
    await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, EtcdServer(Path(directory)) as etcd:
        uvloop.run(measure(etcd, args.reads))


if __name__ == "__main__":
    main()
