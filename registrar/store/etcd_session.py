"""A session with an etcd cluster: endpoint failover, paged reads, resumable watches, and one lease keep-alive task.

Built on aetcd's gRPC channel and generated stubs. Requests are made with the
stubs directly rather than aetcd's helpers: the location store needs the
response header revision of a transaction, nested transactions, paged ranges
at a fixed revision, and a watch that reports compaction and progress instead
of wrapping each event in Python objects.

Every failure to reach etcd surfaces as `EtcdUnavailable`; the session then
moves to the next endpoint, so the next call tries another member.

TLS (`EtcdTls`): a CA to verify the members' certificates and, for etcd's
--client-cert-auth, a client certificate and key; `EtcdTls.from_environment`
reads them from the files named by SIPREG_ETCD_CA, SIPREG_ETCD_CERT and
SIPREG_ETCD_KEY (the chart mounts a Secret there).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aetcd
import grpc
from aetcd import rpc

from registrar.eager import start_eagerly
from registrar.store import StoreUnavailable
from registrar.store.layout import prefix_range

log = logging.getLogger("sipreg.store")

REQUEST_TIMEOUT = 2.0  # seconds; a REGISTER waits at most this long for etcd before 503
# The key a quorum check reads, as etcd's own /health does: whether it exists does not matter, a
# linearizable read of it needs the leader's read index, which a member without a quorum cannot get.
HEALTH_KEY = b"health"
PAGE_SIZE = 2000
MAX_TXN_OPS = 128  # operations per transaction (etcd's default --max-txn-ops)
CHANNEL_OPTIONS = {
    # A resync reads pages of PAGE_SIZE bindings records; the default 4 MiB limit is too tight.
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    # Notice a dead or hung member within seconds even on an idle watch (etcd allows pings
    # every 5 s). grpcio waits for a ping's answer for http2.ping_timeout_ms (60 s unless set).
    "grpc.keepalive_time_ms": 5_000,
    "grpc.keepalive_timeout_ms": 2_000,
    "grpc.http2.ping_timeout_ms": 2_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 2_000,
}
# What a dead, restarting or unreachable member looks like through gRPC.
UNREACHABLE = {
    rpc.StatusCode.UNAVAILABLE,
    rpc.StatusCode.DEADLINE_EXCEEDED,
    rpc.StatusCode.CANCELLED,
    rpc.StatusCode.UNKNOWN,
    rpc.StatusCode.INTERNAL,
}


Read = tuple["rpc.KeyValue | None", int]  # a key's value (None: absent), and the revision it was read at

# Linearizable (not serializable), counting only: nothing comes back but a header.
_QUORUM_READ = rpc.RangeRequest(key=HEALTH_KEY, count_only=True)


class EtcdUnavailable(StoreUnavailable):
    """etcd did not answer (or answered that it cannot serve): try again later."""


class WatchCompacted(Exception):
    """The revision a watch wanted to resume from is compacted away: read everything anew."""


def parse_endpoints(url: str) -> list[tuple[str, int]]:
    """`etcd://HOST:PORT[,HOST:PORT...]` as (host, port) pairs; ValueError names what is wrong."""
    if not url.startswith("etcd://"):
        raise ValueError(f"{url!r} is not etcd://HOST:PORT[,HOST:PORT...]")
    endpoints = []
    for item in url[len("etcd://") :].rstrip("/").split(","):
        host, _, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad etcd endpoint {item!r} in {url!r} (want HOST:PORT)")
        endpoints.append((host, int(port)))
    return endpoints


@dataclass(frozen=True)
class EtcdTls:
    """PEM contents (not paths: read once, at start) for a TLS connection to etcd."""

    ca: bytes | None = None  # None: the system's trusted roots
    cert: bytes | None = None  # client certificate chain, for etcd's --client-cert-auth
    key: bytes | None = None

    ENVIRONMENT = (("SIPREG_ETCD_CA", "ca"), ("SIPREG_ETCD_CERT", "cert"), ("SIPREG_ETCD_KEY", "key"))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> EtcdTls | None:
        """TLS from the files SIPREG_ETCD_CA/_CERT/_KEY name; None (plain text) when none is set.

        Raises ValueError naming the variable whose file cannot be read, or a
        certificate without its key (or the other way round).
        """
        contents: dict[str, bytes] = {}
        for variable, attribute in cls.ENVIRONMENT:
            path = environ.get(variable)
            if not path:
                continue
            try:
                contents[attribute] = Path(path).read_bytes()
            except OSError as error:
                raise ValueError(f"{variable}: cannot read {path}: {error.strerror or error}") from None
        if not contents:
            return None
        if ("cert" in contents) != ("key" in contents):
            raise ValueError("SIPREG_ETCD_CERT and SIPREG_ETCD_KEY go together (a client certificate and its key)")
        return cls(**contents)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert)


class _TlsClient(aetcd.Client):
    """aetcd's Client over a TLS channel: aetcd 1.0 opens only plain-text channels.

    Sets up what the session uses (the channel and the KV, lease, cluster and
    maintenance stubs); no username/password auth, which the session never uses.
    """

    def __init__(self, host: str, port: int, *, tls: EtcdTls, **kwargs: object) -> None:
        super().__init__(host, port, **kwargs)  # type: ignore[arg-type]
        self._credentials = tls.credentials()

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self.channel = rpc.secure_channel(f"{self._host}:{self._port}", self._credentials, options=self._options.items())
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._connected.set()


class EtcdSession:
    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout: float = REQUEST_TIMEOUT,
                 tls: EtcdTls | None = None, on_error: Callable[[str], None] = lambda operation: None):
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.tls = tls
        self._next = 0  # index of the endpoint to try first
        self._client: aetcd.Client | None = None
        self._connecting: asyncio.Lock | None = None
        self._kept_alive: dict[int, Callable[[], None]] = {}  # lease id -> what to do when it is lost
        self._keep_alive_task: asyncio.Task[None] | None = None
        # Told the operation ("connect", "txn", "read", "watch", "lease") of every call that
        # failed: sipreg_store_errors_total. A call that could not connect counts twice.
        self._on_error = on_error
        # The Txn call of the current client that sends encoded requests as they are.
        self._encoded_txn: tuple[aetcd.Client, Callable[..., Awaitable[rpc.TxnResponse]]] | None = None
        # key -> each asker's answer, in the next batch (read); and whether a batch is out.
        self._to_read: dict[bytes, list[asyncio.Future[Read]]] = {}
        self._reading = False
        self._sending = False  # in _send_reads' loop

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[(self._next - 1) % len(self.endpoints)]
        return f"{host}:{port}"

    async def connect(self) -> None:
        """Use the first endpoint, from the next one in turn, that answers a linearizable read.

        A member cut off from its cluster's quorum still answers status requests, serves its
        stale data and keeps watches open: connecting to it would look like being connected."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is not None:
                return
            errors = []
            for _ in self.endpoints:
                host, port = self.endpoints[self._next]
                self._next = (self._next + 1) % len(self.endpoints)
                client = self._new_client(host, port)
                try:
                    await client.connect()
                    await client.kvstub.Range(_QUORUM_READ, timeout=self.timeout)
                except (rpc.AioRpcError, aetcd.ClientError, OSError) as error:
                    errors.append(f"{host}:{port}: {_describe(error)}")
                    await _close_quietly(client)
                    continue
                self._client = client
                log.info("sipreg: connected to etcd at %s:%d%s", host, port, " over TLS" if self.tls else "")
                return
            self._on_error("connect")
            raise EtcdUnavailable("etcd unreachable: " + "; ".join(errors))

    def _new_client(self, host: str, port: int) -> aetcd.Client:
        if self.tls is not None:
            return _TlsClient(host, port, tls=self.tls, timeout=self.timeout, options=CHANNEL_OPTIONS)
        return aetcd.Client(host, port, timeout=self.timeout, options=CHANNEL_OPTIONS)

    async def disconnect(self, client: aetcd.Client | None = None) -> None:
        """Drop the current endpoint (if it is still `client`); the next call connects to the next one."""
        if self._client is None or (client is not None and client is not self._client):
            return  # someone else already moved on
        client, self._client = self._client, None
        await _close_quietly(client)

    async def close(self) -> None:
        to_read, self._to_read = self._to_read, {}
        # None is left waiting for a batch that never leaves; the batch out fails as the channel closes.
        _fail(to_read.values(), EtcdUnavailable("the etcd session is closed"))
        if self._keep_alive_task is not None:
            self._keep_alive_task.cancel()
            self._keep_alive_task = None
        await self.disconnect()

    async def _current(self) -> aetcd.Client:
        if self._client is None:
            await self.connect()
        assert self._client is not None
        return self._client

    @contextlib.asynccontextmanager
    async def _reaching(self, client: aetcd.Client) -> AsyncIterator[None]:
        """Turn "etcd is not there" in any form into EtcdUnavailable, and move to the next endpoint (not for a
        call that timed out: see below)."""
        try:
            yield
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled, not the call
            # Closing a channel (another task gave up on this endpoint) cancels its calls.
            await self.disconnect(client)
            raise EtcdUnavailable(f"etcd at {self.endpoint}: connection closed") from None
        except rpc.AioRpcError as error:
            if error.code() not in UNREACHABLE:
                raise
            # A call that timed out says the registrar or etcd is slow, not that the member is gone:
            # dropping the channel would cancel every call on it and the watch. Whether the member
            # still serves is the quorum check's to say (EtcdStore), which then disconnects.
            if error.code() != rpc.StatusCode.DEADLINE_EXCEEDED:
                await self.disconnect(client)
            raise EtcdUnavailable(f"etcd at {self.endpoint}: {_describe(error)}") from None

    @contextlib.asynccontextmanager
    async def _calling(self, operation: str) -> AsyncIterator[aetcd.Client]:
        """The client for one call; a failure is told to `on_error` under `operation` (metrics), then raised."""
        try:
            client = await self._current()
            async with self._reaching(client):
                yield client
        except (EtcdUnavailable, rpc.AioRpcError):
            self._on_error(operation)
            raise

    # -- requests --------------------------------------------------------------------------

    async def txn(self, request: rpc.TxnRequest | Sequence[bytes]) -> rpc.TxnResponse:
        """A transaction: a TxnRequest, or the success ops of one already encoded (compare_and_swap)."""
        async with self._calling("txn") as client:
            if isinstance(request, rpc.TxnRequest):
                return await client.kvstub.Txn(request, timeout=self.timeout)
            txn = self._txn_call(client)
            return await txn(b"".join([_field(b"\x12", op) for op in request]), timeout=self.timeout)

    def _txn_call(self, client: aetcd.Client) -> Callable[..., Awaitable[rpc.TxnResponse]]:
        """The client's Txn call that sends an encoded request as it is."""
        if self._encoded_txn is None or self._encoded_txn[0] is not client:
            txn = client.channel.unary_unary(
                "/etcdserverpb.KV/Txn", request_serializer=None, response_deserializer=rpc.TxnResponse.FromString
            )
            self._encoded_txn = (client, txn)
        return self._encoded_txn[1]

    async def write(self, puts: dict[bytes, bytes], deletes: Sequence[bytes] = ()) -> None:
        """Put and delete keys in one transaction (all or nothing)."""
        ops = [put_op(key, value) for key, value in puts.items()] + [delete_op(key) for key in deletes]
        await self.txn(rpc.TxnRequest(success=ops))

    async def read_prefix(self, prefix: bytes) -> tuple[list[rpc.KeyValue], int]:
        """Every key under `prefix` at one revision, read in pages; and that revision."""
        return await self.read_ranges([prefix_range(prefix)])

    async def read_ranges(self, ranges: Sequence[tuple[bytes, bytes]]) -> tuple[list[rpc.KeyValue], int]:
        """Every key in each [key, range_end) of `ranges`, all at one revision, read in pages; and that revision."""
        revision, kvs = 0, []
        async with self._calling("read") as client:
            for start, end in ranges:
                while True:
                    page = await client.kvstub.Range(
                        rpc.RangeRequest(key=start, range_end=end, limit=PAGE_SIZE, revision=revision),
                        timeout=self.timeout * 5,
                    )
                    revision = revision or page.header.revision
                    kvs.extend(page.kvs)
                    if not page.more:
                        break
                    start = page.kvs[-1].key + b"\0"
        return kvs, revision

    def read(self, keys: Sequence[bytes]) -> list[asyncio.Future[Read]]:
        """Each key's value (None: absent) as the member in use holds it, and that revision: serializable
        reads, answered without asking the leader (they may trail the latest write by a raft round).

        One batch of reads is out at a time; keys asked for meanwhile go together as the next, one
        transaction of up to MAX_TXN_OPS reads (a gRPC call costs the registrar about 0.2 ms of CPU
        however many keys it carries), and a key asked for twice is read once. So on an idle
        registrar a read goes at once, and under load reads cost a fraction of a call each.

        Each asker gets futures of its own, set the moment the answer is in: an asker that gives up
        (cancels) leaves the read to the others, and the answer reaches the asker in one turn of the
        event loop. Every turn counts: under load each waits behind the datagrams of one wakeup, and
        with a Task per batch, a shield per asker and a gather a lookup took eight (issue 17). The
        futures fail with EtcdUnavailable when etcd cannot answer."""
        loop = asyncio.get_running_loop()
        answers = []
        for key in keys:
            answer = loop.create_future()
            self._to_read.setdefault(key, []).append(answer)
            answers.append(answer)
        if not self._reading:
            self._send_reads()
        return answers

    def _send_reads(self) -> None:
        """Send the next batch, if any is asked for and none is out; each batch's end calls this again.

        A batch runs at once, driven by the gRPC call it waits on (no Task). One that ends without
        waiting (etcd known to be away) comes back here while this still runs: this loop sends the
        next, so a long queue of keys is failed in turn, not in recursion."""
        if self._sending:
            return
        self._sending = True
        try:
            while self._to_read and not self._reading:
                batch = {key: self._to_read.pop(key) for key in list(itertools.islice(self._to_read, MAX_TXN_OPS))}
                self._reading = True
                start_eagerly(self._read_batch(batch))
        finally:
            self._sending = False

    async def _read_batch(self, batch: dict[bytes, list[asyncio.Future[Read]]]) -> None:
        # Driven by no Task, nothing may escape from here: everything a batch meets is told to its askers.
        try:
            async with self._calling("read") as client:
                if len(batch) == 1:
                    response = await client.kvstub.Range(
                        rpc.RangeRequest(key=next(iter(batch)), serializable=True), timeout=self.timeout
                    )
                    found = [response.kvs[0] if response.kvs else None]
                    revision = response.header.revision
                else:  # read-only, of serializable reads only: etcd answers it as it answers those
                    txn = self._txn_call(client)
                    answer = await txn(b"".join([_field(b"\x12", _serializable_range(key)) for key in batch]),
                                       timeout=self.timeout)
                    found = [r.response_range.kvs[0] if r.response_range.kvs else None for r in answer.responses]
                    revision = answer.header.revision
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # a closed channel's cancelled call too: no Task of ours was cancelled
            _fail(batch.values(), error if isinstance(error, EtcdUnavailable)
                  else EtcdUnavailable(f"etcd did not read: {_describe(error)}"))
        else:
            for answers, kv in zip(batch.values(), found):
                for answer in answers:
                    if not answer.done():
                        answer.set_result((kv, revision))
        self._reading = False
        self._send_reads()

    async def count_prefix(self, prefix: bytes) -> int:
        """How many keys are under `prefix` (the member in use's count: serializable, values not read)."""
        start, end = prefix_range(prefix)
        async with self._calling("read") as client:
            response = await client.kvstub.Range(
                rpc.RangeRequest(key=start, range_end=end, count_only=True, serializable=True), timeout=self.timeout
            )
        return response.count

    async def write_claimed(
        self, claim: bytes, claimant: bytes, puts: dict[bytes, bytes], deletes: Sequence[bytes] = ()
    ) -> bytes | None:
        """Put `puts` and delete `deletes` if the key `claim` holds `claimant`, or holds nothing (then it is
        claimed in the same transaction); None when written, else who holds the claim. Of two claimants
        writing at once, one wins: the claim's absence is compared, not assumed."""
        ours, free = _claim_compares(claim, claimant)
        writes = [put_op(key, value) for key, value in puts.items()] + [delete_op(key) for key in deletes]
        request = rpc.TxnRequest(
            compare=[ours],
            success=writes,
            failure=[rpc.RequestOp(request_txn=rpc.TxnRequest(
                compare=[free],
                success=[put_op(claim, claimant), *writes],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=claim))],
            ))],
        )
        response = await self.txn(request)
        if response.succeeded:
            return None
        nested = response.responses[0].response_txn
        if nested.succeeded:
            return None
        kvs = nested.responses[0].response_range.kvs
        return kvs[0].value if kvs else b""

    async def release_claim(self, claim: bytes, claimant: bytes, deletes: Sequence[bytes]) -> None:
        """Delete `deletes` and the claim if `claimant` holds it, or `deletes` if nobody does (a record from
        before claims); a claim another holds stays, and so do its keys."""
        ours, free = _claim_compares(claim, claimant)
        deleting = [delete_op(key) for key in deletes]
        await self.txn(rpc.TxnRequest(
            compare=[ours],
            success=[*deleting, delete_op(claim)],
            failure=[rpc.RequestOp(request_txn=rpc.TxnRequest(compare=[free], success=deleting))],
        ))

    async def quorum(self, timeout: float) -> None:
        """Return when the member in use can serve a linearizable read, i.e. its cluster has a quorum;
        EtcdUnavailable (and the next endpoint for the next call) when it cannot within `timeout` s."""
        async with self._calling("read") as client:
            await client.kvstub.Range(_QUORUM_READ, timeout=timeout)

    async def grant(self, ttl: int) -> int:
        async with self._calling("lease") as client:
            return (await client.leasestub.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=self.timeout)).ID

    async def revoke(self, lease: int) -> None:
        try:
            async with self._calling("lease") as client:
                await client.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=self.timeout)
        except rpc.AioRpcError:  # NOT_FOUND: it expired already
            pass

    async def watch(
        self, ranges: Sequence[tuple[bytes, bytes]], start_revision: int
    ) -> AsyncIterator[rpc.WatchResponse]:
        """Responses with the changes in each [key, range_end) of `ranges` from `start_revision` on, until
        etcd goes away: one stream, a watch per range.

        Raises WatchCompacted when that revision is gone, EtcdUnavailable when the
        stream breaks. Progress notifications (no events) carry the revision etcd
        has reached, so an idle watch still knows where to resume.
        """
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[rpc.WatchRequest]:
            for key, end in ranges:
                yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=key, range_end=end, start_revision=start_revision, progress_notify=True
                ))
            # Keep the stream open; nothing more to ask. Cancelled with the call: end quietly
            # (gRPC would log the cancellation with a traceback).
            with contextlib.suppress(asyncio.CancelledError):
                await stop.wait()

        async with self._calling("watch") as client:
            call = rpc.WatchStub(client.channel).Watch(requests())
            try:
                async for response in call:
                    if response.compact_revision:
                        raise WatchCompacted(response.compact_revision)
                    if response.canceled:
                        raise EtcdUnavailable(f"etcd cancelled the watch: {response.cancel_reason or 'no reason'}")
                    yield response
                raise EtcdUnavailable(f"etcd at {self.endpoint} closed the watch")
            finally:
                stop.set()
                call.cancel()

    # -- leases kept alive -----------------------------------------------------------------

    def keep_alive(self, lease: int, ttl: int, lost: Callable[[], None]) -> None:
        """Refresh `lease` every ttl/3 seconds from the one keep-alive task; call `lost` if it expires."""
        self._kept_alive[lease] = lost
        if self._keep_alive_task is None:
            self._keep_alive_task = asyncio.create_task(self._keep_leases_alive(max(1.0, ttl / 3)), name="etcd-keepalive")

    async def _keep_leases_alive(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for lease, lost in list(self._kept_alive.items()):
                reply = None
                try:
                    client = await self._current()
                    async with self._reaching(client):
                        replies = client.leasestub.LeaseKeepAlive(
                            iter([rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=self.timeout
                        )
                        async for reply in replies:
                            break
                except (rpc.AioRpcError, EtcdUnavailable) as error:
                    log.debug("sipreg: lease keep-alive failed: %s", _describe(error))
                    continue  # the lease may still be alive; try again next round
                if reply is None or reply.TTL <= 0:
                    self._kept_alive.pop(lease, None)
                    lost()


def put_op(key: bytes, value: bytes, lease: int = 0) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes) -> rpc.RequestOp:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


# -- requests encoded by hand ----------------------------------------------------------------
#
# A registration batch carries a nested transaction per AOR. Built as generated messages,
# that is seven protobuf objects per AOR, then serialized: 7 us of the registrar's time
# per AOR, where writing the same bytes directly takes 2 us. The encoding is protobuf's
# (field numbers from etcd's rpc.proto); tests/unit/test_etcd_encoding.py checks it
# against the generated classes.


def _claim_compares(claim: bytes, claimant: bytes) -> tuple[rpc.Compare, rpc.Compare]:
    """The claim holds `claimant`; the claim does not exist."""
    return (
        rpc.Compare(key=claim, value=claimant, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL),
        rpc.Compare(key=claim, create_revision=0, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL),
    )


def compare_and_swap(key: bytes, revision: int, value: bytes, lease: int = 0) -> bytes:
    """A RequestOp: put `value` (b"": delete) under `key` if its mod revision is still `revision`; else read it.

    The nested transaction answers with `succeeded`, and on failure the key's current value.
    Each length-delimited field is its tag, its body's length as a varint, its body; the
    lengths are looked up (_LENGTHS) rather than computed, which halves the cost.
    """
    n = len(key)
    keyed = (_LENGTHS[n] if n < _TABULATED else _varint(n)) + key  # a key field's length and bytes
    # Compare{target (2): MOD, key (3), mod_revision (6)}; result EQUAL is the default, so absent.
    compare = b"".join((b"\x10\x02\x1a", keyed, b"\x30", _varint(revision)))
    n = len(keyed) + 1
    key_only = b"".join((_LENGTHS[n] if n < _TABULATED else _varint(n), b"\x0a", keyed))  # {key (1)}, length first
    if value:
        n = len(value)
        # PutRequest{key (1), value (2), lease (3)}
        put = b"".join((b"\x0a", keyed, b"\x12", _LENGTHS[n] if n < _TABULATED else _varint(n), value,
                        _lease_field(lease) if lease else b""))
        n = len(put)
        write = b"".join((b"\x12", _LENGTHS[n] if n < _TABULATED else _varint(n), put))  # RequestOp.request_put (2)
    else:
        write = b"\x1a" + key_only  # RequestOp.request_delete_range (3): DeleteRangeRequest{key}
    # TxnRequest{compare (1), success (2): [write], failure (3): [RequestOp.request_range (1): RangeRequest{key}]}
    n1, n2, n3 = len(compare), len(write), len(key_only) + 1
    txn = b"".join((
        b"\x0a", _LENGTHS[n1] if n1 < _TABULATED else _varint(n1), compare,
        b"\x12", _LENGTHS[n2] if n2 < _TABULATED else _varint(n2), write,
        b"\x1a", _LENGTHS[n3] if n3 < _TABULATED else _varint(n3), b"\x0a", key_only,
    ))
    n = len(txn)
    return b"".join((b"\x22", _LENGTHS[n] if n < _TABULATED else _varint(n), txn))  # RequestOp.request_txn (4)


def _serializable_range(key: bytes) -> bytes:
    """A RequestOp: request_range (1): RangeRequest{key (1), serializable (7): true}."""
    n = len(key)
    return _field(b"\x0a", b"".join((b"\x0a", _LENGTHS[n] if n < _TABULATED else _varint(n), key, b"\x38\x01")))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _fail(answers: Iterable[list[asyncio.Future[Read]]], error: BaseException) -> None:
    """Fail every asker's answer still waiting with `error`, marked as seen: an asker that gave up never reads it."""
    for each in answers:
        for answer in each:
            if not answer.done():
                answer.set_exception(error)
                answer.exception()


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: its tag, the body's length, the body."""
    n = len(body)
    return b"".join((tag, _LENGTHS[n] if n < _TABULATED else _varint(n), body))


_TABULATED = 4096  # a bindings record of a handful of Contacts is well within this
_LENGTHS = [_varint(n) for n in range(_TABULATED)]


@functools.lru_cache(maxsize=256)
def _lease_field(lease: int) -> bytes:
    # Leases are few (one per expiry slot) and their ids long: encode each once.
    return b"\x18" + _varint(lease)


def _describe(error: BaseException) -> str:
    if isinstance(error, rpc.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__


async def _close_quietly(client: aetcd.Client) -> None:
    try:
        await client.close()
    except Exception:  # a half-open channel may fail to close; it is being dropped anyway
        log.debug("sipreg: closing an etcd channel failed", exc_info=True)
