"""Rate-limited logging of what the network makes happen: at most one line per interval for each kind of event.

Anyone who can send us a datagram can make us log: a line (let alone a
traceback) per bad message is disk, CPU and a log shipper's bill on the
sender's demand, and buries the lines that matter. So what wire input causes
is logged through a `RateLimitedLog`, which counts the lines it holds back and
says how many with the next one, and exceptions are summed up by
`exception_summary`: their type and where they were raised, never their
message or a traceback, which may quote the sender's bytes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

# One line per kind of event per this many seconds: a bad message a second is
# a line every 10 s, a flood of them is too.
LOG_INTERVAL = 10.0


class RateLimitedLog:
    """One kind of log line, at most once per `interval` seconds; the lines in between are counted.

    The kinds are fixed by the code (one instance each), never made from what a
    message carries, so their number is bounded.
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._logger = logger
        self._level = level
        self._interval = interval
        self._clock = clock
        self._last: float | None = None  # when the last line went out
        self._held_back = 0

    def __call__(self, message: str, *args: object) -> None:
        if not self._logger.isEnabledFor(self._level):
            return
        now = self._clock()
        last = self._last
        if last is not None and now - last < self._interval:
            self._held_back += 1
            return
        if self._held_back:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, self._held_back, now - last)
        self._last = now
        self._held_back = 0
        self._logger.log(self._level, message, *args)


def exception_summary(error: BaseException) -> str:
    """An exception's type and the place it was raised: "KeyError in registrar/proxy.py:123 (_fork)"."""
    name = type(error).__name__
    traceback = error.__traceback__
    if traceback is None:
        return name
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    code = traceback.tb_frame.f_code
    # The file's folder and name are enough to find it ("sip/headers.py").
    where = "/".join(code.co_filename.replace(os.sep, "/").rsplit("/", 2)[-2:])
    return f"{name} in {where}:{traceback.tb_lineno} ({code.co_name})"
