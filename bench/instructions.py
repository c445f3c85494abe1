"""Instructions per authenticated registration, in-process, counted by callgrind.

    python bench/instructions.py [--users 5000] [--n1 500] [--n2 2500]

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
Needs valgrind (Debian: apt-get install valgrind); takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def loop(catalog_file: str, mode: str, count: int) -> None:
    """`count` registrations; mode "client" does the same minus the server's calls."""
    from registrar.app import RegistrarServer, ServeConfig
    from registrar.registrar import Source
    from registrar.sip import digest

    with open(catalog_file, "rb") as file:
        catalog = pickle.load(file)
    endpoint = RegistrarServer(ServeConfig(catalog=catalog, nonce_secret=NONCE_SECRET, node="n")).endpoint
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
            second = datagram(i, 2, authorization)
            if mode == "full":
                endpoint.receive(second, source, sent.append)
                assert sent.pop().startswith(b"SIP/2.0 200"), "not registered"

    asyncio.run(run())


def start_callgrind(catalog_file: str, mode: str, count: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
         "--loop", mode, str(count), "--catalog", catalog_file],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"},
    )


def total_instructions(out: Path) -> int:
    totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        sys.exit(f"no instruction count in {out}")
    return int(totals[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--n1", type=int, default=500)
    parser.add_argument("--n2", type=int, default=2500)
    parser.add_argument("--loop", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        loop(args.catalog, args.loop[0], int(args.loop[1]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    if not args.n1 < args.n2 <= args.users:
        sys.exit("need --n1 < --n2 <= --users")

    from bench.run import write_manifests
    from registrar.manifests import load_catalog

    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        write_manifests(directory / "manifests", args.users)
        # Loaded once here and unpickled under valgrind: reading the YAML there would
        # take most of each run.
        catalog_file = str(directory / "catalog.pickle")
        with open(catalog_file, "wb") as file:
            pickle.dump(load_catalog(directory / "manifests"), file)
        runs = {
            (mode, n): directory / f"callgrind.{mode}.{n}" for mode in ("full", "client") for n in (args.n1, args.n2)
        }
        # All four at once: each is single-threaded, and the counts do not depend on load.
        processes = [start_callgrind(catalog_file, mode, n, out) for (mode, n), out in runs.items()]
        if any(process.wait() != 0 for process in processes):
            sys.exit("a callgrind run failed")
        counts = {run: total_instructions(out) for run, out in runs.items()}
    per_registration = (
        (counts["full", args.n2] - counts["client", args.n2]) - (counts["full", args.n1] - counts["client", args.n1])
    ) / (args.n2 - args.n1)
    print(f"{per_registration:,.0f} instructions per registration (both legs, server only, callgrind)")


if __name__ == "__main__":
    main()
