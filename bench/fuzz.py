"""`make bench`: the receive path's fuzz property (tests/fuzzing.py) over 100,000 generated messages, in-process.

    python bench/fuzz.py [--messages 100000] [--seed N]

Each message is one of tests/fuzzing.py's valid requests and responses with
random mutations, made by the generator the unit test (tests/unit/test_wire_fuzz.py)
drives with Hypothesis, here driven by a seeded random.Random (Hypothesis makes
some 700 messages a second here, a tenth of what the check takes). Each goes
through `ReceivePath.check`: the parser, and `SipEndpoint.receive` of a
registrar as `sipreg serve` assembles it, over UDP and over a TCP connection;
nothing leaves the process. Prints the messages checked per second and, for
each distinct way the property broke, how often and the first message that
broke it (exit status 1 then). The same --seed and --messages replay the same
messages in the same order.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after PYTHONPATH, which may name the compiled build

from registrar.ratelog import exception_summary  # noqa: E402
from tests.fuzzing import RandomDraws, ReceivePath, fuzzed_message  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=100_000, help="how many messages to check (default 100,000)")
    parser.add_argument("--seed", type=int, default=None, help="the generator's seed (default: a random one, printed)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    # What the registrar logs about the messages (rate-limited) is not this report.
    logging.basicConfig(level=logging.CRITICAL)
    draws = RandomDraws(seed)
    path = ReceivePath()
    failures: Counter[str] = Counter()
    first: dict[str, tuple[int, bytes, str]] = {}
    started = time.perf_counter()
    try:
        for index in range(args.messages):
            data = fuzzed_message(draws)
            try:
                path.check(data)
            except Exception as error:  # AssertionError included: every way the property breaks is counted
                kind = f"{exception_summary(error)}: {str(error)[:120]}" if isinstance(error, AssertionError) \
                    else exception_summary(error)
                failures[kind] += 1
                first.setdefault(kind, (index, data, traceback.format_exc(limit=-3)))
    finally:
        seconds = time.perf_counter() - started
        path.close()
    rate = args.messages / seconds
    print(f"fuzz: {args.messages:,} messages (seed {seed}) in {seconds:.1f} s: {rate:,.0f} messages/s")
    for kind, count in failures.most_common():
        index, data, where = first[kind]
        shown = repr(data) if len(data) <= 600 else f"{data[:400]!r} ... {data[-150:]!r} ({len(data):,} bytes)"
        print(f"fuzz: FAILED {count:,}x: {kind}\n  first: message {index}: {shown}\n{where}")
    if not failures:
        print("fuzz: no message broke the property")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
