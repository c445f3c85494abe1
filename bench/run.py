"""`make bench`: drives a real `sipreg serve` with sipp on loopback and prints the figures.

Measures, for the in-memory store:
- authenticated REGISTERs per second (401 challenge + REGISTER with digest + 200,
  counted once) with under 1% failures, over UDP and over TCP: a ladder of
  offered rates, each held for --duration seconds, the best that passes wins;
- past it (the `overload` phase), at 1.25, 1.5 and 2 times the best UDP rate: the 200 OKs a
  second the registrar still sends, the registrations that fail, the datagrams shed stale;
- p50/p99 response time of each leg at half the best UDP rate (sipp's rtt trace);
- resident memory with --bindings bindings, and the growth per binding;
and for the etcd store (a real etcd on loopback, data on this machine's disk):
- the UDP ladder again, with etcd transactions/s, AOR writes per transaction and
  the p99 of an etcd write at each rate, and the share of the in-memory rate;
- REGISTER latency at half the best etcd rate;
and calls per second through the proxy (INVITE ... BYE), for one registrar and for
two replicas on one etcd, with call setup time: bench/calls.py; the UDP ladder again
with the per-source limits exempting sipp (what the defences cost); a scanner's
INVITE flood and the registrar's memory under it: bench/flood.py; the memory of
10,000 idle TCP and TLS connections, beside Kamailio's: bench/idle_flows.py; CPU per
authenticated registration at fixed rates and the best rate, beside Kamailio as a
registrar: bench/kamailio_registrar.py; a registrar's memory and CPU against the
subscribers etcd holds (--scale-sizes, 100,000 and 1,000,000): bench/scale.py.

The registrar and sipp are pinned to different cores when taskset exists, so
they do not fight over one. Nothing here is a pass/fail test: figures vary with
the machine's load, so they are printed, not asserted.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import re
import shutil
import struct
import subprocess
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after PYTHONPATH, which may name the compiled build

from tests.etcd_server import EtcdServer  # noqa: E402
from tests.helpers import sample_value, start_registrar, stop_registrar  # noqa: E402
from tests.integration.sipp import SCENARIOS, run_sipp, users_csv  # noqa: E402

DOMAIN = "bench.example.test"
# Up to 20,000/s: Kamailio (the `kamailio` phase) passes 12,000/s, and a best at the top rung is only a floor.
LADDER = (1000, 2000, 3000, 4000, 4500, 5000, 5500, 6000, 7000, 8000, 10000, 12000, 14000, 16000, 20000)
TASKSET = shutil.which("taskset")
TCPDUMP = shutil.which("tcpdump")
TARGET_LATENCY_RATE = 2500
# What --skip and --only name; calls and calls-replicas are bench/calls.py's.
PHASES = [
    "udp", "overload", "tcp", "latency", "defences", "flood", "etcd", "calls", "calls-replicas", "calls-kamailio",
    "memory", "idle", "kamailio", "scale", "trace",
]
# Phases that drive sipp (idle_flows.py opens its connections itself; trace counts instructions in process).
SIPP_PHASES = set(PHASES) - {"idle", "trace"}
# The Contact port of sipp's REGISTERs: not sipp's source port, so the registrar must keep the source (NAT).
CONTACT_PORT = 5999
# Of the in-memory store's best UDP rate. A rung's achieved rate is about 1% under its offered
# one (sipp's start and drain count), so a store that holds 70% but not 80% read as 69% without
# the rung between them.
ETCD_SHARES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)


def pinned(cpu: int) -> list[str]:
    return [TASKSET, "-c", str(cpu)] if TASKSET else []


def latency_figures(registrar, workdir: Path, csv_path: Path, rate: float, duration: float) -> list[str]:
    """p50/p99 over UDP at `rate`: on the wire, as sipp sees it, and as the registrar does.

    The wire figure (tcpdump on loopback, each REGISTER paired with its answer by
    Via branch) is the one to trust: it includes the time a datagram waits in the
    registrar's socket buffer, which the registrar's own histogram cannot see,
    and none of sipp's scheduling, which sipp's 1 ms-tick figure includes.
    """
    print(f"latency at {rate:,.0f}/s over udp", flush=True)
    wait_idle(registrar)
    before = server_latency(registrar)
    pcap = workdir / "latency.pcap"
    capture = start_capture(pcap, registrar.sip_port)
    try:
        register_run(registrar, workdir, csv_path, "udp", rate, int(rate * duration), rtt=True)
    finally:
        stop_capture(capture)
    after = server_latency(registrar)
    lines = []
    if capture is not None:
        for leg, values in sorted(wire_latencies(pcap, registrar.sip_port).items()):
            lines.append(
                f"udp at {rate:,.0f}/s, on the wire: {leg} leg p50 {percentile(values, 0.5):.2f} ms, "
                f"p99 {percentile(values, 0.99):.2f} ms, max {max(values):.1f} ms ({len(values)} exchanges)"
            )
    lines += [
        f"udp at {rate:,.0f}/s, seen by sipp (1 ms ticks): {name} leg p50 {p50:.0f} ms, p99 {p99:.0f} ms"
        for name, (p50, p99, _) in sorted(latencies(workdir).items())
    ]
    lines.append(
        f"udp at {rate:,.0f}/s, inside the registrar (receive to send): "
        f"p50 {histogram_quantile(before, after, 0.5) * 1000:.2f} ms, p99 {histogram_quantile(before, after, 0.99) * 1000:.2f} ms"
    )
    return lines


def start_capture(pcap: Path, port: int, protocol: str = "udp") -> subprocess.Popen | None:
    """tcpdump on loopback for `port` (the registrar's SIP port; etcd's, over tcp), or None, with a note,
    when it cannot run."""
    if TCPDUMP is None:
        print("bench: no tcpdump, so no on-the-wire latency (`make bench` installs it as root)", flush=True)
        return None
    capture = subprocess.Popen(
        [TCPDUMP, "-i", "lo", "-w", str(pcap), "-B", "65536", "-s", "0", "-U", f"{protocol} port {port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # tcpdump opens the interface asynchronously
    if capture.poll() is not None:
        print("bench: tcpdump could not capture (not root?), so no on-the-wire latency", flush=True)
        return None
    return capture


def stop_capture(capture: subprocess.Popen | None) -> None:
    if capture is not None:
        time.sleep(0.5)
        capture.terminate()
        capture.wait(timeout=10)


def wire_latencies(pcap: Path, port: int) -> dict[str, list[float]]:
    """Milliseconds from each REGISTER to its answer in a loopback capture, by leg."""
    pending: dict[bytes, tuple[float, str]] = {}
    legs: dict[str, list[float]] = {"challenge": [], "register": []}
    for when, source_port, destination_port, payload in udp_packets(pcap):
        branch = re.search(rb"branch=([^;,\r\n]+)", payload)
        if branch is None:
            continue
        if destination_port == port and payload.startswith(b"REGISTER "):
            pending[branch[1]] = (when, "register" if b"\r\nAuthorization:" in payload else "challenge")
        elif source_port == port and branch[1] in pending:
            sent, leg = pending.pop(branch[1])
            legs[leg].append((when - sent) * 1000)
    return {leg: values for leg, values in legs.items() if values}


def udp_packets(pcap: Path):
    """(seconds, source port, destination port, payload) of each UDP packet in a loopback capture.

    pcap is simple enough to read here: a 24-byte file header, then per packet
    a 16-byte record header; on loopback an Ethernet header, IPv4, UDP.
    """
    data = pcap.read_bytes() if pcap.exists() else b""
    offset = 24
    while offset + 16 <= len(data):
        seconds, micros, length, _ = struct.unpack_from("<IIII", data, offset)
        packet = data[offset + 16 : offset + 16 + length]
        offset += 16 + length
        ip = packet[14:]
        udp = ip[(ip[0] & 0x0F) * 4 :]
        source_port, destination_port = struct.unpack_from(">HH", udp)
        yield seconds + micros / 1e6, source_port, destination_port, udp[8:]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# sipp is one source address sending thousands of requests a second: with the default per-source
# limits it would be banned in a second. The limits stay on (every request still pays for its token)
# with a budget no benchmark exhausts; DEFENCES_OFF exempts the address instead (the phase "defences").
# Over TCP with a connection per registration (`tcp-per-call`), sipp is thousands of phones, each with
# its own connection, from one address: connections per source are raised with the total.
DEFENCES_ON = (
    "{rateLimit: {requestsPerSecond: 2000000000, burst: 2000000000, banAfter: 2000000000}, "
    "connections: {perSource: 50000, total: 50000}}"
)
DEFENCES_OFF = '{trustedNetworks: ["127.0.0.0/8"]}'


def write_manifests(
    directory: Path, users: int, max_contacts: int = 5, security: str = DEFENCES_ON
) -> list[tuple[str, str]]:
    """A domain and `users` credential connections, as one multi-document file."""
    credentials = [(f"u{i:06d}", f"pw-{i}") for i in range(users)]
    docs = [
        f"""apiVersion: sipreg.io/v1alpha1
