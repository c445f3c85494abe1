"""Runs the real sipp (Debian sip-tester) against a registrar, for tests and benchmarks."""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.helpers import free_port

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = shutil.which("sipp")


@dataclass
class SippRun:
    returncode: int
    successful: int
    failed: int
    messages: str  # sipp's -trace_msg log: every message sent and received
    errors: str  # sipp's -trace_err log: unexpected messages
    elapsed: float  # seconds from sipp's first call to its final statistics (0 if unknown)


def manifest_passwords(manifests: Path) -> dict[str, str]:
    """username -> password of the credential connections in the manifests (from their Secrets)."""
    documents = [doc for path in sorted(manifests.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    secrets = {
        (doc["metadata"].get("namespace", "default"), doc["metadata"]["name"]): doc.get("stringData", {})
        for doc in documents
        if doc.get("kind") == "Secret"
    }
    passwords = {}
    for doc in documents:
        if doc.get("kind") != "SipConnection":
            continue
        spec = doc["spec"]
        reference = spec.get("authentication", {}).get("passwordSecretRef")
        if reference:
            secret = secrets[(doc["metadata"].get("namespace", "default"), reference["name"])]
            passwords[spec["username"]] = secret[reference.get("key", "password")]
    return passwords


def users_csv(path: Path, users: list[tuple[str, str]], domain: str) -> Path:
    """An injection file: username; [authentication ...] keyword; domain (see register_auth.xml)."""
    lines = ["SEQUENTIAL"] + [
        f"{user};[authentication username={user} password={password}];{domain}" for user, password in users
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_sipp(scenario: str | Path, target: str | None, *, workdir: Path, timeout: float = 60, **options) -> SippRun:
    """Run sipp to the end (see start_sipp for the options) and return what it did."""
    return start_sipp(scenario, target, workdir=workdir, timeout=timeout, **options).wait()


def start_sipp(
    scenario: str | Path,
    target: str | None,
    *,
    workdir: Path,
    transport: str = "udp",
    calls: int = 1,
    rate: float | None = None,
    injection: Path | None = None,
    local_ip: str = "127.0.0.1",
    local_port: int | None = None,
    keys: dict[str, str] | None = None,
    timeout: float = 60,
    extra: list[str] | None = None,
    wrapper: list[str] | None = None,
    trace_messages: bool = True,
    name: str = "sipp",
) -> BackgroundSipp:
    """Start sipp in the background: `wait()` gives the same SippRun as run_sipp.

    `target` None runs a scenario that starts with a recv as a plain UAS on `local_port`. `transport` "tcp" is
    one connection from sipp's own port (where sipp also listens), "tcp-per-call" one per call from a port
    where nothing listens: a request that reaches such a call came down the connection the call opened.
    `name` prefixes its log files in `workdir`, so several sipps (a UAS and a UAC) can share it.
    """
    assert SIPP is not None, "sipp is not installed (make test installs Debian's sip-tester)"
    scenario_path = Path(scenario) if Path(scenario).is_absolute() else SCENARIOS / scenario
    messages, errors, stats = (workdir / f"{name}-{what}" for what in ("messages.log", "errors.log", "stats.csv"))
    for path in (messages, errors, stats):
        path.unlink(missing_ok=True)
    command = [
        *(wrapper or []), SIPP, *([target] if target else []), "-sf", str(scenario_path), "-m", str(calls),
        "-i", local_ip, "-t", {"udp": "u1", "tcp": "t1", "tcp-per-call": "tn"}[transport],
        "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-trace_err", "-error_file", str(errors),
        "-trace_stat", "-stf", str(stats),
    ]
    if trace_messages:  # costs sipp dearly at benchmark rates
        command += ["-trace_msg", "-message_file", str(messages)]
    # sipp's own default is 5060: it would collide with a registrar a user runs.
    command += ["-p", str(local_port if local_port is not None else free_port(local_ip))]
    if transport == "tcp-per-call":
        # sipp's "tn": each call connects from a port of its own (sipp listens on -p, not there). Its default
        # socket limit (50000) exceeds a common open-files limit (20000) and sipp refuses to start; a much
        # lower one ends a fast run early (a call's socket is freed only when the call is).
        command += ["-max_socket", str(min(50_000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100))]
    if rate is not None:
        command += ["-r", str(rate)]
    if injection is not None:
        command += ["-inf", str(injection)]
    for key, value in (keys or {}).items():
        command += ["-key", key, value]
    command += extra or []
    with open(workdir / f"{name}-screen.log", "wb") as screen:  # sipp's screen; a pipe could fill up
        process = subprocess.Popen(command, cwd=workdir, stdout=screen, stderr=subprocess.STDOUT)
    return BackgroundSipp(process, messages, errors, stats, timeout)


@dataclass
class BackgroundSipp:
    process: subprocess.Popen
    messages_path: Path
    errors_path: Path
    stats_path: Path
    timeout: float

    def messages(self) -> str:
        """The message trace so far (sipp writes it as it goes)."""
        return self.messages_path.read_text(errors="replace") if self.messages_path.exists() else ""

    def wait(self, timeout: float | None = None) -> SippRun:
        """Wait for sipp to end (killing it after `timeout`, by default its own -timeout plus 30 s)."""
        try:
            returncode = self.process.wait(timeout=self.timeout + 30 if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self.process.returncode
        successful, failed, elapsed = _final_counts(self.stats_path)
        return SippRun(
            returncode=returncode,
            successful=successful,
            failed=failed,
            messages=self.messages(),
            errors=self.errors_path.read_text(errors="replace") if self.errors_path.exists() else "",
            elapsed=elapsed,
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def sipp_statistics(path: Path) -> list[dict[str, str]]:
    """The rows of sipp's -trace_stat file (the last is the final one), as field -> value."""
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    header = lines[0].split(";") if lines else []
    return [dict(zip(header, line.split(";"))) for line in lines[1:]]


def seconds_run(row: dict[str, str]) -> float:
    """CurrentTime minus StartTime of a statistics row (their third field is epoch seconds with
    microseconds), so sipp's own start-up is not in it; 0 when the row lacks them."""
    try:
        return max(0.0, float(row["CurrentTime"].split("\t")[-1]) - float(row["StartTime"].split("\t")[-1]))
    except (KeyError, ValueError):
        return 0.0


def _final_counts(stats: Path) -> tuple[int, int, float]:
    """SuccessfulCall(C), FailedCall(C) and the seconds run, from sipp's statistics file."""
    rows = sipp_statistics(stats)
    if not rows:
        return 0, 0, 0.0
    final = rows[-1]
    return int(final.get("SuccessfulCall(C)", 0)), int(final.get("FailedCall(C)", 0)), seconds_run(final)


def flood(
    target: str, *, workdir: Path, local_ip: str, seconds: float, keys: dict[str, str],
    scenario: str = "flood_invite.xml", wrapper: list[str] | None = None,
) -> int:
    """sipp's best rate of `scenario` from `local_ip` for `seconds`; the requests it sent.

    At such rates sipp 3.6 sometimes dies of a heap corruption of its own (glibc's "malloc
    assertion failure in sysmalloc"): a flood that stops early is started again until the
    time is up, and the statistics it dumps every second count what each run sent.
    """
    deadline = time.monotonic() + seconds
    sent, runs = 0, 0
    while (left := int(deadline - time.monotonic())) >= 1:  # whole seconds: sipp's -timeout 0s is none
        runs += 1
        run = start_sipp(
            scenario, target, workdir=workdir, local_ip=local_ip, calls=10**9, rate=100_000, timeout=left,
            trace_messages=False, name=f"flood-{runs}", keys=keys, wrapper=wrapper,
            # -l: calls in flight (they end as soon as sent); -fd 1: statistics every second.
            extra=["-rp", "1000", "-l", "10000", "-fd", "1"],
        )
        run.wait()
        rows = sipp_statistics(run.stats_path)
        sent += max((int(row.get("TotalCallCreated") or 0) for row in rows), default=0)
    return sent


def single_request_scenario(path: Path, request: str, expect: int) -> Path:
    """A scenario that sends one request (sipp keyword syntax) and expects one final status."""
    path.write_text(
        f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="one request, expect {expect}">
  <send retrans="500"><![CDATA[
{request.strip()}

]]></send>
  <recv response="{expect}"/>
</scenario>
"""
    )
    return path


@dataclass
class TracedMessage:
    """One SIP message from sipp's -trace_msg log, as sipp sent or received it."""

    direction: str  # "sent" or "received"
    transport: str  # "UDP" or "TCP"
    text: str

    @property
    def start_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def request_uri(self) -> str | None:
        parts = self.start_line.split()
        return None if self.start_line.startswith("SIP/2.0") else parts[1]

    def header(self, name: str) -> list[str]:
        """Every value of header `name` (or its compact form), in order; Via, Route, Record-Route and Contact
        values joined by commas on one line come apart (other headers' commas are theirs: Digest challenges)."""
        names = {name.lower(), *([_COMPACT[name.lower()]] if name.lower() in _COMPACT else [])}
        values = []
        for line in self.text.split("\n\n", 1)[0].split("\n")[1:]:
            field, colon, value = line.partition(":")
            if colon and field.strip().lower() in names:
                values += _split_commas(value.strip()) if name.lower() in _LISTS else [value.strip()]
        return values


_LISTS = {"via", "route", "record-route", "contact"}
_COMPACT = {"via": "v", "from": "f", "to": "t", "call-id": "i", "contact": "m", "content-length": "l",
            "content-type": "c"}


def _split_commas(value: str) -> list[str]:
    """Split a header value at the commas that separate values (not inside <...> or quotes)."""
    parts, depth, quoted, start = [], 0, False, 0
    for index, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append(value[start:index].strip())
            start = index + 1
    parts.append(value[start:].strip())
    return [part for part in parts if part]


def traced_messages(trace: str, direction: str | None = None) -> list[TracedMessage]:
    """The messages of a sipp -trace_msg log (SippRun.messages), optionally only those sent or received."""
    found = []
    for block in re.split(r"^-{20,} [^\n]*\n", trace.replace("\r\n", "\n"), flags=re.M):
        match = re.match(r"(UDP|TCP) message (sent|received)[^\n]*\n\n", block)
        if match and direction in (None, match.group(2)):
            found.append(TracedMessage(match.group(2), match.group(1), block[match.end():].strip("\n") + "\n"))
    return found
