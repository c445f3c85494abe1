"""registrar.websocket.FrameWriter: synchronous writes onto aiohttp's coroutine sends, in order, bounded."""

from __future__ import annotations

import asyncio

from registrar.websocket import FrameWriter


class PausedSocket:
    """Stands for aiohttp's WebSocketResponse and its transport: sends wait while `paused` is clear."""

    def __init__(self) -> None:
        self.paused = asyncio.Event()
        self.paused.set()
        self.frames: list[tuple[str, bytes | str]] = []
        self.aborted = False
        self.buffered = 0  # what the transport says it holds

    async def send_str(self, text: str) -> None:
        self.frames.append(("text", text))
        await self.paused.wait()

    async def send_bytes(self, data: bytes) -> None:
        self.frames.append(("binary", data))
        await self.paused.wait()

    async def close(self) -> None:
        self.frames.append(("close", ""))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


async def test_a_write_is_sent_before_it_returns_and_later_ones_keep_their_order() -> None:
    socket = PausedSocket()
    writer = FrameWriter(socket, socket, max_queued=1000)  # type: ignore[arg-type]
    writer.write(b"SIP/2.0 200 OK\r\n\r\n")
    assert socket.frames == [("text", "SIP/2.0 200 OK\r\n\r\n")]  # no turn of the loop needed
    socket.paused.clear()  # the peer stops reading
    writer.write(b"one")
    writer.write(b"\xff\xfe binary body")
    writer.write(b"three")
    assert socket.frames[1:] == [("text", "one")]
    socket.paused.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert socket.frames[1:] == [("text", "one"), ("binary", b"\xff\xfe binary body"), ("text", "three")]
    writer.close()
    await asyncio.sleep(0)
    assert socket.frames[-1] == ("close", "")


async def test_a_peer_that_does_not_read_is_closed_once_too_much_waits() -> None:
    socket = PausedSocket()
    writer = FrameWriter(socket, socket, max_queued=100)  # type: ignore[arg-type]
    socket.paused.clear()
    writer.write(b"x" * 60)  # sent, and stuck in the socket
    writer.write(b"y" * 60)  # waits with us
    assert not socket.aborted
    socket.buffered = 50  # the transport's buffer counts too
    writer.write(b"z" * 60)
    assert socket.aborted and writer.is_closing()
    writer.write(b"more")  # nothing more is taken
    socket.paused.set()
    await asyncio.sleep(0)
    assert [data for _, data in socket.frames] == ["x" * 60]  # what waited was dropped