kind: SipDomain
metadata: {{name: bench, namespace: bench}}
spec:
  domain: {DOMAIN}
  registration: {{enabled: true, minExpires: 60, defaultExpires: 600, maxExpires: 3600}}
  security: {security}
  # No NAT pings: sipp's Contacts look NATed (port 5999, not its source port) and it answers no
  # OPTIONS, so they would be removed after three; and Kamailio beside us does not ping either.
  keepalive: {{pingIntervalSeconds: 0}}
"""
    ]
    for user, password in credentials:
        docs.append(
            f"""apiVersion: v1
kind: Secret
metadata: {{name: {user}, namespace: bench}}
stringData: {{password: {password}}}
---
apiVersion: sipreg.io/v1alpha1
kind: SipConnection
metadata: {{name: {user}, namespace: bench}}
spec:
  domain: {DOMAIN}
  username: {user}
  authentication: {{type: credentials, passwordSecretRef: {{name: {user}}}}}
  maxContacts: {max_contacts}
"""
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.yaml").write_text("---\n".join(docs))
    return credentials


def register_run(
    registrar, workdir: Path, csv_path: Path, transport: str, rate: float, calls: int, rtt: bool = False,
    scenario: str | Path = "register_auth.xml", keys: dict[str, str] | None = None,
):
    extra = ["-l", str(max(1000, int(rate * 2)))]
    if rtt:
        extra += ["-trace_rtt", "-rtt_freq", "1"]
    started = time.monotonic()
    run = run_sipp(
        scenario, f"{registrar.host}:{registrar.sip_port}", workdir=workdir, transport=transport,
        calls=calls, rate=rate, injection=csv_path,
        keys={"contact_port": str(CONTACT_PORT), "expires": "3600", **(keys or {})},
        timeout=max(60, calls / rate * 3), extra=extra, wrapper=pinned(1), trace_messages=False,
    )
    elapsed = time.monotonic() - started
    return run, elapsed


def ladder(
    registrar, workdir: Path, csv_path: Path, transport: str, duration: float, etcd: bool = False,
    rates: tuple[int, ...] = LADDER,
) -> tuple[float, list[str]]:
    def attempt(rate: float, calls: int):
        before = scrape(registrar) if etcd else ""
        run, elapsed = register_run(registrar, workdir, csv_path, transport, rate, calls)
        seconds = run.elapsed or elapsed  # sipp's own clock when it has one
        notes = ["    " + store_figures(before, scrape(registrar), seconds)] if etcd else []
        return run, seconds, notes

    return climb(transport, rates, duration, attempt, [registrar])


def climb(label: str, rates, duration: float, attempt, registrars) -> tuple[float, list[str]]:
    """Offered rates, each held `duration` s, until one fails: the best achieved rate, and a line per rung.

    attempt(rate, calls) runs sipp and returns (SippRun, seconds the achieved rate is over, extra lines).
    A rung passes with under 1% failures, 99% of its calls run, and 90% of its rate achieved.
    Each rung starts when every one of `registrars` is idle.
    """
    best = 0.0
    lines = []
    for rate in rates:
        calls = int(rate * duration)
        for registrar in registrars:
            wait_idle(registrar)
        run, seconds, notes = attempt(rate, calls)
        total = run.successful + run.failed
        failures = run.failed / total if total else 1.0
        achieved = run.successful / seconds if seconds > 0 else 0.0
        ok = failures < 0.01 and total >= calls * 0.99 and achieved >= rate * 0.9
        lines.append(
            f"  {label} offered {rate:>6}/s: {run.successful:>7} ok, {run.failed:>5} failed "
            f"({failures:.2%}), {achieved:,.0f}/s achieved{'' if ok else '  <- over the limit'}"
        )
        print(lines[-1], flush=True)
        for note in notes:
            lines.append(note)
            print(note, flush=True)
        if not ok:
            break
        best = max(best, achieved)
    return best, lines


# Past the knee: offered rates as multiples of the best one (the `overload` phase).
OVERLOAD = (1.25, 1.5, 2.0)


def overload_curve(registrar, workdir: Path, csv_path: Path, best: float, duration: float) -> list[str]:
    """Offered past the best UDP rate: what is answered, what fails, what is shed, rate by rate.

    What a registrar gets done is read off its own count of 200 OKs each second while sipp
    offers (the median second): sipp's achieved rate would also count the tail of retransmissions
    after the offer ends. A registration fails when sipp gives up on it (its retransmissions spent).
    """
    lines = ["udp past the best rate: offered, 200 OK/s while offered (median second), failed, shed stale"]
    print(lines[0], flush=True)
    for factor in OVERLOAD:
        rate = round(best * factor)
        wait_idle(registrar)
        before = scrape(registrar)
        seconds: list[tuple[float, float]] = []
        offered = threading.Event()

        def count_answers() -> None:
            while True:
                seconds.append((time.monotonic(), answered_registrations(registrar)))
                if offered.wait(1):
                    return

        sampler = threading.Thread(target=count_answers)
        sampler.start()
        try:
            run, _ = register_run(registrar, workdir, csv_path, "udp", rate, int(rate * duration))
        finally:
            offered.set()
            sampler.join()
        after = scrape(registrar)
        # The seconds of the offer, less the first (sipp starting): (count, time) differences.
        per_second = [(b - a) / (t2 - t1) for (t1, a), (t2, b) in zip(seconds, seconds[1:])][1 : int(duration)]
        answered = statistics.median(per_second) if per_second else 0.0
        total = run.successful + run.failed
        shed = counter(after, "sipreg_udp_stale_shed_total") - counter(before, "sipreg_udp_stale_shed_total")
        lines.append(
            f"  udp offered {rate:>6}/s ({factor:.2f}x): {answered:>6,.0f} 200 OK/s, {run.failed:>5} failed "
            f"({run.failed / total if total else 1:.1%}), {shed:>7,.0f} datagrams shed"
        )
        print(lines[-1], flush=True)
    return lines


def latencies(workdir: Path) -> dict[str, tuple[float, float, int]]:
    """p50/p99 (ms) per rtd from sipp's rtt trace files."""
    samples: dict[str, list[float]] = {}
    for path in workdir.glob("*_rtt.csv"):
        with path.open() as f:
            for row in csv.reader(f, delimiter=";"):
                if len(row) < 3 or not row[1].replace(".", "", 1).isdigit():
                    continue
                samples.setdefault(row[2], []).append(float(row[1]))
        path.unlink()
    result = {}
    for name, values in samples.items():
        values.sort()
        result[name] = (statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))], len(values))
    return result


