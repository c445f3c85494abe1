"""A real baresip user agent, driven as a subprocess, that registers to a registrar and places and answers calls.

baresip 1.0.0 (Debian bookworm, libre 1.1.0) with only the modules of
`baresip-core` (CI installs nothing else): `account.so` for the accounts file,
`menu.so` for the commands (`/dial`, `/hangup`, answer modes), `stdio.so` to
read those commands from stdin, `g711.so` for a codec both ends have, and
`ausine.so`/`aubridge.so` for audio without a sound card. There is no HTTP or
TCP control socket. The process is stopped with SIGTERM, on which baresip runs
`ua_stop_all(false)`: it hangs up a call in progress (BYE), unregisters every
account (REGISTER with `Contact: ...;expires=0`, answering the digest
challenge again) and exits when those transactions are done.

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

Calls, found by calling one baresip from another directly (no registrar):

- Commands come in on stdin, one per line (`/dial sip:bob@sip.example.test`,
  `/hangup`), read by `stdio.so` and run by `menu.so`; stdio prints
  "could not setup terminal" for a pipe and works anyway. The pipe must stay
  open as long as baresip runs: at end of file stdio spins on the readable
  descriptor at full CPU. `-e "/dial ..."` works too, but runs once at start,
  before the callee has registered. `ctrl_tcp.so` would need a port.
- The callee auto-answers with the account parameter `;answermode=auto`
  ("call: answering call on line 1 from sip:... with 200", then "200 Answering").
- Audio: `audio_source ausine,440` (a 440 Hz tone) only runs at 48 kHz stereo
  ("ausine: supports only 48kHz samplerate", then "only 2 channels"), and the
  call is never answered when the source fails; `ausrc_srate 48000` and
  `ausrc_channels 2` make baresip resample it to PCMU's 8 kHz mono.
  `aufile` is a source only in 1.0.0; `aubridge` is both a player and a source,
  so `audio_player`/`audio_alert aubridge,NAME` play into nothing.
- `statmode_default off`: otherwise menu rewrites an "[0:00:03] audio=64000/64000
  (bit/s)" status line with carriage returns several times a second.
- Log lines, `AOR` being the account's user@domain and PEER/LOCAL SIP URIs:
  "sip:AOR: Incoming call from:  PEER - (press 'a' to accept)" when a call rings
  (answermode manual); "AOR: Call established: PEER" on both ends once the 2xx
  is ACKed;
  "stream: incoming rtp for 'audio' established, receiving from IP:PORT" when
  media arrives (RTP goes UA to UA, never through the registrar);
  "PEER: session closed: REASON" on the end that did not hang up (a BYE or
  CANCEL received is "Connection reset by peer"; a final error response to the
  INVITE shows as its status line, "480 Temporarily Unavailable"); the end that
  hangs up prints "call: terminate call 'CALL-ID' with PEER" instead; "LOCAL: Call with PEER terminated (duration: N
  secs)" ("1 sec") on both ends when the call is gone, but only when N, whole
  seconds since the answer, is not 0: a call hung up within its first second ends
  without it, so a test holds a call for over a second (`CALL_SUMMARY_AFTER`).
- The SIP trace (`-s`) prints each message as an ANSI-coloured block: a line
  `TRANSPORT SOURCE -> DESTINATION` with the addresses of the socket or
  connection it went over, then the message; see `sip_trace()`.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BARESIP = "/usr/bin/baresip"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# One message of the `-s` trace: "ESC[36;1m#", "UDP 127.0.0.1:5060 -> 127.0.0.1:40000", the message, "ESC[;m".
_TRACE = re.compile(
    r"\x1b\[36;1m#\n(?P<transport>\w+) (?P<source>\S+) -> (?P<destination>\S+)\n(?P<message>.*?)\x1b\[;m", re.S,
)

CONFIG = """\
# Written by tests/integration/baresip.py: a UA that registers, dials and answers, with no sound card.
poll_method\t\tepoll
net_interface\t\t127.0.0.1
sip_listen\t\t{listen}
module_path\t\t{module_path}
module\t\t\tstdio.so
module\t\t\tg711.so
module\t\t\tausine.so
module\t\t\taubridge.so
module\t\t\tmenu.so
{uuid_module}module_tmp\t\taccount.so
statmode_default\toff
audio_player\t\taubridge,{name}
audio_alert\t\taubridge,{name}
audio_source\t\tausine,440
ausrc_srate\t\t48000
ausrc_channels\t\t2
"""


# A call shorter than this may end without "Call with PEER terminated (duration: 0 secs)".
CALL_SUMMARY_AFTER = 1.1


def account_line(
    *, user: str, domain: str, password: str, proxy_host: str | None, proxy_port: int | None, transport: str,
    regint: int, answermode: str = "manual", sipnat: str | None = None, outbound2: tuple[str, int] | None = None,
) -> str:
    """One line of baresip's `accounts` file: the AOR, its password, the outbound proxy, the transport, answering.

    No proxy_host: no outbound proxy (with regint=0, a UA that only calls and is called directly).
    `sipnat="outbound"`: RFC 5626 (+sip.instance and reg-id in the Contact, Supported: outbound).
    `outbound2`: a second proxy (host, port); with outbound on, baresip registers a flow through each
    (reg-id 1 and 2).
    """
    outbound = f';outbound="sip:{proxy_host}:{proxy_port};transport={transport}"' if proxy_host else ""
    if outbound2 is not None:
        outbound += f';outbound2="sip:{outbound2[0]}:{outbound2[1]};transport={transport}"'
    return (
        f"<sip:{user}@{domain};transport={transport}>"
        f";auth_user={user};auth_pass={password}{outbound}"
        f";regint={regint};answermode={answermode}" + (f";sipnat={sipnat}" if sipnat else "") + "\n"
    )


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message of baresip's `-s` trace, sent or received."""

    transport: str  # UDP, TCP or TLS
    source: str  # IP:PORT of the socket or connection it left from
    destination: str
    text: str  # the whole message, lines joined by "\n"

    @property
    def start_line(self) -> str:
        return self.text.partition("\n")[0]

    @property
    def request_uri(self) -> str | None:
        return self.start_line.split(" ")[1] if self.method else None

    @property
    def method(self) -> str | None:
        """INVITE, ACK, BYE, ... for a request; None for a response."""
        first = self.start_line.split(" ", 1)[0]
        return None if first.startswith("SIP/") else first

    @property
    def status(self) -> int | None:
        parts = self.start_line.split(" ", 2)
        return int(parts[1]) if parts[0].startswith("SIP/") else None

    def headers(self, name: str) -> list[str]:
        """The values of every `name:` header line, in order (baresip writes full names, one value per line)."""
        head = self.text.partition("\n\n")[0]
        return [
            value.strip() for line in head.split("\n")[1:]
            for field, sep, value in [line.partition(":")] if sep and field.strip().lower() == name.lower()
        ]

    def header(self, name: str) -> str | None:
        values = self.headers(name)
        return values[0] if values else None

    @property
    def cseq_method(self) -> str:
        return (self.header("CSeq") or " ").split()[-1]


