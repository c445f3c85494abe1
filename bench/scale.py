"""The scale phase of `make bench`: a registrar's memory and CPU against the subscribers etcd holds (issue 17).

A registrar pod should cost what its traffic costs, not what the cluster's subscriber count
does. For each table size N (run.py's --scale-sizes), on a fresh etcd on loopback:
- load one domain and N subscribers straight into etcd over gRPC, each a SipConnection record
  (MD5 and SHA-256 HA1s, as manifests make them) and a bindings record with one Contact
  expiring in an hour, keys and records made by registrar.store.layout alone; then etcd's RSS
  and database size;
- start one `sipreg serve` on that etcd with no manifests (it serves what etcd holds), on
  run.py's registrar core: its start-up time (to /readyz) and RSS;
- 20,000 authenticated REGISTERs from as many subscribers spread over the whole table, at
  1,000/s: the registrar's CPU per registration, the failures, its RSS;
- calls through its proxy to a few hundred subscribers of the table (calls.py's callees and
  caller): the store's lookup latency p50/p99 from the registrar's store-read histogram;
and last a table of those figures by N, to show which of them grow with it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aetcd import rpc

from calls import Callees, call_run, failure_notes
from run import (
    CONTACT_PORT, DOMAIN, answered_registrations, cpu_per_registration, histogram, histogram_quantile, pinned,
    rss_kib, scrape, write_manifests,
)
from registrar.manifests import HA1_ALGORITHMS, load_catalog
from registrar.model import Binding, Connection, Domain
from registrar.sip.digest import ha1
from registrar.store import layout
from registrar.store.etcd_session import EtcdSession, parse_endpoints, put_op
from tests.etcd_server import EtcdServer
from tests.helpers import start_registrar, stop_registrar
from tests.integration.sipp import users_csv

# etcd's default quota (2 GiB) leaves a million subscribers (a 0.9 GiB database) little room to
# grow, and past its quota etcd refuses every write.
ETCD_QUOTA_BYTES = 8 * 1024**3
# etcd refuses a transaction of more than --max-txn-ops (128) operations.
TXN_OPS = 127
# One transaction waits on etcd's disk write while the next ones are built and sent.
TXNS_IN_FLIGHT = 8
BINDING_SECONDS = 3600
# Outlives the phase, so no binding's key goes while it runs; not kept alive, so etcd drops
# them all in the end.
BINDINGS_LEASE_SECONDS = 2 * 3600
# A registrar that reads every connection before it is ready took 80 s here for a million.
READY_TIMEOUT = 1800
REGISTER_RATE = 1000
REGISTER_SECONDS = 20
# About a quarter of the best rate one registrar carries (calls.py's figures), so the lookups
# are timed with the registrar keeping up, not queueing.
CALL_RATE = 300
CALL_SECONDS = 20
STORE_READ_HISTOGRAM = "sipreg_store_read_duration_seconds"
NOT_EXPORTED = "not exported by this registrar"


class RoomyEtcd(EtcdServer):
    """An EtcdServer with room for a million subscribers (an 8 GiB quota)."""

    def command(self) -> list[str]:
        return [*super().command(), "--quota-backend-bytes", str(ETCD_QUOTA_BYTES)]


@dataclass
class ScaleFigures:
    """One table size's figures: what the summary table shows."""

    subscribers: int
    load_seconds: float = math.nan
    etcd_rss_kib: int = 0
    etcd_db_bytes: int = 0
    startup_seconds: float = math.nan
    rss_started_kib: int = 0
    rss_after_traffic_kib: int = 0
    cpu_per_register_us: float = math.nan
    lookup: str = "not measured"  # "p50 / p99", or why there are none


def subscriber(index: int) -> tuple[str, str]:
    """The username and password of the table's subscriber number `index`."""
    user = f"u{index:07d}"
    return user, f"pw-{user}"


def spread(count: int, total: int, shift: float = 0.0) -> list[tuple[str, str]]:
    """`count` subscribers evenly spaced over a table of `total` (`shift` of a spacing along): a store that
    reads the start of its key range differently from the end must show it, and the first ones would not."""
    count = min(count, total)
    return [subscriber(int((position + shift) * total / count)) for position in range(count)]


def bench_domain(directory: Path) -> Domain:
    """The SipDomain the other phases serve (run.write_manifests'), as the registrar reads it."""
    write_manifests(directory, users=0)
    return load_catalog(directory).domains[DOMAIN]


