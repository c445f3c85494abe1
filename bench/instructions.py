"""Instructions per authenticated registration, in-process, counted by callgrind.

    python bench/instructions.py [--users 5000] [--n1 500] [--n2 2500]
    python bench/instructions.py --store etcd [--window 32] [--native 20000] [--rate 2500] [--keep DIR]

Wall-clock timings on a shared machine vary twofold between runs; instruction
counts do not, so this is the figure to compare two versions of the hot path
by. It drives both legs of a registration (REGISTER -> 401, REGISTER with
Digest credentials -> 200) through `SipEndpoint.receive` with datagrams built
in the same process, no sockets, under `valgrind --tool=callgrind`, four
times: N1 and N2 registrations, each with the server and with only the
client's share of the work (building datagrams, computing the response).
Start-up and the client cancel out of

    ((full(N2) - client(N2)) - (full(N1) - client(N1))) / (N2 - N1)

Every registration is a new binding of a different user (N2 <= --users).
Needs valgrind (Debian: apt-get install valgrind); takes a few minutes. It counts the SIP
core the process imports: the editable install's Python, or the compiled build with
`PYTHONPATH=build/compiled/site` (`make compiled`).

With `--store etcd` the server writes to a real etcd (tests/etcd_server.py, a
fresh one per run, etcd itself not under callgrind). Registrations then finish
when etcd answers, so the driver keeps --window of them in flight, starting the
next one as each 200 OK goes out; the store batches what arrives meanwhile, and
the AORs per transaction are printed, as the count per registration depends on
them. callgrind counts every thread of the registrar process (gRPC's included):
its whole CPU work. A second run without valgrind (--native registrations
offered at --rate a second, open loop as sipp offers them) measures etcd's CPU
time per registration (utime+stime from /proc, its idle rate subtracted), since
etcd shares the registrar's cores, and the AORs per transaction at that rate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after PYTHONPATH, which may name the compiled build

DOMAIN = "bench.example.test"
NONCE_SECRET = b"0123456789abcdef0123456789abcdef"


def datagram(i: int, cseq: int, authorization: str = "") -> bytes:
    """A sipp-like REGISTER of user i (the shape of tests/integration/scenarios/register_auth.xml)."""
    user = f"u{i:06d}"
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{i}-{cseq}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag={i}SIPpTag00\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {i}-1234@127.0.0.1\r\nCSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:5999;transport=UDP>\r\n"
        f"Expires: 3600\r\n{authorization}User-Agent: sipp\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def answer_to(challenge: str, i: int) -> bytes:
    """User i's REGISTER with Digest credentials answering `challenge` (the 401's text)."""
    from registrar.sip import digest

    nonce = challenge.split('nonce="')[1].split('"')[0]
    user = f"u{i:06d}"
    ha1 = digest.ha1("MD5", user, DOMAIN, f"pw-{i}")
    response = digest.compute_response(
        "MD5", ha1, nonce, "REGISTER", f"sip:{DOMAIN}", qop="auth", nc="00000001", cnonce="abc"
    )
    authorization = (
        f'Authorization: Digest username="{user}", realm="{DOMAIN}", nonce="{nonce}", uri="sip:{DOMAIN}", '
        f'response="{response}", algorithm=MD5, cnonce="abc", qop=auth, nc=00000001\r\n'
    )
    return datagram(i, 2, authorization)


def loop(catalog_file: str, mode: str, count: int, trace: bool = True) -> None:
    """`count` registrations; mode "client" does the same minus the server's calls. Without `trace`
    the endpoint records no message (registrar.sip.trace): what the trace costs is the difference."""
    from registrar.app import RegistrarServer, ServeConfig
    from registrar.sip.source import Source

    with open(catalog_file, "rb") as file:
        catalog = pickle.load(file)
    endpoint = RegistrarServer(ServeConfig(catalog=catalog, nonce_secret=NONCE_SECRET, node="n")).endpoint
    if not trace:
        endpoint.trace = None
    source = Source("udp", "127.0.0.1", 5070)
    sent: list[bytes] = []

    async def run() -> None:
        # One exchange outside the count gives the client-only run a real challenge to read.
        endpoint.receive(datagram(10**6, 1), source, sent.append)
        canned = sent.pop()
        firsts = [datagram(i, 1) for i in range(count)]
        for i in range(count):
            if mode == "full":
                endpoint.receive(firsts[i], source, sent.append)
                challenge = sent.pop().decode()
            else:
                challenge = canned.decode()
            second = answer_to(challenge, i)
            if mode == "full":
                endpoint.receive(second, source, sent.append)
                assert sent.pop().startswith(b"SIP/2.0 200"), "not registered"

    asyncio.run(run())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def loop_etcd(
    catalog_file: str, mode: str, count: int, url: str, window: int, etcd_pid: int, stats: str, profile: str = "",
    rate: float = 0,
) -> None:
    """`count` registrations on the etcd store at `url`: `window` of them in flight at a time, or `rate` a second."""
    from registrar.app import RegistrarServer, ServeConfig
    from registrar.sip.source import Source

    with open(catalog_file, "rb") as file:
        catalog = pickle.load(file)
    full = mode == "full"
    server = RegistrarServer(
        ServeConfig(catalog=catalog, store=url if full else "memory", nonce_secret=NONCE_SECRET, node="n")
    )
    endpoint = server.endpoint
    source = Source("udp", "127.0.0.1", 5070)
    sent: list[bytes] = []
    figures = {"writes": 0, "aors": 0, "conflicts": 0}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        if full:
            store = server.store  # made to publish the catalogue and hand etcd's to the server (make_store)
            await store.start(wait=600)  # publishing the catalogue is slow under valgrind
            assert store.ready, "etcd store not ready"
        gc.freeze()  # as RegistrarServer.start does once it serves
        endpoint.receive(datagram(10**6, 1), source, sent.append)
        canned = sent.pop()
        firsts = [datagram(i, 1) for i in range(count)]
        done = loop.create_future()
        progress = {"next": 0, "finished": 0}
        sent_at = [0.0] * count  # when each REGISTER with credentials went in
        latencies: list[float] = []  # and how long its 200 OK took

        def start_next() -> None:
            i = progress["next"]
            progress["next"] += 1
            if full:
                endpoint.receive(firsts[i], source, sent.append)
                challenge = sent.pop().decode()
            else:
                challenge = canned.decode()
            second = answer_to(challenge, i)
            if full:
                sent_at[i] = time.monotonic()
                endpoint.receive(second, source, lambda data: answered(data, i))
            else:
                loop.call_soon(answered, b"SIP/2.0 200 OK\r\n")

        def answered(data: bytes, i: int = -1) -> None:
            if not data.startswith(b"SIP/2.0 200"):
                if not done.done():
                    done.set_exception(AssertionError(f"not registered: {data[:60]!r}"))
                return
            progress["finished"] += 1
            if full:
                latencies.append(time.monotonic() - sent_at[i])
            if progress["next"] < count and not rate:
                start_next()
            elif progress["finished"] == count:
                done.set_result(None)

        def paced(started: float) -> None:
            # Open loop, as sipp offers a rate: start what is due, whatever is still in flight.
            due = min(count, int((time.monotonic() - started) * rate) + 1)
            while progress["next"] < due:
                start_next()
            if progress["next"] < count:
                loop.call_later(0.001, paced, started)

        etcd_before = cpu_seconds(etcd_pid) if full and etcd_pid else 0.0
        own_before, wall_before = time.process_time(), time.monotonic()
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        if rate:
            paced(time.monotonic())
        else:
            for _ in range(min(window, count)):
                start_next()
        await done
        if profile:
            profiler.disable()
            profiler.dump_stats(profile)
        figures["seconds"] = time.monotonic() - wall_before
        latencies.sort()
        if latencies:
            figures["p50"], figures["p99"] = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        figures["cpu"] = time.process_time() - own_before
        if full and etcd_pid:
            figures["etcd_cpu"] = cpu_seconds(etcd_pid) - etcd_before
        if full:
            # The store's write transactions, as the server's own metrics count them.
            series = {"writes": "writes", "aors": "aors_written", "conflicts": "conflicts"}
            for figure, name in series.items():
                figures[figure] = int(server.metrics.registry.get_sample_value(f"sipreg_store_{name}_total"))
            await server.store.close()

    try:
        import uvloop
    except ImportError:
        uvloop = None
    # The loop `sipreg serve` runs on (registrar/cli.py).
    (uvloop.run if uvloop is not None else asyncio.run)(run())
    if stats:
        Path(stats).write_text(json.dumps(figures))


def start_callgrind(
    catalog_file: str, mode: str, count: int, out: Path, extra: list[str] = ()
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
         "--loop", mode, str(count), "--catalog", catalog_file, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"},
    )


def total_instructions(out: Path) -> int:
    totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        sys.exit(f"no instruction count in {out}")
    return int(totals[1])


def write_catalog(directory: Path, users: int, defences: str = "on") -> str:
    """`users` users' catalogue, pickled: unpickled under valgrind, where reading the YAML would take most of a run.

    `defences` "on": the per-source limits count every request (with a budget the run never
    exhausts); "off": the driver's address is trusted, so they only look it up.
    """
    from bench.run import DEFENCES_OFF, DEFENCES_ON, write_manifests
    from registrar.manifests import load_catalog

    security = DEFENCES_ON if defences == "on" else DEFENCES_OFF
    write_manifests(directory / f"manifests-{users}", users, security=security)
    catalog_file = str(directory / f"catalog-{users}.pickle")
    with open(catalog_file, "wb") as file:
        pickle.dump(load_catalog(directory / f"manifests-{users}"), file)
    return catalog_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--n1", type=int, default=500)
    parser.add_argument("--n2", type=int, default=2500)
    parser.add_argument("--store", choices=["memory", "etcd"], default="memory")
    parser.add_argument("--window", type=int, default=32, help="etcd: registrations in flight")
    parser.add_argument("--native", type=int, default=20000, help="etcd: registrations of the etcd CPU run (0: none)")
    # Every registration here is a phone this registrar has not seen (new users), so it reads the
    # connection and the AOR first: 1.1M instructions each (0.78M before registrars read on demand),
    # and with the driver in the same process 2,500/s no longer fits one core.
    parser.add_argument("--rate", type=float, default=2000, help="etcd: registrations a second in the etcd CPU run")
    parser.add_argument("--keep", type=Path, help="copy the callgrind files here (callgrind_annotate reads them)")
    parser.add_argument(
        "--defences", choices=["on", "off"], default="on",
        help="per-source limits counting the driver's requests (on) or exempting its address (off)",
    )
    parser.add_argument(
        "--trace", choices=["on", "off"], default="on",
        help="memory store: record every message for `sipreg trace` (on, as a registrar does) or not (off)",
    )
    parser.add_argument("--loop", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    parser.add_argument("--etcd", help=argparse.SUPPRESS)
    parser.add_argument("--etcd-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stats", default="", help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        if args.etcd:
            loop_etcd(
                args.catalog, args.loop[0], int(args.loop[1]), args.etcd, args.window, args.etcd_pid, args.stats,
                args.profile, args.rate,
            )
        else:
            loop(args.catalog, args.loop[0], int(args.loop[1]), args.trace == "on")
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    if not args.n1 < args.n2 <= args.users:
        sys.exit("need --n1 < --n2 <= --users")

    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        catalog_file = write_catalog(directory, args.users, args.defences)
        runs = {
            (mode, n): directory / f"callgrind.{mode}.{n}" for mode in ("full", "client") for n in (args.n1, args.n2)
        }
        if args.store == "memory":
            # All four at once: each is single-threaded, and the counts do not depend on load.
            processes = [
                start_callgrind(catalog_file, mode, n, out, ["--trace", args.trace]) for (mode, n), out in runs.items()
            ]
            if any(process.wait() != 0 for process in processes):
                sys.exit("a callgrind run failed")
        else:
            etcd_runs(directory, catalog_file, runs, args)
        counts = {run: total_instructions(out) for run, out in runs.items()}
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for out in runs.values():
                shutil.copy(out, args.keep / out.name)
        per_registration = (
            (counts["full", args.n2] - counts["client", args.n2]) - (counts["full", args.n1] - counts["client", args.n1])
        ) / (args.n2 - args.n1)
        from registrar import sip

        form = "compiled SIP core" if sip.COMPILED else "pure-Python SIP core"
        print(f"{per_registration:,.0f} instructions per registration (both legs, server only, callgrind, {form})")
        if args.store == "etcd":
            for n in (args.n1, args.n2):
                stats = json.loads((directory / f"stats.{n}").read_text())
                per_transaction = stats["aors"] / max(stats["writes"], 1)
                print(f"  under callgrind, {n} registrations: {per_transaction:.1f} AORs per transaction")
            if args.native:
                etcd_cpu_run(directory, args)


def etcd_runs(directory: Path, catalog_file: str, runs: dict, args: argparse.Namespace) -> None:
    """The four callgrind runs, each full one on an etcd of its own (etcd itself is not counted)."""
    from tests.etcd_server import EtcdServer

    servers = []
    try:
        processes = []
        for (mode, n), out in runs.items():
            extra = ["--etcd", "none", "--window", str(args.window), "--rate", "0"]
            if mode == "full":
                etcd = EtcdServer(directory, name=f"n{n}")
                servers.append(etcd)
                etcd.start()
                extra = [
                    "--etcd", etcd.url, "--window", str(args.window), "--rate", "0",
                    "--stats", str(directory / f"stats.{n}"),
                ]
            processes.append(start_callgrind(catalog_file, mode, n, out, extra))
        if any(process.wait() != 0 for process in processes):
            sys.exit("a callgrind run failed")
    finally:
        for etcd in servers:
            etcd.stop()


def etcd_cpu_run(directory: Path, args: argparse.Namespace) -> None:
    """etcd's CPU time per registration, and the registrar's, in a run without valgrind at --rate a second."""
    from tests.etcd_server import EtcdServer

    catalog_file = write_catalog(directory, max(args.native, args.users))
    stats_file = directory / "stats.native"
    with EtcdServer(directory, name="native") as etcd:
        pid = etcd.process.pid
        idle_before, idle_started = cpu_seconds(pid), time.monotonic()
        time.sleep(3)
        idle_rate = (cpu_seconds(pid) - idle_before) / (time.monotonic() - idle_started)
        subprocess.run(
            [sys.executable, __file__, "--loop", "full", str(args.native), "--catalog", catalog_file,
             "--etcd", etcd.url, "--window", str(args.window), "--rate", str(args.rate), "--etcd-pid", str(pid),
             "--stats", str(stats_file)],
            check=True,
        )
    stats = json.loads(stats_file.read_text())
    n = args.native
    etcd_ms = (stats["etcd_cpu"] - idle_rate * stats["seconds"]) / n * 1000
    print(
        f"without valgrind, {n} registrations offered at {args.rate:,.0f}/s took {stats['seconds']:.1f} s ("
        f"{stats['aors'] / max(stats['writes'], 1):.1f} AORs per transaction, 200 OK p50 {stats['p50'] * 1000:.1f} ms, "
        f"p99 {stats['p99'] * 1000:.1f} ms): etcd {etcd_ms:.3f} ms CPU per registration (idle {idle_rate * 1000:.0f} "
        f"ms/s subtracted), registrar and client {stats['cpu'] / n * 1000:.3f} ms"
    )


if __name__ == "__main__":
    main()
