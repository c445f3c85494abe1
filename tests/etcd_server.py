"""A real etcd (Debian's etcd-server, /usr/bin/etcd) for the etcd store's integration tests: one member,
or a cluster of three (EtcdCluster) where two make a quorum.

`EtcdServer(tmp_path)` picks loopback client and peer ports at run time and keeps them, and its data
directory, for its whole life: `restart()` brings the same member back on the same address with the
same data, so a client built once reconnects to it, as a registrar pod does when etcd restarts.
With `tls=EtcdServerTls(...)` it serves clients over TLS only and requires a client certificate signed
by the same CA (--client-cert-auth), as the chart's etcd does with TLS on.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from tests.helpers import free_port
from tests.pki import CertFiles

if TYPE_CHECKING:
    from registrar.store.etcd_session import EtcdTls

ETCD = shutil.which("etcd")
INSTALL_HINT = "etcd not found on PATH: `make test` installs it (Debian package etcd-server, needs root)"


@dataclass(frozen=True)
class EtcdServerTls:
    """etcd's server certificate (its ca.crt is the CA client certificates must come from), and the
    client certificate EtcdServer's own health probe presents."""

    server: CertFiles
    probe_client: CertFiles


class _Started:
    """`with X(...) as x:` starts it and always stops it; a start that fails kills what it left running."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class EtcdServer(_Started):
    """One etcd process on 127.0.0.1; `with EtcdServer(tmp) as etcd:` starts it and always stops it."""

    def __init__(self, tmp_path: Path, name: str = "sipreg-test", start_timeout: float = 15,
                 tls: EtcdServerTls | None = None) -> None:
        self.name = name
        self.tls = tls
        self.directory = Path(tmp_path) / f"etcd-{name}"
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        # Set by EtcdCluster: every member's name=peer URL, and the cluster's name. None: a cluster of one.
        self.initial_cluster: str | None = None
        self.cluster_token: str | None = None

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """host:port of the client (gRPC and HTTP) listener."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The store URL sipreg takes, e.g. `etcd://127.0.0.1:PORT`."""
        return f"etcd://{self.endpoint}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        if ETCD is None:
            raise RuntimeError(INSTALL_HINT)
        client_url = f"{self.scheme}://{self.endpoint}"
        peer_url = self.peer_url
        if self.initial_cluster is None:
            # One member on loopback: a short election gets a leader (and /health) within ~0.1 s.
            timing = ["--heartbeat-interval", "10", "--election-timeout", "100"]
        else:
            # Members that must hear each other on a busy 2-core machine: etcd's own ratio, shorter.
            timing = ["--heartbeat-interval", "50", "--election-timeout", "500"]
        tls = [] if self.tls is None else [
            "--cert-file", str(self.tls.server.cert),
            "--key-file", str(self.tls.server.key),
            "--trusted-ca-file", str(self.tls.server.ca),
            "--client-cert-auth",
        ]
        return [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",  # ignored once the data dir holds a member (restart)
            "--initial-cluster-token", self.cluster_token or f"{self.name}-{self.client_port}",
            *timing,
            "--logger", "zap",
            "--log-outputs", "stderr",
            *tls,
        ]

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.server.ca))
        context.load_cert_chain(str(self.tls.probe_client.cert), str(self.tls.probe_client.key))
        return context

    def start(self) -> None:
        """Start etcd and return once /health says it serves; raise with the log's tail if it does not."""
        self.launch()
        self.wait_healthy()

    def launch(self) -> None:
        """Start the process, not waiting: a cluster's member has no leader until a quorum has started."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # ETCD_* variables in the environment would override the flags; leave none behind.
        env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD")}
        with open(self.log_path, "a") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}\n")
            log.flush()
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def wait_healthy(self) -> None:
        assert self.process is not None, "etcd was not launched"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode} at start:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"etcd did not become healthy within {self.start_timeout} s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        """This member answers on the client port and the cluster has a leader.

        "This member": the answering member's peer URL must be ours, or a stray etcd that already held
        the port (free_port() only says the port was free a moment ago) would pass for this one.
        """
        context = self._ssl_context()
        try:
            with urllib.request.urlopen(f"{self.scheme}://{self.endpoint}/health", timeout=1, context=context) as response:
                if json.load(response).get("health") != "true":
                    return False
            request = urllib.request.Request(f"{self.scheme}://{self.endpoint}/v3/cluster/member/list", data=b"{}")
            with urllib.request.urlopen(request, timeout=1, context=context) as response:
                members = json.load(response)
        except (OSError, ValueError):  # not listening yet, no leader yet (503), half a body
            return False
        answering = members["header"]["member_id"]
        peer_urls = [url for member in members["members"] if member["ID"] == answering for url in member["peerURLs"]]
        return self.peer_url in peer_urls

    def value(self, key: bytes, wait: float = 0) -> bytes | None:
        """The value etcd holds at `key` (read through its JSON gateway), waiting up to `wait` s for one to appear."""
        body = json.dumps({"key": base64.b64encode(key).decode()}).encode()
        request = urllib.request.Request(f"{self.scheme}://{self.endpoint}/v3/kv/range", data=body)
        deadline = time.monotonic() + wait
        while True:
            with urllib.request.urlopen(request, timeout=5, context=self._ssl_context()) as answer:
                items = json.load(answer).get("kvs", [])
            if items:
                return base64.b64decode(items[0]["value"])
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (a clean shutdown) and wait; SIGKILL if it does not exit in `timeout` s. Idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.send_signal(signal.SIGCONT)  # a paused etcd handles SIGTERM only once resumed
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: etcd dies without a goodbye (a crashed node); the data dir stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: etcd hangs with its sockets open (the kernel still accepts connections and data, nobody
        answers), like a node behind a dead network path. Requests time out instead of failing fast."""
        assert self.running, "etcd is not running"
        self.process.send_signal(signal.SIGSTOP)
        # The signal takes effect when the kernel next schedules etcd: wait for that, or a
        # request sent right after pause() may still be answered on a busy machine.
        deadline = time.monotonic() + 5
        while _process_state(self.process.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        assert self.running, "etcd is not running"
        self.process.send_signal(signal.SIGCONT)

    def restart(self, kill: bool = False) -> None:
        """Stop (or kill) and start again: same data dir, same ports."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"EtcdServer({self.endpoint}, {'running' if self.running else 'stopped'}, data={self.data_dir})"


class EtcdCluster(_Started):
    """`size` etcd members on loopback forming one cluster; `with EtcdCluster(tmp) as cluster:` starts them
    all and always stops them. Any majority is a quorum: with three, one member alone has none."""

    def __init__(self, tmp_path: Path, size: int = 3, name: str = "sipreg-cluster") -> None:
        self.members = [EtcdServer(tmp_path, name=f"{name}-{index}") for index in range(size)]
        initial = ",".join(f"{member.name}={member.peer_url}" for member in self.members)
        for member in self.members:
            member.initial_cluster, member.cluster_token = initial, name

    @property
    def url(self) -> str:
        """The store URL sipreg takes, every member's client address: `etcd://HOST:PORT,HOST:PORT,...`."""
        return "etcd://" + ",".join(member.endpoint for member in self.members)

    def start(self) -> None:
        for member in self.members:
            member.launch()
        for member in self.members:
            member.wait_healthy()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def kill(self) -> None:
        for member in self.members:
            member.kill()


def _process_state(pid: int) -> str:
    """The one-letter state of a process (R, S, T for stopped...), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


async def records(url: str, prefix: str, tls: EtcdTls | None = None) -> dict[bytes, object]:
    """What etcd holds under `prefix`, key -> KeyValue (value, version, lease...), read outside any registrar."""
    from registrar.store.etcd_session import EtcdSession, parse_endpoints

    session = EtcdSession(parse_endpoints(url), tls=tls)
    try:
        kvs, _ = await session.read_prefix(prefix.encode())
        return {kv.key: kv for kv in kvs}
    finally:
        await session.close()