def scrape(registrar) -> str:
    with urllib.request.urlopen(f"http://{registrar.http_host}:{registrar.http_port}/metrics", timeout=10) as response:
        return response.read().decode()


def histogram(metrics: str, name: str, selector: str = "") -> dict[float, float]:
    """A cumulative histogram (upper bound in s -> count) from /metrics text."""
    buckets = {}
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket") and selector in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets[float(bound)] = float(line.split()[-1])
    return buckets


def answered_registrations(registrar) -> float:
    """The 200 OKs the registrar has sent to REGISTERs so far."""
    return sample_value(scrape(registrar), "sipreg_registrations_total", domain=DOMAIN, status="200") or 0.0


def counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    return 0.0


def server_latency(registrar) -> dict[float, float]:
    """Cumulative REGISTER latency histogram from /metrics."""
    return histogram(scrape(registrar), "sipreg_request_duration_seconds", 'method="REGISTER"')


def store_figures(before: str, after: str, seconds: float) -> str:
    """etcd writes between two /metrics readings: transactions/s, AORs per transaction, p99 of a write."""
    writes = counter(after, "sipreg_store_writes_total") - counter(before, "sipreg_store_writes_total")
    aors = counter(after, "sipreg_store_aors_written_total") - counter(before, "sipreg_store_aors_written_total")
    conflicts = counter(after, "sipreg_store_conflicts_total") - counter(before, "sipreg_store_conflicts_total")
    p99 = histogram_quantile(
        histogram(before, "sipreg_store_write_duration_seconds"), histogram(after, "sipreg_store_write_duration_seconds"),
        0.99,
    )
    return (
        f"etcd: {writes / seconds:,.0f} transactions/s carrying {aors / seconds:,.0f} AOR writes/s "
        f"({aors / max(writes, 1):.1f} per transaction, {conflicts:.0f} compares lost), "
        f"write p99 {p99 * 1000:.1f} ms"
    )


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile of the observations between two histogram readings, interpolated in its bucket (s)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1]
    if not total:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return bounds[-1]


