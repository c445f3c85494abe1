"""What trunk status costs the operator at 10,000 SipConnections: CPU per status and memory per connection.

    python bench/operator_scale.py [--connections 10000]

Builds what the operator holds for each connection (its last patched status,
two bindings of its AOR), then times the work one status round does: compute
the status of every connection and decide whether it is worth a patch, once
after a refresh (nothing to patch) and once after every registration ended
(everything to patch). Memory is measured with tracemalloc over the statuses
the operator keeps. No Kubernetes API is involved: the API writes are the
count of patches, printed.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registrar.model import Binding  # noqa: E402
from sip_operator.status import connection_status, needs_patch  # noqa: E402

DOMAIN = "sip.example.test"


def bindings_of(i: int, registered_at: float) -> list[Binding]:
    return [
        Binding(
            f"user{i}@{DOMAIN}", f"sip:user{i}@10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:{5060 + n}",
            registered_at + 600, f"call-{i}-{n}", 1, transport="udp",
            source_host=f"203.0.113.{i % 256}", source_port=40000 + n, node="registrar-0",
            user_agent="Yealink SIP-T46S",
            registered_at=registered_at,
        )
        for n in range(2)
    ]


def status_round(statuses: list[dict], bindings: list[list[Binding]], now: float) -> tuple[list[dict], int, float]:
    started = time.perf_counter()
    new, patches = [], 0
    for previous, current in zip(statuses, bindings):
        status = connection_status(
            bindings=current, failure=None, generation=1, problem=None, registration_enabled=True,
            previous=previous, now=now,
        )
        if needs_patch(previous, status, now):
            patches += 1
        new.append(status)
    return new, patches, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    count = parser.parse_args().connections
    now = time.time()
    registered = [bindings_of(i, now) for i in range(count)]

    tracemalloc.start()
    first, patches, _ = status_round([None] * count, registered, now)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"{count:,} connections, 2 contacts each: {held / count / 1024:.1f} KiB of status held per connection")
    print(f"first status of each connection (none written before; a restart starts from the status there): {patches:,} patches")

    refreshed = [bindings_of(i, now + 300) for i in range(count)]
    _, patches, seconds = status_round(first, refreshed, now + 300)
    print(f"every UA refreshed: {patches:,} patches, {seconds * 1e6 / count:.0f} us of CPU per connection")
    _, patches, seconds = status_round(first, [[] for _ in range(count)], now + 700)
    print(f"every registration ended: {patches:,} patches, {seconds * 1e6 / count:.0f} us of CPU per connection")


if __name__ == "__main__":
    main()
