"""`sipreg trace`: a connection's last SIP messages from every replica, as text or a pcap, once or followed.

Through one registrar's HTTP API (`--api`, which asks the others), or from the
node registry in a cluster's etcd (`--store`), asking every node itself. Either
way every API answers only its bearer token (`--api-token-file` or
$SIPREG_API_TOKEN, as for `sipreg serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp

from registrar.pcap import pcap_bytes
from registrar.sip.trace import as_text, trace_key
from registrar.store import layout
from registrar.store.etcd_session import EtcdSession, EtcdTls, parse_endpoints
from registrar.trace_gathering import MAX_NODE_ANSWER, Gathered, TraceGatherer, ask

DEFAULT_API = "http://127.0.0.1:8080"
FOLLOW_INTERVAL = 1.0
# A gathering pod waits NODE_TIMEOUT for the others; what it sends holds every node's part.
API_TIMEOUT = 10.0
MAX_ANSWER = 64 * MAX_NODE_ANSWER


def add_parser(commands: Any) -> None:
    trace = commands.add_parser(
        "trace", help="print a connection's last SIP messages from every replica (text, or a pcap)"
    )
    trace.add_argument("key", help="the connection, user@domain; or an IP address, for what belongs to no connection")
    where = trace.add_mutually_exclusive_group()
    where.add_argument("--api", default=DEFAULT_API,
                       help=f"a registrar's HTTP API, which asks the other replicas (default {DEFAULT_API}, "
                            "sipreg serve's)")
    where.add_argument("--store", help="etcd://HOST:PORT[,...]: ask every registrar in its node registry "
                                       "(TLS: $SIPREG_ETCD_CA/_CERT/_KEY)")
    trace.add_argument("--api-token-file", help="file holding the registrars' API bearer token "
                                                "(or $SIPREG_API_TOKEN)")
    trace.add_argument("-n", "--last", type=_count, metavar="N",
                       help="only the last N messages (default: all that the replicas keep)")
    trace.add_argument("--full", action="store_true", help="print each whole message after its line")
    trace.add_argument("--pcap", metavar="FILE", help="also write the messages to FILE as a pcap (sngrep, Wireshark)")
    trace.add_argument("--follow", action="store_true", help="keep printing new messages as they come (Ctrl-C stops)")


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a number of messages: {text!r}")
    return int(text)


async def run(args: argparse.Namespace, token: str, tls: EtcdTls | None, out: TextIO = sys.stdout) -> int:
    key = trace_key(args.key)
    if args.store:
        nodes = await _registry(args.store, tls)
        if not nodes:
            print(f"sipreg trace: no registrar in {args.store}'s node registry", file=sys.stderr)
            return 1
        gatherer = TraceGatherer(lambda: nodes, token)

        async def fetch(since: float) -> Gathered:
            return await gatherer.gather(key, since)
    else:
        async def fetch(since: float) -> Gathered:
            return await _from_api(args.api, token, key, since)

    gathered = await fetch(0.0)
    for node, why in gathered.unreachable.items():
        print(f"sipreg trace: node {node} did not answer: {why}", file=sys.stderr)
    messages = gathered.messages[-args.last:] if args.last else list(gathered.messages)
    seen = set(gathered.messages)
    out.write(as_text(messages, args.full))
    out.flush()
    if not messages and not args.follow:
        print(f"sipreg trace: no messages of {key} on {', '.join(gathered.answered) or 'any node'}", file=sys.stderr)
    try:
        while args.follow:
            await asyncio.sleep(FOLLOW_INTERVAL)
            since = messages[-1].time if messages else 0.0
            new = [captured for captured in (await fetch(since)).messages if captured not in seen]
            seen.update(new)
            messages += new
            out.write(as_text(new, args.full))
            out.flush()
    finally:
        if args.pcap:
            with open(args.pcap, "wb") as pcap:
                pcap.write(pcap_bytes(messages))
            print(f"sipreg trace: wrote {len(messages)} messages to {args.pcap}", file=sys.stderr)
    return 0


async def _from_api(api: str, token: str, key: str, since: float) -> Gathered:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=API_TIMEOUT)) as session:
        return await ask(session, api, token, key, since, most_bytes=MAX_ANSWER)


async def _registry(store: str, tls: EtcdTls | None) -> Mapping[str, Mapping[str, Any]]:
    session = EtcdSession(parse_endpoints(store), tls=tls)
    await session.connect()
    try:
        records, _ = await session.read_prefix(layout.NODES.encode())
    finally:
        await session.close()
    nodes = {}
    for record in records:
        try:
            node = layout.decode_node(record.value)
        except layout.BadRecord:
            continue  # a node record we cannot read is a node we cannot ask
        nodes[str(node["node"])] = node
    return nodes
