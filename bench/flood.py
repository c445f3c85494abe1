"""The flood phase of `make bench`: a scanner's INVITE flood at sipp's best rate, and the registrar's memory.

Two runs of --flood-duration seconds each, sipp from 127.0.0.66 sending INVITEs to a
new user each time, never ACKed (tests/integration/sipp.py's flood, which starts sipp
again should it die of its own heap bug at such rates):
- from a stranger, as the internet sends it: the per-source limits ban the address;
- from a trusted address, which nothing bans: every INVITE is parsed, routed and
  refused (407, statelessly), the worst case for the proxy's memory.
Printed: the INVITEs sipp sent per second, the registrar's RSS before, at its peak
and 5 s after the flood, and the registrar's CPU share during it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after PYTHONPATH, which may name the compiled build

from run import DOMAIN, cpu_ticks, pinned, rss_kib, write_manifests  # noqa: E402

from tests.helpers import start_registrar, stop_registrar  # noqa: E402
from tests.integration.sipp import flood  # noqa: E402

ATTACKER = "127.0.0.66"
STRANGER = "{}"
TRUSTED = f'{{trustedNetworks: ["{ATTACKER}/32"]}}'


def flood_phase(tmp_path: Path, seconds: float) -> list[str]:
    lines = [f"flood: INVITEs to new users from one address at sipp's best rate for {seconds:.0f} s, never ACKed"]
    for label, security in (("from a stranger (banned)", STRANGER), ("from a trusted address (never banned)", TRUSTED)):
        print(f"flood {label}", flush=True)
        lines.append(f"  {label}: " + flood_run(tmp_path / f"flood-{len(lines)}", security, seconds))
        print(lines[-1], flush=True)
    return lines


def flood_run(directory: Path, security: str, seconds: float) -> str:
    write_manifests(directory / "manifests", 10, security=security)
    registrar = start_registrar(directory, "--log-level", "warning", manifests=directory / "manifests",
                                wrapper=pinned(0))
    try:
        pid = registrar.process.pid
        time.sleep(1)
        before = rss_kib(pid)
        ticks = cpu_ticks(pid)
        started = time.monotonic()
        peaks: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peaks.append(rss_kib(pid))
                done.wait(0.25)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            sent = flood(f"{registrar.host}:{registrar.sip_port}", workdir=directory, local_ip=ATTACKER,
                         seconds=seconds, keys={"domain": DOMAIN}, wrapper=pinned(1))
        finally:
            done.set()
            sampler.join()
        elapsed = time.monotonic() - started
        cpu = (cpu_ticks(pid) - ticks) / os.sysconf("SC_CLK_TCK") / elapsed
        peak = max([before, *peaks])
        time.sleep(5)
        after = rss_kib(pid)
    finally:
        stop_registrar(registrar)
    return (
        f"{sent / seconds:,.0f} INVITE/s sent; registrar RSS {before / 1024:.0f} MiB before, "
        f"{peak / 1024:.0f} MiB at peak, {after / 1024:.0f} MiB 5 s after; {cpu:.0%} of a core during it"
    )
