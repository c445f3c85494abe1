"""The `kamailio` bench phase: sipreg and Kamailio (Debian's, 5.6) as registrars, side by side, same sipp scenario and users.

Both get the same authenticated REGISTER (REGISTER, 401, REGISTER with digest qop=auth,
200) over UDP from one sipp socket, then over TCP on one sipp connection, then over TCP
with a connection of its own per registration (sipp's "tn": connect, the four messages,
close; as thousands of phones each with its connection), the same users and passwords,
the registrar pinned to core 0 and sipp to core 1. Printed: CPU per authenticated registration at fixed
offered rates (the whole process tree's utime + stime from /proc, read before and after
the run: sipreg is one process, Kamailio a main process and its workers), and the best
rate with < 1% failures from run.py's ladder, with the ratios sipreg/Kamailio.

Kamailio is configured to do what sipreg does, and nothing more: digest authentication
with qop=auth (`auth`'s pv_auth_check, the password from an `htable` loaded at start-up
from a db_text file the bench writes: a hash lookup per request, as sipreg's catalogue),
the authentication user checked against the To user, bindings in memory (`usrloc`
db_mode 0) saved by `registrar`, the source address kept as the Contact's `received`
(`nathelper`'s fix_nated_register), the same expiry bounds and Contacts per user, four
UDP and four TCP workers (one connection is served by one of them). There is no database
on the path of a request.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after PYTHONPATH, which may name the compiled build

from tests.helpers import free_port, start_registrar, stop_registrar  # noqa: E402
from tests.integration.kamailio import (  # noqa: E402
    KAMAILIO, MODULES, kamailio_version, start_kamailio, stop_kamailio, wait_until_up,
)
from tests.integration.sipp import run_sipp, users_csv  # noqa: E402

from run import DOMAIN, LADDER, cpu_per_registration, ladder, pinned, register_run  # noqa: E402

HOST = "127.0.0.1"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"  # Debian's kamailio package ships it
# Offered rates of the CPU comparison, where a registrar that keeps up answers everything and the figure
# is the cost of a registration, not of a backlog: 2,000/s is under both limits here, 4,000/s near sipreg's
# (a rate a registrar did not hold is marked so in the table). With a connection per registration sipp is
# the limit, near 450/s on its core (it opens, serves and closes each one), far under either registrar's:
# there, CPU per registration at 400/s only, and no best rates.
FIXED_RATES = {"udp": (2000, 4000), "tcp": (2000, 4000), "tcp-per-call": (400,)}
TRANSPORTS = tuple(FIXED_RATES)
LADDER_TRANSPORTS = ("udp", "tcp")
# Kamailio's UDP workers and TCP workers: 4 of each, as a small deployment runs it.
CHILDREN = 4

CONFIG = """#!KAMAILIO
debug=1
log_stderror=yes
children={children}
auto_aliases=no
# UDP and TCP on one port, as sipreg listens; the TCP comparisons run over one connection (sipp t1) and
# over a connection per registration (tn).
listen=udp:{host}:{port}
listen=tcp:{host}:{port}
tcp_children={children}
mpath="{modules}"
loadmodule "db_text.so"
{proxy_modules}
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "htable.so"
loadmodule "auth.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "nathelper.so"

# Passwords by username, read once at start-up from the db_text file `passwords`.
modparam("htable", "db_url", "text://{dbdir}")
modparam("htable", "htable", "pw=>size=16;dbtable=passwords;")
# Bindings in memory only, as sipreg's memory store.
modparam("usrloc", "db_mode", 0)
# The source address saved with each binding, as sipreg's `received`.
modparam("nathelper", "received_avp", "$avp(RECEIVED)")
modparam("registrar", "received_avp", "$avp(RECEIVED)")
modparam("nathelper", "natping_interval", 0)
# The bench's SipDomain and SipConnections: expiry 60..3600 s (600 by default), 5 Contacts per user.
modparam("registrar", "min_expires", 60)
modparam("registrar", "default_expires", 600)
modparam("registrar", "max_expires", 3600)
modparam("registrar", "max_contacts", {max_contacts})

