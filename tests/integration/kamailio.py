"""Kamailio (Debian's, 5.6) as an edge proxy in front of a registrar: it adds Path to REGISTERs (RFC 3327).

What a provider puts at the border: the phones talk to the edge, the edge
forwards to the registrar and stays in the path of the calls back. The
configuration is the smallest that does that with Kamailio's own modules: `path`
adds `Path: <sip:EDGE;lr>` to each REGISTER, `rr` routes what comes back
carrying it (`loose_route`), `tm` relays statefully (`textops` for is_method, `xlog` for the lines a test reads). It answers an OPTIONS to
itself (no user part), which is how a test knows it is up.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KAMAILIO = shutil.which("kamailio")
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
auto_aliases=no
listen=udp:{host}:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "path.so"
loadmodule "xlog.so"
loadmodule "textops.so"

request_route {{
    xlog("L_INFO", "edge: in $rm $ru from $si:$sp route=$hdr(Route)\n");
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("OPTIONS") && $rU == $null) {{
        sl_send_reply("200", "Edge Up");
        exit;
    }}
    if (is_method("REGISTER")) {{
        add_path();
        xlog("L_INFO", "edge: REGISTER of $tU with Path to the registrar\n");
        $du = "sip:{registrar}";
        t_relay();
        exit;
    }}
    if ($si == "{registrar_host}" && $sp == {registrar_port}) {{
        # From the registrar, towards a phone: the Path it stored is the Route to us. For a
        # request outside a dialog loose_route() leaves such a preloaded route alone: taken off here.
        remove_hf("Route");
        xlog("L_INFO", "edge: $rm from the registrar to $ru\n");
        if (is_method("INVITE")) {{
            record_route();
        }}
        t_relay();
        exit;
    }}
    if (loose_route()) {{
        t_relay();
        exit;
    }}
    record_route();
    $du = "sip:{registrar}";
    t_relay();
}}
"""


@contextmanager
def edge_proxy(workdir: Path, host: str, port: int, registrar: tuple[str, int]) -> Iterator[Path]:
    """Kamailio on udp:host:port forwarding to `registrar`; yields its log's path. Stopped after."""
    process, log_path = start_kamailio(
        workdir, CONFIG.format(host=host, port=port, modules=MODULES, registrar=f"{registrar[0]}:{registrar[1]}",
                               registrar_host=registrar[0], registrar_port=registrar[1]),
        shared_mb=32, private_mb=8,
    )
    try:
        wait_until_up(host, port, process, log_path)
        yield log_path
    finally:
        stop_kamailio(process)


def start_kamailio(
    workdir: Path, config: str, *, shared_mb: int, private_mb: int, wrapper: list[str] | None = None
) -> tuple[subprocess.Popen, Path]:
    """Kamailio running `config` in the foreground, logging to workdir/kamailio.log: the process and the log.

    `wrapper` prefixes the command (taskset, so a benchmark pins it and every worker it forks to one core).
    """
    assert KAMAILIO is not None, "kamailio missing: make test (and make bench) install Debian's kamailio"
    config_path = workdir / "kamailio.cfg"
    config_path.write_text(config)
    runtime = workdir / "kamailio-run"
    runtime.mkdir(exist_ok=True)
    log_path = workdir / "kamailio.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*(wrapper or []), KAMAILIO, "-DD", "-E", "-f", str(config_path), "-Y", str(runtime), "-m", str(shared_mb),
             "-M", str(private_mb)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    return process, log_path


def kamailio_version() -> str:
    """"kamailio 5.6.x", as `kamailio -v` names itself (just "kamailio" when it does not say)."""
    output = subprocess.run([KAMAILIO, "-v"], capture_output=True, text=True).stdout if KAMAILIO else ""
    return "kamailio " + output.split("kamailio ", 1)[1].split()[0] if "kamailio " in output else "kamailio"


def stop_kamailio(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout` s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_up(host: str, port: int, process: subprocess.Popen, log_path: Path) -> None:
    """Until Kamailio answers an OPTIONS to itself with 200 (its configuration must), or raise with its log."""
    probe = (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:9;rport;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag=1\r\nTo: <sip:{host}>\r\nCall-ID: {uuid.uuid4().hex}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + 15
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(0.3)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kamailio exited ({process.returncode}): {log_path.read_text()[-2000:]}")
            sock.sendto(probe, (host, port))
            try:
                if sock.recv(4096).startswith(b"SIP/2.0 200"):
                    return
            except TimeoutError:
                continue
    raise RuntimeError(f"kamailio did not answer within 15 s: {log_path.read_text()[-2000:]}")