def subscriber_records(domain: Domain, count: int, lease: int, now: float) -> Iterator[rpc.RequestOp]:
    """The domain's record, then each subscriber's connection and bindings records, as etcd puts."""
    yield put_op(layout.domain_key(domain.name), layout.encode_domain(domain))
    for index in range(count):
        user, password = subscriber(index)
        connection = Connection(
            domain=domain.name, username=user, name=user,
            ha1={algorithm: ha1(algorithm, user, domain.name, password) for algorithm in HA1_ALGORITHMS},
        )
        yield put_op(layout.connection_key(domain.name, user), layout.encode_connection(connection))
        # The Contact sipp's REGISTERs carry (run.register_run, calls.Callees below), so a REGISTER
        # refreshes this binding instead of adding a second one that calls would fork to.
        contact = f"sip:{user}@127.0.0.1:{CONTACT_PORT};transport=udp"
        binding = Binding(
            aor=connection.aor, contact=contact, expires_at=now + BINDING_SECONDS, call_id=f"scale-{user}", cseq=1,
            source_host="127.0.0.1", source_port=CONTACT_PORT, registered_at=now,
        )
        yield put_op(layout.bindings_key(connection.aor), layout.encode_bindings((binding,)), lease)


async def load_subscribers(etcd: EtcdServer, domain: Domain, count: int) -> int:
    """Put the domain and `count` subscribers into `etcd`, TXN_OPS puts a transaction; the records put."""
    session = EtcdSession(parse_endpoints(etcd.url), timeout=120)
    try:
        lease = await session.grant(BINDINGS_LEASE_SECONDS)
        puts = subscriber_records(domain, count, lease, time.time())
        records = 0

        async def send_transactions() -> None:
            nonlocal records
            # The generator is shared: each sender takes the next batch when its last one is acknowledged.
            while batch := list(itertools.islice(puts, TXN_OPS)):
                await session.txn(rpc.TxnRequest(success=batch))
                records += len(batch)

        await asyncio.gather(*(send_transactions() for _ in range(TXNS_IN_FLIGHT)))
        return records
    finally:
        await session.close()


