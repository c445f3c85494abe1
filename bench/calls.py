"""The calls phase of `make bench`: calls per second through the proxy, for one registrar and for two.

A call is INVITE, 100, 180, 200, ACK, (hold), BYE, 200, placed by a sipp UAC
(scenarios/call_uac.xml) through the registrar to callees that registered first.
The callees are one sipp process: it REGISTERs `--callees` users with digest
credentials (tests/integration/scenarios/register_auth.xml, the README's own
example) from one address, then answers the INVITEs the proxy sends there as
its out-of-call scenario (scenarios/call_uas.xml: 180, 200, wait for ACK,
answer BYE). A few hundred distinct users make the proxy look up and route to
many bindings, as it does in service, while one sipp process keeps the callee
side's CPU small on a machine with few cores; being the process that
registered, it would also hold the connection the INVITEs must come down over
TCP. The caller is `caller@caller.example.test`, a party outside the domain
calling in, so no call is challenged.

Figures, each a ladder of offered rates as for REGISTER (run.climb: < 1% failed
calls, 99% of the calls run, 90% of the rate achieved), each rung held
--calls-duration seconds (40 by default: longer than the 32 s the proxy keeps a
finished transaction, so a rung measures the proxy with its transaction table
full, not filling):
- one `sipreg serve` with the in-memory store;
- two replicas on one real etcd, the callees registered on replica A and every
  call placed through replica B, so every call crosses replicas;
- Kamailio (Debian's, 5.6) doing what one registrar does: the same callees
  register with it (digest, usrloc in memory), and it relays the same INVITEs
  statefully (`lookup`, `record_route`, `t_relay`; kamailio_registrar.py), on
  the same core with four UDP and four TCP workers (its workers relay a callee's
  180 and 200 in parallel, so now and then the 180 overtakes: sipp, past the
  200, aborts that call, a few per thousand, counted failed as any other);
and for each, at half its best rate: the call setup time (INVITE sent to 200
received) p50/p99 from sipp's response-time trace (whole milliseconds) and on
the wire (tcpdump, as run.py times REGISTERs), and the CPU each registrar spent
per call. Last, one registrar beside Kamailio: calls/s on one core, setup p99
and CPU per call, with the ratios.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from kamailio_registrar import start_kamailio_registrar
from run import (
    DOMAIN, climb, domain_gauge, latencies, percentile, pinned, start_capture, stop_capture, tree_cpu_ticks,
    udp_packets, wait_idle, write_manifests,
)
from tests.integration.kamailio import KAMAILIO, kamailio_version, stop_kamailio
from tests.etcd_server import EtcdServer
from tests.helpers import free_port, start_registrar, stop_registrar
from registrar.sip.transaction import TIMEOUT
from tests.integration.sipp import SCENARIOS, SIPP, run_sipp, seconds_run, sipp_statistics, users_csv

HERE = Path(__file__).resolve().parent / "scenarios"
CALL_LADDER = (100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000, 2500)
SIPP_CPU = 1  # run.py's sipp core
NONCE_SECRET = "sipreg-bench-replicas"
# sipp sends a BYE of its own when it aborts a call, without the route set: the proxy rightly
# answers 404 (no route for an in-dialog request), and the other sipp sees an unexpected BYE.
NO_ABORT_BYE = ["-default_behaviors", "all,-bye"]
REGISTER_EXPIRES = 3600  # outlives any bench run, so no refresh is needed
TRANSACTION_LIFETIME = TIMEOUT + 3  # s: the proxy keeps a transaction this long after its final answer


def registrar_cpus(count: int) -> list[int]:
    """A core for each registrar, away from sipp's when there are enough; they share core 0 otherwise."""
    cores = [cpu for cpu in sorted(os.sched_getaffinity(0)) if cpu != SIPP_CPU] or [0]
    return [cores[i % len(cores)] for i in range(count)]


def callee_scenario(workdir: Path) -> Path:
    """register_auth.xml, then a day's pause: the process lives on to answer calls, its registrations open."""
    path = workdir / "callee_register.xml"
    path.write_text(
        (SCENARIOS / "register_auth.xml").read_text().replace(
            "</scenario>", '  <pause milliseconds="86400000"/>\n</scenario>'
        )
    )
    return path


@dataclass
class CallsFigures:
    """One proxy's figures: the report's lines, and what the comparison with Kamailio reads."""

    lines: list[str]
    best: float = 0.0  # calls/s with < 1% failed
    setup_p99: float | None = None  # ms, INVITE to 200: on the wire when captured, else as sipp saw it
    cpu_per_call: list[float] = field(default_factory=list)  # ms, each registrar's, at half the best rate


