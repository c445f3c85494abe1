"""The idle phase of `make bench`: the memory an idle TCP, TLS or WebSocket connection costs sipreg, beside Kamailio 5.6.

For each server and each kind of connection (KINDS), on a server started for
that row alone:
- a warm-up client opens WARM_UP connections and keeps them open, so that
  what the first connections pay once (OpenSSL's tables, the event loop's TLS
  machinery, Kamailio's reader buffers) is in the "before" figure, not spread
  over the connections measured;
- the server's memory is read (before), then `--idle-connections` more
  connections are opened by CLIENTS client processes (handshakes done, then
  nothing sent), the server is seen to hold them all, its memory is let
  settle and read again (after); bytes per connection = (after - before) / N.

Memory is Pss (/proc/PID/smaps_rollup) summed over the server's processes:
Kamailio forks several processes that share one shared-memory pool, where its
connections live, so summing their RSS would count each page once per process
that touched it; Pss splits a shared page between the processes mapping it, so
the sum counts it once. Only anonymous and shared memory (Pss_Anon + Pss_Shmem)
is counted, not code and libraries mapped from files, whose share moves as the
client processes map the same libraries. sipreg is one process, where this and
its RSS grow alike; RSS (VmRSS, summed) is printed too. The kernel's socket
buffers are in neither.

The client sockets are spread over source addresses 127.77.x.y (other hosts,
as far as the servers know), PER_SOURCE per address, under sipreg's default
per-source connection limit; only its total limit is raised, in the bench's
SipDomain. Everything listens on and connects to 127.0.0.0/8.

sipreg closes a connection that carried nothing for IDLE_TIMEOUT (60 s): a row
is measured within that, and checked to still hold every connection after.

To add a kind of connection: an async function that opens one idle connection,
a Kind in KINDS, and the server's port for that kind's name in its `ports` (a
server without a port for a kind leaves its row out: Kamailio here has no
WebSocket listener, as its websocket module needs more than the bench's config).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ipaddress
import json
import os
import resource
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after PYTHONPATH, which may name the compiled build

from registrar.transport import IDLE_TIMEOUT  # noqa: E402
from tests.helpers import free_port, start_registrar, stop_registrar  # noqa: E402
from tests.integration.kamailio import KAMAILIO, kamailio_version, start_kamailio, stop_kamailio  # noqa: E402
from tests.integration.kamailio import MODULES as KAMAILIO_MODULES  # noqa: E402
from tests.pki import CertificateAuthority  # noqa: E402

from run import descendants  # noqa: E402  (bench/ is on the path: this file's directory)

HOST = "127.0.0.1"
# Under sipreg's default per-source limit (256), so only the total needs raising.
PER_SOURCE = 100
WARM_UP = 100
# Two cores here: the clients' handshakes share them with the server's.
CLIENTS = 2
# Handshakes in flight per client: enough to keep the server busy, few enough that none
# waits out sipreg's 10 s handshake limit in its accept queue.
CONCURRENCY = 100
# Kamailio's own figures, for reference (kB as published).
PUBLISHED = {"kamailio": {"tcp": "4.5 kB", "tls": "4.5 + 61 kB"}}


# -- the client side: runs in its own processes (`idle_flows.py --client SPEC`) -----------------------

async def open_tcp(host: str, port: int, source: str, context: ssl.SSLContext | None) -> Any:
    _, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    return writer


async def open_tls(host: str, port: int, source: str, context: ssl.SSLContext | None) -> Any:
    # open_connection returns once the handshake is done.
    _, writer = await asyncio.open_connection(host, port, local_addr=(source, 0), ssl=context, server_hostname=host)
    return writer


async def open_websocket(host: str, port: int, source: str, context: ssl.SSLContext | None) -> Any:
    """A SIP WebSocket (RFC 7118), as a browser phone opens it: the Upgrade with the `sip` subprotocol, then idle."""
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(source, 0), ssl=context, server_hostname=host if context else None)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n")[0].decode("ascii", "replace"))
    return writer


@dataclass(frozen=True)
class Kind:
    """A kind of idle connection: its name (a server's `ports` key) and how a client opens one.

    `open(host, port, source address, TLS context or None)` returns what holds the connection open.
    """

    name: str
    open: Callable[[str, int, str, ssl.SSLContext | None], Awaitable[Any]]
    tls: bool = False


KINDS = (Kind("tcp", open_tcp), Kind("tls", open_tls, tls=True), Kind("ws", open_websocket),
         Kind("wss", open_websocket, tls=True))


def raise_open_files() -> int:
    """The soft limit on open files raised to the hard one; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def client(spec: dict) -> None:
    """Open spec["count"] connections of spec["kind"], report on stdout, hold them until stdin closes."""
    kind = next(k for k in KINDS if k.name == spec["kind"])
    context = None
    if kind.tls:
        context = ssl.create_default_context(cafile=spec["cafile"])
    sources = spec["sources"]
    limit = asyncio.Semaphore(CONCURRENCY)
    held: list[Any] = []
    errors: collections.Counter[str] = collections.Counter()

    async def one(index: int) -> None:
        async with limit:
            for attempt in range(3):
                try:
                    held.append(await asyncio.wait_for(
                        kind.open(spec["host"], spec["port"], sources[index % len(sources)], context), 30
                    ))
                    return
                except (OSError, ssl.SSLError, asyncio.TimeoutError) as error:
                    if attempt == 2:
                        errors[type(error).__name__ + (f": {error}" if str(error) else "")] += 1
                    await asyncio.sleep(0.2)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(spec["count"])))
    protocol = ""
    if kind.tls and held:
        ssl_object = held[0].get_extra_info("ssl_object")
        protocol = f"{ssl_object.version()} {ssl_object.cipher()[0]}" if ssl_object else ""
    report = {"opened": len(held), "seconds": time.monotonic() - started, "errors": dict(errors), "protocol": protocol}
    print(json.dumps(report), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in held:
        writer.close()


def client_main(spec_text: str) -> int:
    spec = json.loads(spec_text)
    if raise_open_files() < spec["count"] + 64:
        print(json.dumps({"opened": 0, "seconds": 0, "errors": {"RLIMIT_NOFILE too low": spec["count"]},
                          "protocol": ""}), flush=True)
        return 1
    try:
        import uvloop
    except ImportError:
        uvloop = None
    (uvloop.run if uvloop is not None else asyncio.run)(client(spec))
    return 0


class Clients:
    """Client processes holding `count` connections of `kind` to host:port, from `sources`, until closed."""

    def __init__(self, kind: Kind, host: str, port: int, count: int, sources: list[str], processes: int,
                 cafile: Path | None) -> None:
        self.processes: list[subprocess.Popen] = []
        share, extra = divmod(count, processes)
        # A process's connections come from its own addresses, so none passes the per-source limit.
        per_process = -(-len(sources) // processes)
        for i in range(processes):
            spec = {
                "kind": kind.name, "host": host, "port": port, "count": share + (i < extra),
                "sources": sources[i * per_process:(i + 1) * per_process] or sources,
                "cafile": str(cafile) if cafile else None,
            }
            self.processes.append(subprocess.Popen(
                [sys.executable, __file__, "--client", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            ))

    def wait_opened(self, timeout: float = 120) -> dict:
        """The clients' reports, merged: opened, seconds (the slowest's), errors, protocol."""
        merged = {"opened": 0, "seconds": 0.0, "errors": collections.Counter(), "protocol": ""}
        deadline = time.monotonic() + timeout
        for process in self.processes:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = process.stdout.readline() if ready else ""
            if not line:
                raise RuntimeError(f"an idle client did not report within {timeout:.0f} s (exit {process.poll()})")
            report = json.loads(line)
            merged["opened"] += report["opened"]
            merged["seconds"] = max(merged["seconds"], report["seconds"])
            merged["errors"].update(report["errors"])
            merged["protocol"] = merged["protocol"] or report["protocol"]
        return merged

    def close(self) -> None:
        for process in self.processes:
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()  # the client closes its connections and exits
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def source_addresses(first: str, count: int) -> list[str]:
    start = ipaddress.IPv4Address(first)
    return [str(start + i) for i in range(count)]


# -- the server side ------------------------------------------------------------------------------------

def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(Pss of anonymous and shared memory, RSS) in KiB, summed over `pids`.

    Pss_File (code and libraries) is left out: the clients, Python processes too, map the
    same libraries, and starting them would shrink the server's share of those pages.
    """
    pss = rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                    pss += int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        except OSError:
            continue  # gone meanwhile
    return pss, rss


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_quiet(pids: list[int], timeout: float = 30) -> None:
    """Until the processes stop burning CPU and their memory stops moving: what is read is what stays."""
    deadline = time.monotonic() + timeout
    cpu, (pss, _) = cpu_seconds(pids), memory_kib(pids)
    while time.monotonic() < deadline:
        time.sleep(1)
        now_cpu, (now_pss, _) = cpu_seconds(pids), memory_kib(pids)
        if now_cpu - cpu < 0.05 and abs(now_pss - pss) < 64:
            return
        cpu, pss = now_cpu, now_pss


def established(pids: list[int], port: int) -> int:
    """Connections to `port` the processes hold, i.e. have accepted (not those waiting in the accept queue)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    held = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                held.add(target[8:-1])
    return len(inodes & held)


def open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


@dataclass
class Server:
    """A server under measurement: its name, port per kind of connection, how to list its processes, stop it."""

    name: str
    ports: dict[str, int]
    pids: Callable[[], list[int]]
    stop: Callable[[], None]
    # The connections it says it holds, where it can say (sipreg's gauge): checked after measuring.
    holds: Callable[[str], int | None] = field(default=lambda kind: None)


def sipreg_server(workdir: Path, certificate, connections: int) -> Server:
    """`sipreg serve` with the in-memory store, a domain allowing `connections`, the bench's certificate."""
    manifests = workdir / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "idle.yaml").write_text(
        f"""apiVersion: sipreg.io/v1alpha1
kind: SipDomain
metadata: {{name: idle, namespace: bench}}
spec:
  domain: idle.bench.example.test
  registration: {{enabled: true}}
  security: {{connections: {{total: {connections}}}}}
"""
    )
    registrar = start_registrar(
        workdir, "--log-level", "warning", "--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key),
        manifests=manifests,
    )

    def holds(kind: str) -> int | None:
        value = registrar.metric("sipreg_connections", transport=kind)
        return None if value is None else int(value)

    return Server(
        "sipreg", {"tcp": registrar.sip_port, "tls": registrar.tls_port, "ws": registrar.ws_port,
                   "wss": registrar.wss_port},
        lambda: [registrar.process.pid], lambda: stop_registrar(registrar), holds,
    )


KAMAILIO_CONFIG = """#!KAMAILIO
debug=1
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
listen=tcp:{host}:{tcp_port}
listen=tls:{host}:{tls_port}
enable_tls=yes
tcp_max_connections={connections}
tls_max_connections={connections}
open_files_limit={files}
tcp_connection_lifetime=3600
mpath="{modules}"
loadmodule "tls.so"
modparam("tls", "certificate", "{cert}")
modparam("tls", "private_key", "{key}")
# Its default is TLSv1.0 alone, which OpenSSL 3 clients refuse.
modparam("tls", "tls_method", "TLSv1.2+")

request_route {{
    drop;
}}
"""


def kamailio_server(workdir: Path, certificate, connections: int) -> Server:
    """Kamailio with a tcp and a tls listener and nothing else: the core's connections and the tls module's."""
    tcp_port, tls_port = free_port(HOST), free_port(HOST)
    # Shared memory sized for the TLS row (its pages count only once touched).
    process, log_path = start_kamailio(workdir, KAMAILIO_CONFIG.format(
        host=HOST, tcp_port=tcp_port, tls_port=tls_port, connections=connections, files=connections + 1024,
        modules=KAMAILIO_MODULES, cert=certificate.cert, key=certificate.key,
    ), shared_mb=2048, private_mb=16)

    def stop() -> None:
        stop_kamailio(process)

    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"kamailio exited ({process.returncode}): {log_path.read_text()[-2000:]}")
        try:
            for port in (tcp_port, tls_port):
                with socket.create_connection((HOST, port), timeout=1):
                    pass
            break
        except OSError:
            if time.monotonic() > deadline:
                stop()
                raise RuntimeError(f"kamailio did not listen within 20 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
    return Server("kamailio", {"tcp": tcp_port, "tls": tls_port}, lambda: descendants(process.pid), stop)


# -- one row ------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One server's figures for one kind of connection: memory before and after opening them."""

    server: str
    kind: str
    opened: int = 0
    seconds: float = 0.0
    before: tuple[int, int] = (0, 0)  # (Pss, RSS) KiB
    after: tuple[int, int] = (0, 0)
    processes: int = 0
    protocol: str = ""
    note: str = ""

    def per_connection(self, which: int) -> float:
        return (self.after[which] - self.before[which]) * 1024 / self.opened if self.opened else float("nan")


def measure(server: Server, kind: Kind, count: int, cafile: Path) -> Row:
    port = server.ports[kind.name]
    row = Row(server.name, kind.name)
    pids = server.pids()
    need = count + WARM_UP + 64
    limit = min(open_files_limit(pid) for pid in pids)
    if limit < need:
        row.note = f"open-files limit {limit} < {need}: not measured"
        return row
    # Warm-up and measured connections from different addresses, so neither passes a per-source limit.
    warm = Clients(kind, HOST, port, WARM_UP, source_addresses("127.77.0.1", -(-WARM_UP // PER_SOURCE)), 1, cafile)
    clients = None
    try:
        warmed = warm.wait_opened()
        if warmed["opened"] < WARM_UP:
            row.note = "warm-up failed: " + ", ".join(f"{n} x {e}" for e, n in warmed["errors"].most_common(3))
            return row
        wait_for_accepted(server, port, WARM_UP)
        pids = server.pids()
        wait_quiet(pids)
        row.before = memory_kib(pids)
        started = time.monotonic()
        sources = source_addresses("127.77.1.1", -(-count // PER_SOURCE))
        clients = Clients(kind, HOST, port, count, sources, CLIENTS, cafile)
        report = clients.wait_opened()
        accepted = wait_for_accepted(server, port, WARM_UP + count) - WARM_UP
        pids = server.pids()
        wait_quiet(pids, timeout=max(5.0, IDLE_TIMEOUT - 15 - (time.monotonic() - started)))
        row.after = memory_kib(pids)
        elapsed = time.monotonic() - started
        row.opened, row.seconds, row.protocol, row.processes = accepted, report["seconds"], report["protocol"], len(pids)
        notes = []
        if report["errors"]:
            notes.append("client errors: " + ", ".join(f"{n} x {e}" for e, n in report["errors"].most_common(3)))
        held = server.holds(kind.name)
        if held is not None and held < WARM_UP + count:
            notes.append(f"the server holds {held - WARM_UP} after measuring")
        if elapsed > IDLE_TIMEOUT:
            notes.append(f"measured {elapsed:.0f} s after the first connection, past the {IDLE_TIMEOUT:.0f} s idle timeout")
        row.note = "; ".join(notes)
    finally:
        if clients is not None:
            clients.close()
        warm.close()
    return row


def wait_for_accepted(server: Server, port: int, count: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (accepted := established(server.pids(), port)) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return accepted


# -- the phase ----------------------------------------------------------------------------------------

def idle_phase(tmp_path: Path, count: int = 10_000) -> list[str]:
    """Every (server, kind) row; the report's lines (the table)."""
    limit = raise_open_files()  # the servers inherit it; Kamailio raises its own
    if limit < count + WARM_UP + 1024:
        return [f"idle: the open-files limit ({limit}) is too low for {count:,} connections: not measured"]
    workdir = tmp_path / "idle"
    workdir.mkdir(parents=True, exist_ok=True)
    certificate = CertificateAuthority(workdir / "pki", "sipreg idle bench CA").issue("server", server_names=[HOST])
    servers: list[tuple[str, Callable[[Path], Server]]] = [
        ("sipreg", lambda directory: sipreg_server(directory, certificate, count + WARM_UP + 100)),
    ]
    if KAMAILIO is not None and Path(KAMAILIO_MODULES, "tls.so").exists():
        servers.append(("kamailio", lambda directory: kamailio_server(directory, certificate, count + WARM_UP + 100)))
    rows: list[Row] = []
    for name, start in servers:
        for kind in KINDS:
            print(f"idle: {count:,} idle {kind.name} connections to {name}", flush=True)
            directory = workdir / f"{name}-{kind.name}"
            directory.mkdir()
            try:
                server = start(directory)
            except RuntimeError as error:
                rows.append(Row(name, kind.name, note=f"did not start: {str(error)[:300]}"))
                continue
            try:
                row = measure(server, kind, count, certificate.ca) if kind.name in server.ports else None
            finally:
                server.stop()
            if row is not None:
                rows.append(row)
                print("  " + describe(row), flush=True)
    missing = [] if len(servers) > 1 else ["  (kamailio or its tls module is missing: `make bench` installs them)"]
    return table(rows, count, kamailio_version()) + missing


def describe(row: Row) -> str:
    return (
        f"{row.server} {row.kind}: {row.opened:,} connections in {row.seconds:.1f} s, Pss {row.before[0] / 1024:.1f} -> "
        f"{row.after[0] / 1024:.1f} MiB over {row.processes} process(es): {row.per_connection(0):,.0f} bytes each"
        + (f" ({row.note})" if row.note else "")
    )


def table(rows: list[Row], count: int, kamailio: str) -> list[str]:
    names = {"sipreg": "sipreg (uvloop)", "kamailio": kamailio}
    lines = [
        f"idle connections: memory per connection, {count:,} opened after {WARM_UP} warm-up ones, all held idle "
        f"(Pss_Anon + Pss_Shmem summed over the server's processes; kB = 1,000 bytes)",
        f"  {'server':<16} {'kind':<5} {'opened':>7} {'in':>6} {'Pss before':>11} {'Pss after':>10} "
        f"{'per conn (Pss)':>15} {'(RSS)':>9} {'published':>12}",
    ]
    for row in rows:
        published = PUBLISHED.get(row.server, {}).get(row.kind, "")
        lines.append(
            f"  {names.get(row.server, row.server):<16} {row.kind:<5} {row.opened:>7,} {row.seconds:>5.1f}s "
            f"{row.before[0] / 1024:>7.1f} MiB {row.after[0] / 1024:>6.1f} MiB "
            f"{row.per_connection(0) / 1000:>12.1f} kB {row.per_connection(1) / 1000:>6.1f} kB {published:>12}"
        )
    for server in dict.fromkeys(row.server for row in rows):
        by_kind = {row.kind: row for row in rows if row.server == server and row.opened}
        if "tcp" in by_kind and "tls" in by_kind:
            extra = by_kind["tls"].per_connection(0) - by_kind["tcp"].per_connection(0)
            lines.append(
                f"  {names.get(server, server)}: TLS adds {extra / 1000:.1f} kB per connection over TCP "
                f"({by_kind['tls'].protocol})"
            )
    lines += [f"  {row.server} {row.kind}: {row.note}" for row in rows if row.note]
    return lines


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", help=argparse.SUPPRESS)  # a client process's spec (JSON)
    parser.add_argument("--idle-connections", type=int, default=10_000, help="idle connections per row")
    args = parser.parse_args()
    if args.client:
        return client_main(args.client)
    # Children (servers, clients) get a SIGTERM of their own from the finally blocks; a Ctrl-C reaches them too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="sipreg-idle-") as tmp:
        lines = idle_phase(Path(tmp), args.idle_connections)
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