def wait_idle(registrar, timeout: float = 60) -> None:
    """Wait until the registrar stops burning CPU: a run over the limit leaves a backlog
    in its socket buffers, and the next measurement must not start on top of it."""
    hz = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    before = tree_cpu_ticks(registrar.process.pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = tree_cpu_ticks(registrar.process.pid)
        if (now - before) / hz < 0.05:
            return
        before = now


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def descendants(pid: int) -> list[int]:
    """`pid` and every process under it."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending += children.get(current, [])
    return found


def tree_cpu_ticks(pid: int) -> int:
    """CPU ticks of `pid` and every process under it: sipreg is one process, Kamailio a main one and its workers."""
    total = 0
    for process in descendants(pid):
        try:
            total += cpu_ticks(process)
        except OSError:  # ended between the listing and the reading
            pass
    return total


def cpu_per_registration(
    registrar, workdir: Path, csv_path: Path, rate: float, duration: float, transport: str = "udp"
):
    """Offer `rate` authenticated REGISTERs/s over `transport` for `duration` s: (µs of the registrar's CPU
    per successful registration, over its whole process tree; the sipp run; its achieved rate)."""
    wait_idle(registrar)
    before = tree_cpu_ticks(registrar.process.pid)
    run, elapsed = register_run(registrar, workdir, csv_path, transport, rate, int(rate * duration))
    ticks = tree_cpu_ticks(registrar.process.pid) - before
    microseconds = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(run.successful, 1)
    return microseconds, run, run.successful / (run.elapsed or elapsed)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def domain_gauge(registrar, name: str) -> int:
    """The registrar's gauge `name` of the bench's domain (0 before it has one)."""
    for line in scrape(registrar).splitlines():
        if line.startswith(f'{name}{{domain="{DOMAIN}"}}'):
            return int(float(line.split()[-1]))
    return 0


def binding_count(registrar) -> int:
    """Bindings of a registrar that holds them all (the memory store's)."""
    return domain_gauge(registrar, "sipreg_bindings")


def trace_cost() -> list[str]:
    """What recording every message for `sipreg trace` costs a registration: bench/instructions.py's count
    (callgrind, stable on a shared machine) with the recorder on, as registrars run, and off."""
    if shutil.which("valgrind") is None:
        return ["trace: not measured: valgrind is missing (make bench installs it)"]
    counts = {}
    for setting in ("off", "on"):
        print(f"trace: instructions per registration, recorder {setting}", flush=True)
        output = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "instructions.py"), "--trace", setting],
            capture_output=True, text=True, check=True,
        ).stdout
        found = re.search(r"([\d,]+) instructions per registration", output)
        if found is None:
            return [f"trace: bench/instructions.py printed no count: {output.strip()[-200:]}"]
        counts[setting] = int(found.group(1).replace(",", ""))
    extra = counts["on"] - counts["off"]
    return [
        f"trace: {counts['on']:,} instructions per authenticated registration with every message recorded for "
        f"`sipreg trace`, {counts['off']:,} without: {extra:,} more ({extra / counts['off']:.1%}; both legs, "
        f"in process, no system calls)"
    ]