class Callees:
    """One sipp process that registers `users` at `registrar`, then answers the calls routed to them.

    `registered` counts the users the registrar has bindings of (sipreg's metric by default, which a
    registrar on etcd counts there every 2 s). The
    Contacts name the callees' own port unless `contact_port` names another, as a phone behind NAT
    does: a REGISTER then replaces a binding that already has that Contact."""

    def __init__(
        self, registrar, workdir: Path, csv_path: Path, users: int, transport: str,
        registered: Callable[[], int] | None = None, contact_port: int | None = None,
    ) -> None:
        self.registrar = registrar
        self.registered = registered or (lambda: domain_gauge(registrar, "sipreg_registered_connections"))
        self.users = users
        self.port = free_port()
        self.directory = workdir / "callees"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.errors = self.directory / "callees-errors.log"
        command = [
            *pinned(SIPP_CPU), SIPP, f"{registrar.host}:{registrar.sip_port}",
            "-sf", str(callee_scenario(self.directory)), "-oocsf", str(HERE / "call_uas.xml"),
            "-inf", str(csv_path), "-m", str(users), "-l", str(users), "-r", "200",
            "-i", registrar.host, "-p", str(self.port), "-t", {"udp": "u1", "tcp": "t1"}[transport],
            "-key", "contact_port", str(contact_port or self.port), "-key", "expires", str(REGISTER_EXPIRES),
            "-nostdin", "-trace_err", "-error_file", str(self.errors), *NO_ABORT_BYE,
        ]
        self.process = subprocess.Popen(
            command, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_registered(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (count := self.registered()) < self.users:
            if self.process.poll() is not None or time.monotonic() > deadline:
                errors = self.errors.read_text(errors="replace")[-2000:] if self.errors.exists() else ""
                raise RuntimeError(f"callees: {count} of {self.users} registered\n{errors}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def call_run(proxy, workdir: Path, csv_path: Path, transport: str, rate: float, calls: int, hold: float,
             rtt: bool = False):
    """`calls` calls at `rate` through `proxy`: sipp's run, the seconds its achieved rate is over, and
    what failed calls died of.

    The seconds run from sipp's start to when 99% of the calls had succeeded, less one hold time
    (a call ends a hold after it is placed), from sipp's statistics written every second: a call
    that fails takes 32 s to (Timer B or F), and one such call in 10,000 must not read as a rate
    far below the one that held.
    """
    # Room for the calls a stalled proxy holds up, so sipp's limit does not throttle the offered rate.
    extra = ["-l", str(max(1000, int(rate * (hold + 10)))), "-d", str(int(hold * 1000)), "-fd", "1", *NO_ABORT_BYE]
    if rtt:
        extra += ["-trace_rtt", "-rtt_freq", "1"]
    started = time.monotonic()
    sipp_run = run_sipp(
        HERE / "call_uac.xml", f"{proxy.host}:{proxy.sip_port}", workdir=workdir, transport=transport,
        calls=calls, rate=rate, injection=csv_path, timeout=max(60, calls / rate * 3 + hold),
        extra=extra, wrapper=pinned(SIPP_CPU), trace_messages=False,
    )
    rows = sipp_statistics(workdir / "sipp-stats.csv")
    goal = calls * 0.99
    to_goal = seconds_to(rows, "SuccessfulCall(C)", goal)
    if to_goal is not None and sipp_run.successful:
        # so that successful / seconds, what run.climb reports, is goal / (to_goal - hold)
        seconds = (to_goal - hold) * sipp_run.successful / goal
    else:
        seconds = (sipp_run.elapsed or time.monotonic() - started) - hold
    return sipp_run, seconds, failure_kinds(rows[-1] if rows else {})


def seconds_to(rows: list[dict[str, str]], field: str, goal: float) -> float | None:
    """Seconds from sipp's start until the counter `field` reached `goal` (interpolated within its second).

    `rows` are sipp_statistics' of a run with -fd 1: one a second."""
    previous = (0.0, 0)
    for row in rows:
        try:
            now, count = seconds_run(row), int(row[field])
        except (KeyError, ValueError):
            continue
        if count >= goal:
            then, before = previous
            return then + (now - then) * (goal - before) / max(count - before, 1)
        previous = (now, count)
    return None


def failure_kinds(row: dict[str, str]) -> str:
    """What failed calls died of, from sipp's final counters: "FailedMaxUDPRetrans 12, ..."."""
    kinds = [
        f"{name[:-3]} {value}" for name, value in row.items()
        if name.startswith("Failed") and name.endswith("(C)") and name != "FailedCall(C)" and value.isdigit()
        and int(value)
    ]
    return ", ".join(kinds)


def failure_notes(sipp_run, kinds: str) -> list[str]:
    """Why a rung's calls failed: sipp's counters, and its first aborted call."""
    if not sipp_run.failed:
        return []
    notes = [f"    failed calls: {kinds}"] if kinds else []
    # "DATE\tTIME\tEPOCH: what happened", under a "The following events occurred:" heading; an event
    # that quotes a message runs over lines, and the next one starts right after its closing quote.
    events = [
        event.splitlines()[0].strip() for event in re.split(r"\d{4}-\d\d-\d\d\t[\d:.]+\t[\d.]+: ", sipp_run.errors)[1:]
    ]
    aborts = [event for event in events if event.startswith("Aborting")]
    if aborts:
        notes.append(f"    sipp: {aborts[0][:240]}")
    return notes


def calls_figures(
    label: str, setup: str, proxy, registrars, workdir: Path, csv_path: Path, transport: str, duration: float,
    hold: float, callees: Callees | None = None,
) -> CallsFigures:
    """The ladder through `proxy`, then setup time and CPU per call at half the best rate.

    With `callees`, the setup time is also measured with the caller calling them directly, no proxy
    between: what the two sipps take on their own (sipp's UAS sends its 200 on a later 1 ms tick).
    """
    figures = CallsFigures([f"calls, {label}: {setup}"])
    lines = figures.lines
    print(f"calls per second, {label}: {setup}", flush=True)

    def attempt(rate: float, calls: int):
        sipp_run, seconds, kinds = call_run(proxy, workdir, csv_path, transport, rate, calls, hold)
        return sipp_run, seconds, failure_notes(sipp_run, kinds)

    figures.best, rungs = climb(f"calls {transport}", CALL_LADDER, duration, attempt, registrars)
    lines += rungs
    lines.append(f"calls over {transport}, {label}: {figures.best:,.0f} calls/s with < 1% failed calls")
    print(lines[-1], flush=True)
    if figures.best:
        rate = round(figures.best / 2)
        at_half = setup_figures(label, proxy, registrars, workdir, csv_path, transport, rate, duration, hold)
        lines += at_half.lines
        figures.setup_p99, figures.cpu_per_call = at_half.setup_p99, at_half.cpu_per_call
        if callees is not None:
            direct = SimpleNamespace(host=proxy.host, sip_port=callees.port)
            lines += setup_figures(
                "sipp to sipp, no proxy", direct, [], workdir, csv_path, transport, rate, duration, hold
            ).lines
    else:
        lines.append("  no rung passed: does the registrar proxy INVITEs yet? (sipp's errors in the line above)")
    return figures


def setup_figures(label, proxy, registrars, workdir, csv_path, transport, rate, duration, hold) -> CallsFigures:
    """Call setup time (INVITE to 200) and registrar CPU per call at `rate`, after a warm-up at that rate.

    Setup time as sipp's response-time trace has it (whole milliseconds) and, over UDP when tcpdump
    can capture, on the wire at the proxy the caller talks to: the INVITE arriving to the 200 leaving,
    paired by Call-ID, which resolves what sipp's 1 ms ticks cannot.
    """
    if registrars:
        # The rung over the limit left its transactions (kept 32 s) as garbage an idle process does not
        # collect: a warm-up at this rate collects it and fills the table to this rate's steady state,
        # and the measurement follows at once, before those transactions expire.
        for registrar in registrars:
            wait_idle(registrar)
        call_run(proxy, workdir, csv_path, transport, rate, int(rate * TRANSACTION_LIFETIME), hold)
    # The process tree's: Kamailio is a main process and its workers.
    before = [tree_cpu_ticks(registrar.process.pid) for registrar in registrars]
    pcap = workdir / "calls.pcap"
    capture = start_capture(pcap, proxy.sip_port) if transport == "udp" else None
    try:
        sipp_run, _, _ = call_run(proxy, workdir, csv_path, transport, rate, int(rate * duration), hold, rtt=True)
    finally:
        stop_capture(capture)
    hz = os.sysconf("SC_CLK_TCK")
    cpu = [
        (tree_cpu_ticks(registrar.process.pid) - ticks) / hz * 1000 / max(sipp_run.successful, 1)
        for registrar, ticks in zip(registrars, before)
    ]
    figures = CallsFigures([], cpu_per_call=cpu)
    lines = figures.lines
    if capture is not None and (wire := wire_setup_times(pcap, proxy.sip_port)):
        figures.setup_p99 = percentile(wire, 0.99)
        lines.append(
            f"calls at {rate:,}/s, {label}: setup (INVITE to 200) on the wire p50 {percentile(wire, 0.5):.2f} ms, "
            f"p99 {percentile(wire, 0.99):.2f} ms, max {max(wire):.1f} ms ({len(wire)} calls)"
        )
    pcap.unlink(missing_ok=True)
    for name, (p50, p99, samples) in sorted(latencies(workdir).items()):
        if figures.setup_p99 is None and name == "setup":
            figures.setup_p99 = p99
        lines.append(
            f"calls at {rate:,}/s, {label}: {name} (INVITE to 200) as sipp sees it (1 ms ticks) p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms ({samples} calls, {sipp_run.failed} failed)"
        )
    names = ["the registrar"] if len(registrars) == 1 else [f"replica {chr(65 + i)}" for i in range(len(registrars))]
    if registrars:
        lines.append(
            f"calls at {rate:,}/s, {label}: CPU per call "
            + ", ".join(f"{name} {ms:.2f} ms" for name, ms in zip(names, cpu))
        )
    for line in lines:
        print(line, flush=True)
    return figures


def wire_setup_times(pcap: Path, port: int) -> list[float]:
    """Milliseconds from each INVITE reaching the proxy at `port` to the 200 it sends upstream, by Call-ID.

    The proxy also sends INVITEs (downstream) and receives 200s (from the callee): the directions tell
    them apart. A retransmitted INVITE keeps its first arrival.
    """
    invited: dict[bytes, float] = {}
    times = []
    for when, source_port, destination_port, payload in udp_packets(pcap):
        call_id = re.search(rb"\r\n(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]+)", payload, re.I)
        if call_id is None:
            continue
        if destination_port == port and payload.startswith(b"INVITE "):
            invited.setdefault(call_id[1], when)
        elif (
            source_port == port and payload.startswith(b"SIP/2.0 200 ") and call_id[1] in invited
            and re.search(rb"\r\n(?:CSeq)[ \t]*:[ \t]*\d+[ \t]+INVITE", payload, re.I)
        ):
            times.append((when - invited.pop(call_id[1])) * 1000)
    return times


def one_registrar(
    tmp_path: Path, csv_path: Path, users: int, transport: str, duration: float, hold: float
) -> CallsFigures:
    [cpu] = registrar_cpus(1)
    registrar = start_registrar(
        tmp_path, "--log-level", "warning", manifests=tmp_path / "calls-manifests", wrapper=pinned(cpu),
        ready_timeout=300,
    )
    callees = None
    try:
        callees = Callees(registrar, tmp_path, csv_path, users, transport)
        callees.wait_registered()
        setup = f"memory store, on core {cpu}, sipp on core {SIPP_CPU}, {users} callees, {hold:g} s calls"
        return calls_figures(
            "one registrar", setup, registrar, [registrar], tmp_path, csv_path, transport, duration, hold, callees
        )
    finally:
        if callees is not None:
            callees.stop()
        stop_registrar(registrar)


def two_replicas(
    tmp_path: Path, csv_path: Path, users: int, transport: str, duration: float, hold: float
) -> CallsFigures:
    cpu_a, cpu_b = registrar_cpus(2)
    last_aor = f"{csv_path.read_text().splitlines()[users].split(';')[0]}@{DOMAIN}"
    with EtcdServer(tmp_path, name="calls") as etcd:
        common = ["--log-level", "warning", "--store", etcd.url, "--nonce-secret", NONCE_SECRET]
        a = start_registrar(
            tmp_path, *common, "--node", "bench-a", manifests=tmp_path / "calls-manifests", wrapper=pinned(cpu_a),
            ready_timeout=300,
        )
        b = callees = None
        try:
            # B reads the domain and the connections from etcd, where A wrote them.
            b = start_registrar(tmp_path, *common, "--node", "bench-b", manifests=None, wrapper=pinned(cpu_b),
                                ready_timeout=300)
            callees = Callees(a, tmp_path, csv_path, users, transport)
            callees.wait_registered()
            deadline = time.monotonic() + 30
            while not b.bindings(last_aor):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica B never saw {last_aor}'s binding")
                time.sleep(0.2)
            cores = f"on cores {cpu_a} and {cpu_b}" if cpu_a != cpu_b else f"both on core {cpu_a}"
            setup = (
                f"one etcd, {users} callees registered on A, every call placed through B; replicas {cores}, "
                f"sipp on core {SIPP_CPU}, {hold:g} s calls"
            )
            return calls_figures("two replicas", setup, b, [a, b], tmp_path, csv_path, transport, duration, hold)
        finally:
            if callees is not None:
                callees.stop()
            for registrar in (b, a):
                if registrar is not None:
                    stop_registrar(registrar)


def kamailio_proxy(
    tmp_path: Path, credentials: list[tuple[str, str]], csv_path: Path, users: int, transport: str, duration: float,
    hold: float,
) -> CallsFigures:
    """The same callees and calls through Kamailio as registrar and stateful proxy, on one registrar's core."""
    [cpu] = registrar_cpus(1)
    workdir = tmp_path / "kamailio-calls"
    server = start_kamailio_registrar(workdir, credentials, proxy=True)  # pinned to core 0, as registrar_cpus(1)
    callees = None
    try:
        callees = Callees(server, workdir, csv_path, users, transport, registered=server.registered_users)
        callees.wait_registered()
        setup = (
            f"{kamailio_version()}, lookup + record_route + t_relay, on core {cpu} with 4 UDP and 4 TCP workers, "
            f"sipp on core {SIPP_CPU}, {users} callees, {hold:g} s calls"
        )
        # No callees given: the sipp-to-sipp reference was measured with the one registrar.
        return calls_figures("kamailio", setup, server, [server], workdir, csv_path, transport, duration, hold)
    finally:
        if callees is not None:
            callees.stop()
        stop_kamailio(server.process)


def beside_kamailio(transport: str, ours: CallsFigures, theirs: CallsFigures) -> list[str]:
    """One registrar's calls figures beside Kamailio's, each on one core, with the ratios sipreg/Kamailio."""

    def row(what: str, mine: float | None, its: float | None, unit: str, digits: int) -> str:
        if not mine or not its:
            return f"calls beside kamailio, {what}: sipreg {mine or 0:,.{digits}f}{unit}, kamailio {its or 0:,.{digits}f}{unit}"
        return (
            f"calls beside kamailio, {what}: sipreg {mine:,.{digits}f}{unit}, kamailio {its:,.{digits}f}{unit}, "
            f"sipreg/kamailio {mine / its:.2f}"
        )

    our_cpu = ours.cpu_per_call[0] if ours.cpu_per_call else None
    their_cpu = theirs.cpu_per_call[0] if theirs.cpu_per_call else None
    return [
        "",
        row(f"best calls/s over {transport} with < 1% failed, proxy on one core", ours.best, theirs.best, "/s", 0),
        row("setup p99 at half of each one's best rate", ours.setup_p99, theirs.setup_p99, " ms", 2),
        row("CPU per call at half of each one's best rate", our_cpu, their_cpu, " ms", 3),
        # The ladder's best is also bounded by the two sipps on their one core (both proxies stop near the
        # same rate when that binds): a core's worth of calls at the measured cost is the proxy's own limit.
        row(
            "calls/s a core would carry at that CPU per call", our_cpu and 1000 / our_cpu,
            their_cpu and 1000 / their_cpu, "/s", 0,
        ),
    ]


def calls_phase(
    tmp_path: Path, skip: list[str], users: int = 200, transport: str = "udp", duration: float = 10.0,
    hold: float = 1.0,
) -> list[str]:
    """The measurements not skipped (`calls` one registrar, `calls-replicas` two, `calls-kamailio` Kamailio as
    the proxy, beside the one registrar when both ran); the report's lines."""
    credentials = write_manifests(tmp_path / "calls-manifests", users)
    csv_path = users_csv(tmp_path / "callees.csv", credentials, DOMAIN)
    lines = []
    one = kamailio = None
    if "calls" not in skip:
        one = one_registrar(tmp_path, csv_path, users, transport, duration, hold)
        lines += one.lines
    if "calls-replicas" not in skip:
        lines += two_replicas(tmp_path, csv_path, users, transport, duration, hold).lines
    if "calls-kamailio" not in skip:
        if KAMAILIO is None:
            lines.append("calls, kamailio: not installed (`make bench` installs Debian's kamailio), no figures")
        else:
            kamailio = kamailio_proxy(tmp_path, credentials, csv_path, users, transport, duration, hold)
            lines += kamailio.lines
    if one is not None and kamailio is not None:
        lines += beside_kamailio(transport, one, kamailio)
    return lines