def etcd_db_bytes(etcd: EtcdServer) -> int:
    """The size of etcd's database file (dbSize of the Maintenance Status RPC, through etcd's JSON gateway)."""
    request = urllib.request.Request(f"http://{etcd.endpoint}/v3/maintenance/status", data=b"{}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.load(response)["dbSize"])


def lookup_latency(before: str, after: str) -> str:
    """p50 / p99 of the store reads between two /metrics readings."""
    first, last = histogram(before, STORE_READ_HISTOGRAM), histogram(after, STORE_READ_HISTOGRAM)
    if not last:
        return NOT_EXPORTED
    p50, p99 = (histogram_quantile(first, last, q) * 1000 for q in (0.5, 0.99))
    if math.isnan(p50):
        return "no store reads"
    return f"{p50:.2f} / {p99:.2f} ms"


def mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def measure(workdir: Path, subscribers: int, callees: int, hold: float) -> tuple[ScaleFigures, list[str]]:
    """One table size on a fresh etcd in `workdir`: its figures, and the report's lines."""
    figures = ScaleFigures(subscribers)
    lines: list[str] = []
    label = f"scale, {subscribers:,} subscribers"

    def say(line: str) -> None:
        lines.append(f"{label}: {line}")
        print(lines[-1], flush=True)

    domain = bench_domain(workdir / "manifests")
    with RoomyEtcd(workdir, name="scale") as etcd:
        started = time.monotonic()
        records = asyncio.run(load_subscribers(etcd, domain, subscribers))
        figures.load_seconds = time.monotonic() - started
        figures.etcd_rss_kib, figures.etcd_db_bytes = rss_kib(etcd.process.pid), etcd_db_bytes(etcd)
        say(
            f"loaded {records:,} records into etcd in {figures.load_seconds:.1f} s "
            f"({records / figures.load_seconds:,.0f} records/s); etcd RSS {mib(figures.etcd_rss_kib)}, "
            f"database {figures.etcd_db_bytes / 1024**2:,.0f} MiB"
        )

        started = time.monotonic()
        registrar = start_registrar(
            workdir, "--log-level", "warning", "--store", etcd.url, manifests=None, wrapper=pinned(0),
            ready_timeout=READY_TIMEOUT,
        )
        callee_sipp = None
        try:
            figures.startup_seconds = time.monotonic() - started
            figures.rss_started_kib = rss_kib(registrar.process.pid)
            say(f"registrar ready in {figures.startup_seconds:.1f} s, RSS {mib(figures.rss_started_kib)}")

            registering = spread(REGISTER_RATE * REGISTER_SECONDS, subscribers)
            csv_path = users_csv(workdir / "registering.csv", registering, DOMAIN)
            cpu, registrations, achieved = cpu_per_registration(
                registrar, workdir, csv_path, REGISTER_RATE, REGISTER_SECONDS
            )
            figures.cpu_per_register_us = cpu
            say(
                f"{registrations.successful:,} authenticated REGISTERs from {len(registering):,} subscribers at "
                f"{REGISTER_RATE:,}/s offered ({achieved:,.0f}/s achieved), {registrations.failed:,} failed: "
                f"{cpu:,.0f} µs of registrar CPU per registration; "
                f"RSS after {mib(rss_kib(registrar.process.pid))}"
            )

            called_users = spread(callees, subscribers, shift=0.5)
            called = users_csv(workdir / "callees.csv", called_users, DOMAIN)
            registered_before = answered_registrations(registrar)
            callee_sipp = Callees(
                registrar, workdir, called, len(called_users), "udp", contact_port=CONTACT_PORT,
                registered=lambda: int(answered_registrations(registrar) - registered_before),
            )
            callee_sipp.wait_registered()
            before = scrape(registrar)
            calls, _, kinds = call_run(registrar, workdir, called, "udp", CALL_RATE, CALL_RATE * CALL_SECONDS, hold)
            figures.lookup = lookup_latency(before, scrape(registrar))
            figures.rss_after_traffic_kib = rss_kib(registrar.process.pid)
            say(
                f"{calls.successful:,} calls at {CALL_RATE}/s to {callee_sipp.users} callees, {calls.failed:,} failed: "
                f"store lookup p50 / p99 {figures.lookup}; RSS after {mib(figures.rss_after_traffic_kib)}"
            )
            for note in failure_notes(calls, kinds):
                say(note.strip())
        finally:
            if callee_sipp is not None:
                callee_sipp.stop()
            stop_registrar(registrar)
    return figures, lines


def summary(all_figures: list[ScaleFigures]) -> list[str]:
    """The figures by table size, one row each: which of them grow with the subscribers in etcd."""
    columns = (
        "subscribers", "registrar RSS at start", "after traffic", "start-up", "CPU/REGISTER",
        "lookup p50 / p99", "etcd RSS", "etcd DB", "load",
    )
    rows = [
        (
            f"{figures.subscribers:,}", mib(figures.rss_started_kib), mib(figures.rss_after_traffic_kib),
            f"{figures.startup_seconds:.1f} s", f"{figures.cpu_per_register_us:,.0f} µs", figures.lookup,
            mib(figures.etcd_rss_kib), f"{figures.etcd_db_bytes / 1024**2:,.0f} MiB", f"{figures.load_seconds:.0f} s",
        )
        for figures in all_figures
    ]
    widths = [max(len(row[column]) for row in [columns, *rows]) for column in range(len(columns))]
    return ["scale: a registrar on etcd, by subscribers in etcd"] + [
        "  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [columns, *rows]
    ]


def scale_phase(tmp_path: Path, sizes: list[int], callees: int = 200, hold: float = 1.0) -> list[str]:
    """Each table size in turn, on an etcd of its own; the report's lines, the summary table last."""
    all_figures, lines = [], []
    for subscribers in sizes:
        workdir = tmp_path / f"scale-{subscribers}"
        workdir.mkdir()
        try:
            started = time.monotonic()
            figures, measured = measure(workdir, subscribers, callees, hold)
            all_figures.append(figures)
            lines += measured
            lines.append(f"scale, {subscribers:,} subscribers: {time.monotonic() - started:.0f} s in all")
            print(lines[-1], flush=True)
        finally:
            # A million subscribers' etcd data is gigabytes: gone before the next size starts.
            shutil.rmtree(workdir, ignore_errors=True)
    return lines + [""] + summary(all_figures)
