"""The scale phase of `make bench`: a registrar's memory and CPU against the subscribers etcd holds (issue 17).

A registrar pod should cost what its traffic costs, not what the cluster's subscriber count
does. For each table size N (run.py's --scale-sizes), on a fresh etcd on loopback:
- load one domain and N subscribers straight into etcd over gRPC, each a SipConnection record
  (MD5 and SHA-256 HA1s, as manifests make them) and a bindings record with one Contact
  expiring in an hour, keys and records made by registrar.store.layout alone; then etcd's RSS
  and database size;
- start one `sipreg serve` on that etcd with no manifests (it serves what etcd holds), on
  run.py's registrar core: its start-up time (to /readyz) and RSS;
- 60,000 authenticated REGISTERs from as many subscribers spread over the whole table (more
  than a registrar caches by default), at 1,000/s: the registrar's CPU per registration, the
  failures, its RSS; etcd's CPU and disk writes per registration and per write transaction;
  then the last 20,000 of them again, refreshes of phones it has cached: its CPU for each;
- calls through its proxy to a few hundred subscribers of the table (calls.py's callees and
  caller): the store's lookup latency p50/p99 from the registrar's store-read histogram; etcd's
  share of it, its answers on the wire (a capture of its client port, read by tshark); and the
  registrar's event loop's lag meanwhile (sipreg_event_loop_lag_seconds: what a lookup waits behind);
- other replicas' writes: 100,000 bindings records rewritten straight into etcd, as other
  replicas' REGISTERs would, while the registrar idles: the CPU it spends meanwhile, and
  the CPU a store that mirrors every binding (the operator's) spends per watch event;
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
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from dataclasses import dataclass
from pathlib import Path

from aetcd import rpc

from calls import Callees, call_run, failure_notes
from run import (
    CONTACT_PORT, DOMAIN, answered_registrations, counter, cpu_per_registration, histogram, histogram_quantile,
    percentile, pinned, rss_kib, scrape, start_capture, stop_capture, tree_cpu_ticks, wait_idle, write_manifests,
)
from registrar.manifests import HA1_ALGORITHMS, load_catalog
from registrar.model import Binding, Connection, Domain
from registrar.sip.digest import ha1
from registrar.store import layout
from registrar.store.etcd import DEFAULT_CACHED_AORS, EtcdStore
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
# 60,000 subscribers: more than a registrar caches by default, so its memory shows the cache's bound.
REGISTER_SECONDS = 60
# Then the last ones register again: refreshes of phones the registrar has cached.
REFRESHES = 20_000
# About a quarter of the best rate one registrar carries (calls.py's figures), so the lookups
# are timed with the registrar keeping up, not queueing.
CALL_RATE = 300
CALL_SECONDS = 20
STORE_READ_HISTOGRAM = "sipreg_store_read_duration_seconds"
LOOP_LAG_HISTOGRAM = "sipreg_event_loop_lag_seconds"
TSHARK = shutil.which("tshark")
HTTP2_HEADERS = "1"  # the HEADERS frame's type: a gRPC request's first frame, and its answer's
# Bindings records written straight into etcd while the registrar idles, as other replicas would.
OTHER_WRITES = 100_000
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
    cpu_per_register_us: float = math.nan  # each REGISTER its phone's first at this registrar
    cpu_per_refresh_us: float = math.nan  # each REGISTER a refresh of a phone it has cached
    lookup: str = "not measured"  # "p50 / p99", or why there are none
    etcd_answer: str = "not measured"  # etcd's answers to the registrar meanwhile, on the wire: "p50 / p99"
    loop_lag: str = "not measured"  # the event loop's lag meanwhile, "p50 / p99"
    etcd_cpu_per_register_us: float = math.nan
    etcd_written_per_register: float = math.nan  # bytes etcd wrote to disk (WAL and database)
    history_per_register: float = math.nan  # bytes etcd's database grew by: the revisions it keeps
    registrar_cpu_on_others_ms: float = math.nan  # while 100,000 records of other replicas were written
    mirror_rss_kib: int = 0  # a store that mirrors everything (the operator's), started on the table
    mirror_cpu_per_event_us: float = math.nan


@dataclass
class EtcdUse:
    """What etcd's process has used so far: CPU ticks, bytes written to storage."""

    ticks: int
    written: int

    @classmethod
    def of(cls, etcd: EtcdServer) -> EtcdUse:
        io = dict(line.split(": ") for line in Path(f"/proc/{etcd.process.pid}/io").read_text().splitlines())
        return cls(tree_cpu_ticks(etcd.process.pid), int(io["write_bytes"]))

    def __sub__(self, before: EtcdUse) -> EtcdUse:
        return EtcdUse(self.ticks - before.ticks, self.written - before.written)