request_route {{
    if (is_method("OPTIONS") && $rU == $null) {{
        # How wait_until_up knows it is listening.
        sl_send_reply("200", "Registrar Up");
        exit;
    }}
{proxy_route}
    if (!is_method("REGISTER")) {{
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
    # Plain password (flags 0); checks 1: the authentication user must be the To user. A REGISTER
    # without credentials is challenged before the lookup, which would log an error for it.
    if ($au == $null || !pv_auth_check("$td", "$sht(pw=>$au)", "0", "1")) {{
        # Flags 1: qop=auth in the challenge.
        www_challenge("$td", "1");
        exit;
    }}
    fix_nated_register();
    if (!save("location")) {{
        sl_reply_error();
    }}
}}
"""


# The calls phase's Kamailio is also a stateful proxy, as sipreg is: a request outside a dialog for a
# registered user (the INVITE) is looked up in usrloc and relayed by tm, Record-Routed so the dialog's
# ACK and BYE come back through it (loose_route; has_totag from siputils); sipreg's proxy does the same. `ctl` answers kamcmd,
# which is how the bench counts the registered callees (kex's statistics).
PROXY_MODULES = """loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "kex.so"
loadmodule "ctl.so"
modparam("ctl", "binrpc", "unix:{control}")"""

PROXY_ROUTE = """    if (!mf_process_maxfwd_header("70")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK") && t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (!is_method("REGISTER")) {{
        if (!lookup("location")) {{
            sl_send_reply("404", "Not Found");
            exit;
        }}
        if (is_method("INVITE")) {{
            record_route();
        }}
        t_relay();
        exit;
    }}"""


@dataclass
class Kamailio:
    """What run.py's ladder and wait_idle need of a registrar: where it listens, and its process."""

    process: subprocess.Popen
    host: str
    sip_port: int
    log_path: Path
    control: Path | None = None  # kamcmd's socket, when it runs as a proxy too

    def registered_users(self) -> int:
        """usrloc's count of users with a binding (kex's statistics, over kamcmd)."""
        output = subprocess.run(
            [KAMCMD, "-s", f"unixs:{self.control}", "stats.get_statistics", "registered_users"],
            capture_output=True, text=True, timeout=10,
        ).stdout
        # "usrloc:registered_users = 200"
        return int(output.rsplit("=", 1)[-1]) if "=" in output else 0


def start_kamailio_registrar(
    workdir: Path, users: list[tuple[str, str]], max_contacts: int = 5, proxy: bool = False
) -> Kamailio:
    """Kamailio as a registrar for `users` on a free UDP port, pinned to core 0, up and answering; with
    `proxy`, also a stateful proxy to the users it registered (PROXY_ROUTE)."""
    workdir.mkdir(parents=True, exist_ok=True)
    dbdir = workdir / "kamailio-db"
    dbdir.mkdir(exist_ok=True)
    # db_text: a header naming the columns htable reads (key_type 0, value_type 0: a plain string).
    rows = [f"{index}:{user}:0:0:{password}:0" for index, (user, password) in enumerate(users, 1)]
    (dbdir / "passwords").write_text(
        "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int)\n"
        + "\n".join(rows) + "\n"
    )
    port = free_port(HOST)
    control = workdir / "kamailio-ctl" if proxy else None
    config = CONFIG.format(
        children=CHILDREN, host=HOST, port=port, modules=MODULES, dbdir=dbdir, max_contacts=max_contacts,
        proxy_modules=PROXY_MODULES.format(control=control) if proxy else "",
        proxy_route=PROXY_ROUTE.format() if proxy else "",
    )
    # Shared memory for the htable and the bindings of every user (a few kB each, with room).
    process, log_path = start_kamailio(workdir, config, shared_mb=256, private_mb=16, wrapper=pinned(0))
    try:
        wait_until_up(HOST, port, process, log_path)
    except BaseException:
        stop_kamailio(process)
        raise
    return Kamailio(process, HOST, port, log_path, control)


def check_registers(server, workdir: Path, user: tuple[str, str], name: str) -> None:
    """One authenticated REGISTER, traced: it must be challenged (401 with qop=auth) and then get a 200 with
    the Contact, and one with a wrong password must fail; otherwise the comparison would be against a
    registrar that does not do the work. Raises."""
    csv_path = users_csv(workdir / f"check-{name}.csv", [user], DOMAIN)
    run = run_sipp(
        "register_auth.xml", f"{server.host}:{server.sip_port}", workdir=workdir, calls=1, injection=csv_path,
        keys={"contact_port": "5999", "expires": "3600"}, timeout=10, name=f"check-{name}",
    )
    messages = run.messages
    challenged = "SIP/2.0 401" in messages and "qop=" in messages.split("SIP/2.0 401", 1)[-1]
    accepted = "SIP/2.0 200" in messages and f"<sip:{user[0]}@" in messages.split("SIP/2.0 200", 1)[-1]
    if run.successful != 1 or not challenged or not accepted:
        raise RuntimeError(
            f"{name} did not challenge (401, qop=auth) and accept (200 with the Contact) a REGISTER "
            f"of {user[0]}:\n{messages[-3000:]}\n{run.errors[-2000:]}"
        )
    # And a wrong password must not register: a registrar that accepts anything would do less work.
    csv_path = users_csv(workdir / f"check-{name}-wrong.csv", [(user[0], user[1] + "-wrong")], DOMAIN)
    wrong = run_sipp(
        "register_auth.xml", f"{server.host}:{server.sip_port}", workdir=workdir, calls=1, injection=csv_path,
        keys={"contact_port": "5999", "expires": "3600"}, timeout=10, name=f"check-{name}-wrong",
    )
    if wrong.successful:
        raise RuntimeError(f"{name} accepted a REGISTER of {user[0]} with a wrong password:\n{wrong.messages[-3000:]}")


def measure(
    server, name: str, workdir: Path, csv_path: Path, users: int, duration: float, transport: str, ladder_too: bool
):
    """CPU per registration over `transport` at each of its FIXED_RATES, then (if `ladder_too`) the best rate.

    Returns (cpu, best, floor, lines); `floor` when the best was the ladder's top rung, held: then the limit is higher."""
    cpu: dict[int, tuple[float, bool]] = {}
    lines = []
    # Every user registered once, unmeasured: what follows are refreshes of existing bindings, a
    # registrar's steady load, in the same state for both (else the first rate alone pays the inserts).
    rates = FIXED_RATES[transport]
    register_run(server, workdir, csv_path, transport, rates[0], users)
    for rate in rates:
        microseconds, run, achieved = cpu_per_registration(server, workdir, csv_path, rate, duration, transport)
        total = run.successful + run.failed
        held = total > 0 and run.failed / total < 0.01 and achieved >= rate * 0.9
        cpu[rate] = (microseconds, held)
        lines.append(
            f"  {name} {transport} at {rate:,}/s: {microseconds:,.0f} µs CPU per registration "
            f"({run.successful} ok, {run.failed} failed, {achieved:,.0f}/s achieved){'' if held else '  <- not held'}"
        )
        print(lines[-1], flush=True)
    best, floor = None, False
    if ladder_too:
        print(f"{name}: authenticated REGISTERs per second over {transport}", flush=True)
        best, rungs = ladder(server, workdir, csv_path, transport, duration)
        lines += [line.replace(f"  {transport} offered", f"  {name} {transport} offered") for line in rungs]
        if "over the limit" not in rungs[-1]:
            lines.append(f"  {name} held the ladder's top rung ({LADDER[-1]:,}/s): its limit is higher, or sipp's")
            floor = True
    return cpu, best, floor, lines


def kamailio_phase(
    tmp_path: Path, users: list[tuple[str, str]], csv_path: Path, duration: float, sipreg_best: dict[str, float]
) -> list[str]:
    """The side-by-side tables, UDP then TCP. sipreg's best rate over a transport comes from run.py's ladder
    when that ran (`sipreg_best`), else it is climbed here."""
    if KAMAILIO is None:
        return ["kamailio: not installed (`make bench` installs Debian's kamailio), no side-by-side figures"]
    version = kamailio_version()
    report = [
        f"sipreg and {version} as registrars: authenticated REGISTER over UDP, over TCP on one connection and "
        "over TCP with a connection per registration (tcp-per-call), "
        "same sipp scenario and users"
    ]
    sipreg: dict[str, tuple] = {}
    kamailio: dict[str, tuple] = {}

    print("kamailio phase: sipreg (memory store)", flush=True)
    registrar = start_registrar(
        tmp_path, "--log-level", "warning", manifests=tmp_path / "manifests", wrapper=pinned(0), ready_timeout=300,
    )
    try:
        check_registers(registrar, tmp_path, users[0], "sipreg")
        for transport in TRANSPORTS:
            climb = transport in LADDER_TRANSPORTS and transport not in sipreg_best
            cpu, climbed, floor, lines = measure(
                registrar, "sipreg", tmp_path, csv_path, len(users), duration, transport, climb
            )
            sipreg[transport] = (cpu, sipreg_best.get(transport, climbed), floor)
            report += lines
    finally:
        stop_registrar(registrar)

    print(f"kamailio phase: {version}, {CHILDREN} UDP and {CHILDREN} TCP workers", flush=True)
    workdir = tmp_path / "kamailio"
    server = start_kamailio_registrar(workdir, users)
    try:
        check_registers(server, workdir, users[0], "kamailio")
        for transport in TRANSPORTS:
            cpu, best, floor, lines = measure(
                server, "kamailio", workdir, csv_path, len(users), duration, transport, transport in LADDER_TRANSPORTS
            )
            kamailio[transport] = (cpu, best, floor)
            report += lines
    finally:
        stop_kamailio(server.process)

    for transport in TRANSPORTS:
        report += comparison(transport, sipreg[transport], kamailio[transport])
    return report


def comparison(transport: str, ours: tuple, theirs: tuple) -> list[str]:
    """One transport's table: CPU per registration at each fixed rate, and the best rates, with the ratios."""
    (our_cpu, our_best, our_floor), (their_cpu, their_best, their_floor) = ours, theirs
    lines = [
        "",
        f"{transport}: {'offered rate':>14} | {'sipreg µs/registration':>22} | {'kamailio µs/registration':>24} | "
        "sipreg/kamailio",
    ]
    for rate in FIXED_RATES[transport]:
        (mine, mine_held), (its, its_held) = our_cpu[rate], their_cpu[rate]
        note = "" if mine_held and its_held else "  (not held by both: " + ", ".join(
            name for name, held in (("sipreg", mine_held), ("kamailio", its_held)) if not held
        ) + " failed it)"
        lines.append(
            f"{transport}: {rate:>12,}/s | {mine:>22,.0f} | {its:>24,.0f} | {mine / its:>14.2f}x{note}"
        )
    if our_best and their_best:
        # A best at the ladder's top rung is a floor: ">= N", and the ratio is then bounded, not measured.
        ratio = f"{our_best / their_best:.2f}"
        if our_floor != their_floor:
            ratio = (">= " if our_floor else "<= ") + ratio
        elif our_floor:
            ratio = "unknown (both held the top rung)"
        lines.append(
            f"{transport}: best authenticated REGISTER/s with < 1% failures: sipreg {'>= ' * our_floor}"
            f"{our_best:,.0f}/s, kamailio {'>= ' * their_floor}{their_best:,.0f}/s, sipreg/kamailio {ratio}"
        )
    elif transport not in LADDER_TRANSPORTS:
        lines.append(f"{transport}: no best rates: sipp, opening a connection per registration, is the limit")
    else:
        lines.append(
            f"{transport}: best authenticated REGISTER/s: sipreg {our_best or 0:,.0f}/s, kamailio {their_best or 0:,.0f}/s"
        )
    return lines