class BaresipError(AssertionError):
    """baresip did not do what a test waited for; the message carries its log (with the SIP trace)."""


class Baresip:
    """One baresip process registering `sip:USER@DOMAIN` through the outbound proxy `sip:HOST:PORT;transport=T`.

    Every request it sends, calls included, goes to that proxy. `answermode="auto"`
    answers incoming calls at once. Without a proxy and with `regint=0` it neither
    registers nor routes: it is called at `listen` and dials SIP URIs as they are.
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
        proxy_host: str | None,
        proxy_port: int | None,
        transport: str,
        regint: int = 600,
        answermode: str = "manual",
        sipnat: str | None = None,
        outbound2: tuple[str, int] | None = None,
        listen: str = "127.0.0.1:0",
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
        # RFC 5626 needs the UA's +sip.instance: uuid.so makes one (and keeps it in the directory).
        uuid_module = "module_tmp\t\tuuid.so\n" if sipnat == "outbound" else ""
        (directory / "config").write_text(
            CONFIG.format(module_path=module_path, name=user, listen=listen, uuid_module=uuid_module))
        (directory / "accounts").write_text(
            account_line(
                user=user, domain=domain, password=password, proxy_host=proxy_host,
                proxy_port=proxy_port, transport=transport, regint=regint, answermode=answermode, sipnat=sipnat,
                outbound2=outbound2,
            )
        )

    @property
    def aor(self) -> str:
        return f"{self.user}@{self.domain}"

    def start(self) -> Baresip:
        if self.process is not None and self.process.poll() is None:
            # A second one would orphan the first, which spins at full CPU once its stdin closes.
            raise RuntimeError(f"baresip for {self.aor} is already running (the with block starts it)")
        with open(self.log_path, "w") as log_file:
            # stdin stays an open pipe until baresip has exited: stdio.so spins at end of file.
            self.process = subprocess.Popen(
                [self.executable, "-f", str(self.directory), "-s"],
                stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.directory,
            )
        return self

    def command(self, line: str) -> None:
        """Type one menu command (`/dial sip:...`, `/hangup`, ...) into baresip."""
        assert self.process is not None and self.process.stdin is not None, "baresip is not running"
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def dial(self, uri: str) -> None:
        self.command(f"/dial {uri}")

    def hangup(self) -> None:
        self.command("/hangup")

    def raw_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log(self) -> str:
        """Everything baresip printed so far, without colour codes."""
        return _ANSI.sub("", self.raw_log())

    def sip_trace(self) -> list[TracedMessage]:
        """Every SIP message baresip sent or received so far, in order."""
        return [
            TracedMessage(m["transport"], m["source"], m["destination"], m["message"].strip("\n"))
            for m in _TRACE.finditer(self.raw_log())
        ]

    def wait_for(
        self, pattern: str, timeout: float = 15.0, *, fail: str | None = None, since: int = 0,
    ) -> re.Match:
        """Wait until a line of the log matches `pattern`; raise if `fail` matches first, baresip exits or time is up.

        Only the log from offset `since` on is searched (a previous match's `.end()` waits for the next one).
        """
        wanted, failed = re.compile(pattern, re.M), re.compile(fail, re.M) if fail else None
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if match := wanted.search(text, since):
                return match
            if failed and (bad := failed.search(text, since)):
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

    def wait_call_established(self, timeout: float = 15.0, *, since: int = 0) -> re.Match:
        """Wait for "AOR: Call established: PEER" (group `peer`); raise if the call fails or closes first."""
        return self.wait_for(
            rf"^{re.escape(self.aor)}: Call established: (?P<peer>\S+)$", timeout,
            fail=r"^\S+: (session closed: .*|Call with \S+ terminated.*)$", since=since,
        )

    def wait_incoming_call(self, timeout: float = 15.0, *, since: int = 0) -> re.Match:
        """Wait for menu's "sip:AOR: Incoming call from: PEER - (press 'a' to accept)" (group `peer`): it rings."""
        aor = re.escape(self.aor)
        return self.wait_for(rf"^sip:{aor}: Incoming call from:\s+(?P<peer>\S+) .*$", timeout, since=since)

    def wait_session_closed(self, timeout: float = 15.0, *, since: int = 0) -> re.Match:
        """Wait for "PEER: session closed: REASON" (groups `peer`, `reason`): the other end hung up or refused."""
        return self.wait_for(r"^(?P<peer>\S+): session closed: (?P<reason>.*)$", timeout, since=since)

    def wait_call_closed(self, timeout: float = 15.0, *, since: int = 0) -> re.Match:
        """Wait for "LOCAL: Call with PEER terminated (duration: N secs)" (groups `peer`, `duration`).

        Not printed for a call that lasted under a second: hold calls for `CALL_SUMMARY_AFTER` seconds.
        """
        return self.wait_for(
            r"^\S+: Call with (?P<peer>\S+) terminated \(duration: (?P<duration>\d+) secs?\)$", timeout, since=since,
        )

    def _close_stdin(self) -> None:
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM: baresip hangs up, unregisters (Expires 0) and exits. SIGKILL if it takes longer than `timeout`."""
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
        self._close_stdin()
        return process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_stdin()

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        # After a failure baresip may be stuck retransmitting to a peer that never answers:
        # give its unregistration less time then.
        try:
            self.stop(timeout=10.0 if exc_type is None else 3.0)
        finally:
            self.kill()
