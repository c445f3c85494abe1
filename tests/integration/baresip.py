"""A real baresip user agent, driven as a subprocess, that registers to a registrar.

baresip 1.0.0 (Debian bookworm, libre 1.1.0) with only the modules of
`baresip-core`: the config loads `account.so` and nothing else, so there is no
audio device, no console, no HTTP or TCP control socket. The process is not
interactive (stdin is /dev/null); it is stopped with SIGTERM, on which baresip
runs `ua_stop_all(false)`: it unregisters every account (REGISTER with
`Contact: ...;expires=0`, answering the digest challenge again) and exits when
that transaction is done.

What this version can and cannot do, found by running it:

- `sip_listen 127.0.0.1:0` lets the kernel pick a free port for each of UDP,
  TCP and TLS (no race between choosing a port and binding it).
- `net_interface 127.0.0.1` keeps baresip on loopback; `net_interface lo`
  fails in 1.0.0 ("could not get network address").
- TLS: libre 1.1.0 never verifies the server certificate (there is no
  `sip_verify_server` option yet; even a `sip_cafile` that does not contain the
  registrar's self-signed certificate still connects), so no CA is configured.
- `-s` prints a SIP trace of every message, which is what a failing test shows.
- Output is written line by line, so the log file can be read while it runs.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

BARESIP = "/usr/bin/baresip"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

CONFIG = """\
# Written by tests/integration/baresip.py: a registering UA, nothing else.
poll_method\t\tepoll
net_interface\t\t127.0.0.1
sip_listen\t\t127.0.0.1:0
module_path\t\t{module_path}
module_tmp\t\taccount.so
"""


def account_line(
    *, user: str, domain: str, password: str, proxy_host: str, proxy_port: int, transport: str, regint: int
) -> str:
    """One line of baresip's `accounts` file: the AOR, its password, the outbound proxy and the transport."""
    return (
        f"<sip:{user}@{domain};transport={transport}>"
        f";auth_user={user};auth_pass={password}"
        f';outbound="sip:{proxy_host}:{proxy_port};transport={transport}"'
        f";regint={regint}\n"
    )


class BaresipError(AssertionError):
    """baresip did not do what a test waited for; the message carries its log (with the SIP trace)."""


class Baresip:
    """One baresip process registering `sip:USER@DOMAIN` through the outbound proxy `sip:HOST:PORT;transport=T`.

    Use it as a context manager: leaving the block stops baresip (SIGTERM, then
    SIGKILL if it does not exit in time), whatever happened inside it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        user: str,
        password: str,
        domain: str,
        proxy_host: str,
        proxy_port: int,
        transport: str,
        regint: int = 600,
        executable: str = BARESIP,
        module_path: str = "/usr/lib/baresip/modules",
    ) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be udp, tcp or tls, not {transport!r}")
        self.directory = directory
        self.user = user
        self.domain = domain
        self.transport = transport
        self.executable = executable
        self.log_path = directory / "baresip.log"
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config").write_text(CONFIG.format(module_path=module_path))
        (directory / "accounts").write_text(
            account_line(
                user=user, domain=domain, password=password, proxy_host=proxy_host,
                proxy_port=proxy_port, transport=transport, regint=regint,
            )
        )

    @property
    def aor(self) -> str:
        return f"{self.user}@{self.domain}"

    def start(self) -> Baresip:
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen(
                [self.executable, "-f", str(self.directory), "-s"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.directory,
            )
        return self

    def log(self) -> str:
        """Everything baresip printed so far, without colour codes."""
        try:
            return _ANSI.sub("", self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 15.0, *, fail: str | None = None) -> re.Match:
        """Wait until a line of the log matches `pattern`; raise if `fail` matches first, baresip exits or time runs out."""
        wanted, failed = re.compile(pattern, re.M), re.compile(fail, re.M) if fail else None
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if match := wanted.search(text):
                return match
            if failed and (bad := failed.search(text)):
                raise BaresipError(f"baresip reported {bad.group(0)!r} while waiting for {pattern!r}:\n{text}")
            if self.process is not None and self.process.poll() is not None:
                raise BaresipError(f"baresip exited with {self.process.returncode} before {pattern!r}:\n{text}")
            if time.monotonic() > deadline:
                raise BaresipError(f"no {pattern!r} from baresip within {timeout} s:\n{text}")
            time.sleep(0.05)

    def wait_registered(self, timeout: float = 15.0) -> re.Match:
        """Wait for baresip's "USER@DOMAIN: {0/UDP/v4} 200 OK (server) [1 binding]" line."""
        aor = re.escape(self.aor)
        return self.wait_for(
            rf"^{aor}: \{{\d+/(?P<transport>\w+)/v[46]\}} 200 OK.*$",
            timeout,
            fail=rf"^reg: sip:{aor}: .*$",
        )

    def wait_registration_failed(self, timeout: float = 15.0) -> re.Match:
        """Wait for baresip's "reg: sip:USER@DOMAIN: 401 Unauthorized (server)" line (its final failure)."""
        aor = re.escape(self.aor)
        return self.wait_for(
            rf"^reg: sip:{aor}: (?P<status>\d{{3}})? ?(?P<reason>.*)$",
            timeout,
            fail=rf"^{aor}: \{{\d+/\w+/v[46]\}} 200 OK.*$",
        )

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM: baresip unregisters (Expires 0) and exits. SIGKILL if it takes longer than `timeout`."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        # After a failure baresip may be stuck retransmitting to a peer that never answers:
        # give its unregistration less time then.
        try:
            self.stop(timeout=10.0 if exc_type is None else 3.0)
        finally:
            self.kill()