def cpu_seconds(ticks: int) -> float:
    return ticks / os.sysconf("SC_CLK_TCK")


def start_mirror(etcd: EtcdServer) -> subprocess.Popen:
    """A process following everything in `etcd` as the operator's store does (this module, --mirror URL),
    on the core sipp uses (idle while it runs); returns once it has read the table."""
    process = subprocess.Popen(
        [*pinned(1), sys.executable, __file__, "--mirror", etcd.url], stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError("the mirror did not read etcd")
    return process


def mirror(url: str) -> None:
    """Follow every key under etcd's sipreg prefix, as the operator's store does, until killed."""
    async def follow() -> None:
        store = EtcdStore(EtcdSession(parse_endpoints(url), timeout=120))
        await store.start(wait=READY_TIMEOUT)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(follow())


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
        for key, record in layout.connection_records(connection).items():
            yield put_op(key, record)
        yield bindings_record(connection.aor, lease, now)


def bindings_record(aor: str, lease: int, now: float, cseq: int = 1) -> rpc.RequestOp:
    """A subscriber's bindings record as a registrar writes it, as an etcd put."""
    user = aor.partition("@")[0]
    # The Contact sipp's REGISTERs carry (run.register_run, calls.Callees below), so a REGISTER
    # refreshes this binding instead of adding a second one that calls would fork to.
    contact = f"sip:{user}@127.0.0.1:{CONTACT_PORT};transport=udp"
    binding = Binding(
        aor=aor, contact=contact, expires_at=now + BINDING_SECONDS, call_id=f"scale-{user}", cseq=cseq,
        source_host="127.0.0.1", source_port=CONTACT_PORT, registered_at=now,
    )
    return put_op(layout.bindings_key(aor), layout.encode_bindings((binding,)), lease)


async def load_subscribers(etcd: EtcdServer, domain: Domain, count: int) -> int:
    """Put the domain and `count` subscribers into `etcd`, TXN_OPS puts a transaction; the records put."""
    return await put_all(etcd, lambda lease: subscriber_records(domain, count, lease, time.time()))


async def rewrite_bindings(etcd: EtcdServer, aors: list[str]) -> int:
    """Write the AORs' bindings records again (a refresh, as other replicas' REGISTERs write them)."""
    return await put_all(etcd, lambda lease: (bindings_record(aor, lease, time.time(), cseq=2) for aor in aors))


async def put_all(etcd: EtcdServer, records: Callable[[int], Iterator[rpc.RequestOp]]) -> int:
    """Put `records(lease)` into `etcd`, TXN_OPS a transaction, TXNS_IN_FLIGHT at once; the records put."""
    session = EtcdSession(parse_endpoints(etcd.url), timeout=120)
    try:
        lease = await session.grant(BINDINGS_LEASE_SECONDS)
        puts = iter(records(lease))
        records_put = 0

        async def send_transactions() -> None:
            # The generator is shared: each sender takes the next batch when its last one is acknowledged.
            nonlocal records_put
            while batch := list(itertools.islice(puts, TXN_OPS)):
                await session.txn(rpc.TxnRequest(success=batch))
                records_put += len(batch)

        await asyncio.gather(*(send_transactions() for _ in range(TXNS_IN_FLIGHT)))
        return records_put
    finally:
        await session.close()


def etcd_db_bytes(etcd: EtcdServer, field: str = "dbSize") -> int:
    """The size of etcd's database file (`dbSize` of the Maintenance Status RPC, through etcd's JSON gateway),
    or of the part of it in use (`dbSizeInUse`: the file grows in steps, and is not given back)."""
    request = urllib.request.Request(f"http://{etcd.endpoint}/v3/maintenance/status", data=b"{}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.load(response)[field])


def quantiles(before: str, after: str, name: str) -> str:
    """p50 / p99 of the histogram `name` between two /metrics readings."""
    first, last = histogram(before, name), histogram(after, name)
    if not last:
        return NOT_EXPORTED
    p50, p99 = (histogram_quantile(first, last, q) * 1000 for q in (0.5, 0.99))
    if math.isnan(p50):
        return "none observed"
    return f"{p50:.2f} / {p99:.2f} ms"


def etcd_answer_quantiles(pcap: Path, port: int) -> str:
    """p50 / p99 of etcd's answers in a loopback capture of its client port: from each request's HTTP/2
    HEADERS frame to its answer's, stream by stream (tshark reads the frames).

    The registrar's own figure for a read also holds the time its event loop takes to send it and,
    once etcd has answered, to get to the answer: this one is etcd's share alone."""
    if TSHARK is None:
        return "no tshark"
    fields = subprocess.run(
        [TSHARK, "-r", str(pcap), "-d", f"tcp.port=={port},http2", "-T", "fields",
         "-e", "frame.time_epoch", "-e", "tcp.srcport", "-e", "tcp.stream", "-e", "http2.streamid", "-e", "http2.type"],
        capture_output=True, text=True, check=True,
    ).stdout
    asked: dict[tuple[str, str], float] = {}
    answers = []
    for line in fields.splitlines():
        when, source_port, connection, streams, kinds = (line.split("\t") + [""] * 5)[:5]
        for stream, kind in zip(streams.split(","), kinds.split(",")):
            if stream in ("", "0") or kind != HTTP2_HEADERS:
                continue
            key = (connection, stream)
            if source_port != str(port):
                asked.setdefault(key, float(when))
            elif key in asked:
                answers.append((float(when) - asked.pop(key)) * 1000)
    if not answers:
        return "none captured"
    return f"{percentile(answers, 0.5):.2f} / {percentile(answers, 0.99):.2f} ms ({len(answers):,} answers)"


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
            metrics_before, etcd_before, db_before = (
                scrape(registrar), EtcdUse.of(etcd), etcd_db_bytes(etcd, "dbSizeInUse")
            )
            cpu, registrations, achieved = cpu_per_registration(
                registrar, workdir, csv_path, REGISTER_RATE, REGISTER_SECONDS
            )
            etcd_used, metrics_after = EtcdUse.of(etcd) - etcd_before, scrape(registrar)
            figures.history_per_register = (etcd_db_bytes(etcd, "dbSizeInUse") - db_before) / max(registrations.successful, 1)
            figures.cpu_per_register_us = cpu
            registered = max(registrations.successful, 1)
            figures.etcd_cpu_per_register_us = cpu_seconds(etcd_used.ticks) * 1e6 / registered
            figures.etcd_written_per_register = etcd_used.written / registered
            writes, aors, reads = (
                counter(metrics_after, name) - counter(metrics_before, name)
                for name in ("sipreg_store_writes_total", "sipreg_store_aors_written_total",
                             f"{STORE_READ_HISTOGRAM}_count")
            )
            say(
                f"{registrations.successful:,} authenticated REGISTERs from {len(registering):,} subscribers at "
                f"{REGISTER_RATE:,}/s offered ({achieved:,.0f}/s achieved), {registrations.failed:,} failed: "
                f"{cpu:,.0f} µs of registrar CPU per registration; "
                f"RSS after {mib(rss_kib(registrar.process.pid))} (it caches {DEFAULT_CACHED_AORS:,} AORs)"
            )
            refreshing = users_csv(workdir / "refreshing.csv", registering[-REFRESHES:], DOMAIN)
            figures.cpu_per_refresh_us, refreshes, _ = cpu_per_registration(
                registrar, workdir, refreshing, REGISTER_RATE, REFRESHES / REGISTER_RATE
            )
            say(
                f"{refreshes.successful:,} refreshes of the last {REFRESHES:,} of them (cached) at {REGISTER_RATE:,}/s, "
                f"{refreshes.failed:,} failed: {figures.cpu_per_refresh_us:,.0f} µs of registrar CPU each"
            )
            say(
                f"etcd: {figures.etcd_cpu_per_register_us:,.0f} µs of CPU and {figures.etcd_written_per_register:,.0f} "
                f"bytes written to disk per registration; {writes:,.0f} write transactions of "
                f"{aors / max(writes, 1):,.1f} AORs each ({cpu_seconds(etcd_used.ticks) * 1e6 / max(writes, 1):,.0f} µs "
                f"of etcd CPU, {etcd_used.written / max(writes, 1):,.0f} bytes written each), {reads:,.0f} reads; "
                f"its database grew {figures.history_per_register:,.0f} bytes per registration (the history kept "
                f"until a compaction)"
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
            pcap = workdir / "etcd-calls.pcap"
            capture = start_capture(pcap, etcd.client_port, "tcp")
            try:
                calls, _, kinds = call_run(registrar, workdir, called, "udp", CALL_RATE, CALL_RATE * CALL_SECONDS, hold)
            finally:
                stop_capture(capture)
            after = scrape(registrar)
            figures.lookup, figures.loop_lag = (
                quantiles(before, after, STORE_READ_HISTOGRAM), quantiles(before, after, LOOP_LAG_HISTOGRAM)
            )
            figures.etcd_answer = etcd_answer_quantiles(pcap, etcd.client_port) if capture else "no capture"
            figures.rss_after_traffic_kib = rss_kib(registrar.process.pid)
            say(
                f"{calls.successful:,} calls at {CALL_RATE}/s to {callee_sipp.users} callees, {calls.failed:,} failed: "
                f"store lookup p50 / p99 {figures.lookup} (etcd's answers on the wire {figures.etcd_answer}; its event "
                f"loop woke timers late by {figures.loop_lag}); "
                f"RSS after {mib(figures.rss_after_traffic_kib)}"
            )
            for note in failure_notes(calls, kinds):
                say(note.strip())
            callee_sipp.stop()
            callee_sipp = None
            others_writing(etcd, registrar, subscribers, figures, say)
        finally:
            if callee_sipp is not None:
                callee_sipp.stop()
            stop_registrar(registrar)
    return figures, lines


def others_writing(etcd: EtcdServer, registrar, subscribers: int, figures: ScaleFigures, say) -> None:
    """Rewrite OTHER_WRITES bindings records straight into etcd, as other replicas' REGISTERs would, while
    the registrar idles and a mirror (the operator's store) follows: what each spends on them."""
    aors = [f"{user}@{DOMAIN}" for user, _ in spread(OTHER_WRITES, subscribers, shift=0.25)]
    started = time.monotonic()
    mirror_process = start_mirror(etcd)
    try:
        figures.mirror_rss_kib = rss_kib(mirror_process.pid)
        say(f"a mirror of every record (the operator's store) read the table in {time.monotonic() - started:.1f} s: "
            f"RSS {mib(figures.mirror_rss_kib)}")
        watching = SimpleNamespace(process=mirror_process)
        wait_idle(registrar)
        wait_idle(watching)
        registrar_before, mirror_before = tree_cpu_ticks(registrar.process.pid), tree_cpu_ticks(mirror_process.pid)
        started = time.monotonic()
        written = asyncio.run(rewrite_bindings(etcd, aors))
        took = time.monotonic() - started
        wait_idle(watching, timeout=600)  # until the mirror has caught up
        registrar_used = cpu_seconds(tree_cpu_ticks(registrar.process.pid) - registrar_before)
        mirror_used = cpu_seconds(tree_cpu_ticks(mirror_process.pid) - mirror_before)
    finally:
        mirror_process.kill()
        mirror_process.wait()
    idle_before = tree_cpu_ticks(registrar.process.pid)
    time.sleep(took)
    idle = cpu_seconds(tree_cpu_ticks(registrar.process.pid) - idle_before)
    figures.registrar_cpu_on_others_ms = registrar_used * 1000
    figures.mirror_cpu_per_event_us = mirror_used * 1e6 / max(written, 1)
    say(
        f"other replicas wrote {written:,} bindings records in {took:.1f} s ({written / took:,.0f}/s): the registrar "
        f"spent {registrar_used * 1000:,.0f} ms of CPU meanwhile (idle as long: {idle * 1000:,.0f} ms); the mirror "
        f"{mirror_used:,.1f} s, {figures.mirror_cpu_per_event_us:,.0f} µs per watch event"
    )


def summary(all_figures: list[ScaleFigures]) -> list[str]:
    """The figures by table size, one row each: which of them grow with the subscribers in etcd."""
    columns = (
        "subscribers", "registrar RSS at start", "after traffic", "start-up", "CPU/REGISTER", "CPU/refresh",
        "lookup p50 / p99", "etcd answers p50 / p99", "loop lag p50 / p99", "on others' writes", "etcd RSS",
        "etcd DB", "per subscriber", "etcd CPU/REGISTER", "etcd disk/REGISTER", "history/REGISTER", "mirror RSS",
        "mirror CPU/event", "load",
    )
    rows = [
        (
            f"{figures.subscribers:,}", mib(figures.rss_started_kib), mib(figures.rss_after_traffic_kib),
            f"{figures.startup_seconds:.1f} s", f"{figures.cpu_per_register_us:,.0f} µs",
            f"{figures.cpu_per_refresh_us:,.0f} µs", figures.lookup, figures.etcd_answer, figures.loop_lag,
            f"{figures.registrar_cpu_on_others_ms:,.0f} ms", mib(figures.etcd_rss_kib),
            f"{figures.etcd_db_bytes / 1024**2:,.0f} MiB", f"{figures.etcd_db_bytes / figures.subscribers:,.0f} B",
            f"{figures.etcd_cpu_per_register_us:,.0f} µs", f"{figures.etcd_written_per_register:,.0f} B",
            f"{figures.history_per_register:,.0f} B",
            mib(figures.mirror_rss_kib), f"{figures.mirror_cpu_per_event_us:,.0f} µs", f"{figures.load_seconds:.0f} s",
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


if __name__ == "__main__" and sys.argv[1:2] == ["--mirror"]:
    mirror(sys.argv[2])