def memory_figure(tmp_path: Path, bindings: int, contacts_per_user: int = 10) -> str:
    """RSS with `bindings` bindings, and what each one adds.

    Parsing manifests frees tens of MiB that the first bindings then reuse, so
    the catalogue is kept small (bindings / contacts_per_user users, each with
    that many Contacts) and growth is measured over the second half of the
    bindings only. Registered over TCP, where no response is kept for
    retransmissions, so the growth is the bindings' own.
    """
    print(f"memory with {bindings:,} bindings", flush=True)
    users = write_manifests(tmp_path / "memory-manifests", bindings // contacts_per_user, contacts_per_user)
    csv_path = users_csv(tmp_path / "memory.csv", users, DOMAIN)
    # Each call registers a Contact of its own: sip:USER-RUN-CALLNUMBER@...
    scenario = tmp_path / "register_many_contacts.xml"
    scenario.write_text(
        (SCENARIOS / "register_auth.xml").read_text().replace("<sip:[field0]@[local_ip]", "<sip:[field0]-[run]-[call_number]@[local_ip]")
    )
    registrar = start_registrar(
        tmp_path, "--log-level", "warning", manifests=tmp_path / "memory-manifests", wrapper=pinned(0),
        ready_timeout=300,
    )
    try:
        half = bindings // 2
        register_run(registrar, tmp_path, csv_path, "tcp", 2000, half, scenario=scenario, keys={"run": "a"})
        at_half, bindings_half = rss_kib(registrar.process.pid), binding_count(registrar)
        register_run(
            registrar, tmp_path, csv_path, "tcp", 2000, bindings - half, scenario=scenario, keys={"run": "b"}
        )
        at_all, bindings_all = rss_kib(registrar.process.pid), binding_count(registrar)
    finally:
        stop_registrar(registrar)
    per_binding = (at_all - at_half) * 1024 / max(bindings_all - bindings_half, 1)
    return (
        f"memory: RSS {at_all / 1024:,.0f} MiB with {bindings_all:,} bindings of {len(users):,} users; "
        f"{per_binding:,.0f} bytes per binding (RSS growth from {bindings_half:,} to {bindings_all:,})"
    )


def defences_figures(
    tmp_path: Path, users: int, csv_path: Path, duration: float, defended: float | None
) -> list[str]:
    """The UDP ladder again with sipp's address exempt from the per-source limits: what the defences cost."""
    print("udp with the per-source limits off (sipp's address trusted)", flush=True)
    write_manifests(tmp_path / "manifests-undefended", users, security=DEFENCES_OFF)
    registrar = start_registrar(
        tmp_path, "--log-level", "warning", manifests=tmp_path / "manifests-undefended", wrapper=pinned(0),
        ready_timeout=300,
    )
    try:
        undefended, lines = ladder(registrar, tmp_path, csv_path, "udp", duration)
    finally:
        stop_registrar(registrar)
    lines.append(f"udp, per-source limits off: {undefended:,.0f} authenticated REGISTER/s with < 1% failures")
    if defended and undefended:
        lines.append(f"  with them on (the udp figure above): {defended / undefended:.1%} of that")
    return lines


def etcd_figures(tmp_path: Path, csv_path: Path, duration: float, memory_best: float | None) -> list[str]:
    """The UDP ladder again with the registrar on a real etcd (etcd's data on this machine's disk)."""
    print("udp with the etcd store: authenticated REGISTERs per second", flush=True)
    with EtcdServer(tmp_path) as etcd:
        registrar = start_registrar(
            tmp_path, "--log-level", "warning", "--store", etcd.url, manifests=tmp_path / "manifests",
            wrapper=pinned(0), ready_timeout=300,
        )
        try:
            # The question is the share of the in-memory rate, so the rungs are shares of it.
            rates = tuple(round(memory_best * share) for share in ETCD_SHARES) if memory_best else LADDER
            best, lines = ladder(registrar, tmp_path, csv_path, "udp", duration, etcd=True, rates=rates)
            share = f", {best / memory_best:.0%} of the in-memory store's rate" if memory_best else ""
            lines.append(f"udp, etcd store: {best:,.0f} authenticated REGISTER/s with < 1% failures{share}")
            if best:
                lines += latency_figures(registrar, tmp_path, csv_path, round(best / 2), duration)
        finally:
            stop_registrar(registrar)
    return lines


def table_sizes(text: str) -> list[int]:
    """--scale-sizes: "100000,1000000" -> [100000, 1000000]."""
    return [int(size) for size in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000, help="users in the throughput runs")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per offered rate")
    parser.add_argument("--bindings", type=int, default=100_000, help="bindings for the memory figure")
    parser.add_argument("--skip", action="append", default=[], choices=PHASES, help="leave out a phase (repeatable)")
    parser.add_argument("--only", action="append", default=[], choices=PHASES, help="run only this phase (repeatable)")
    parser.add_argument("--callees", type=int, default=200, help="registered users the calls phases call")
    parser.add_argument("--call-hold", type=float, default=1.0, help="seconds between a call's ACK and its BYE")
    parser.add_argument(
        "--calls-duration", type=float, default=40.0,
        help="seconds per offered rate in the calls phases (default 40: more than the 32 s a finished transaction is kept)",
    )
    parser.add_argument("--flood-duration", type=float, default=15.0, help="seconds of each flood run")
    parser.add_argument(
        "--scale-sizes", type=table_sizes, default=table_sizes("100000,1000000"),
        help="subscribers in etcd for each run of the scale phase, comma-separated",
    )
    parser.add_argument("--idle-connections", type=int, default=10_000, help="idle connections per row of the idle phase")
    parser.add_argument(
        "--calls-transport", default="udp", choices=["udp", "tcp"], help="transport of the calls phases' callers and callees"
    )
    args = parser.parse_args()
    if args.only:
        args.skip = [phase for phase in PHASES if phase not in args.only]
    if SIPP_PHASES - set(args.skip) and shutil.which("sipp") is None:
        print("bench: sipp is not installed (`make bench` installs Debian's sip-tester)", file=sys.stderr)
        return 2

    report = ["sipreg benchmark (in-memory store, one registrar process, sipp on loopback)"]
    with tempfile.TemporaryDirectory(prefix="sipreg-bench-") as tmp:
        tmp_path = Path(tmp)
        users = write_manifests(tmp_path / "manifests", args.users)
        throughput_csv = users_csv(tmp_path / "users.csv", users[: args.users], DOMAIN)
        best: dict[str, float] = {}
        transports = [transport for transport in ("udp", "tcp") if transport not in args.skip]
        registrar = start_registrar(
            tmp_path, "--log-level", "warning", manifests=tmp_path / "manifests", wrapper=pinned(0),
                ready_timeout=300,
        ) if transports else None
        try:
            for transport in transports:
                print(f"{transport}: authenticated REGISTERs per second", flush=True)
                best[transport], lines = ladder(registrar, tmp_path, throughput_csv, transport, args.duration)
                report += lines
                report.append(f"{transport}: {best[transport]:,.0f} authenticated REGISTER/s with < 1% failures")
                if transport == "udp" and "overload" not in args.skip and best["udp"]:
                    report += overload_curve(registrar, tmp_path, throughput_csv, best["udp"], args.duration)
                if transport == "udp" and "latency" not in args.skip and best["udp"]:
                    # At half the best rate (the figure asked for) and at 2,500/s (the target's rate).
                    for rate in sorted({round(best["udp"] / 2), TARGET_LATENCY_RATE}):
                        report += latency_figures(registrar, tmp_path, throughput_csv, rate, args.duration)
        finally:
            if registrar is not None:
                stop_registrar(registrar)

        if "defences" not in args.skip:
            report += defences_figures(tmp_path, args.users, throughput_csv, args.duration, best.get("udp"))

        if "flood" not in args.skip:
            from flood import flood_phase  # imports this file as `run`, like calls.py

            report += flood_phase(tmp_path, args.flood_duration)

        if "etcd" not in args.skip:
            report += etcd_figures(tmp_path, throughput_csv, args.duration, best.get("udp"))

        if {"calls", "calls-replicas", "calls-kamailio"} - set(args.skip):
            # calls.py imports its helpers from this file (as the module `run`), so it comes in only here.
            from calls import calls_phase

            report += calls_phase(
                tmp_path, args.skip, args.callees, args.calls_transport, args.calls_duration, args.call_hold
            )

        if "memory" not in args.skip:
            report.append(memory_figure(tmp_path, args.bindings))

        if "idle" not in args.skip:
            from idle_flows import idle_phase

            report += idle_phase(tmp_path, args.idle_connections)

        if "kamailio" not in args.skip:
            from kamailio_registrar import kamailio_phase

            report += kamailio_phase(tmp_path, users, throughput_csv, args.duration, best)

        if "scale" not in args.skip:
            from scale import scale_phase

            report += scale_phase(tmp_path, args.scale_sizes, args.callees, args.call_hold)

        if "trace" not in args.skip:
            report += trace_cost()

    print()
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
