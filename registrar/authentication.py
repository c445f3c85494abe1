"""Digest authentication behind lockouts: the one check the registrar (401) and the proxy (407) make of credentials.

`Authenticator.verify` asks the lockout table (registrar.lockout) before it
verifies a response: a locked username and source get `LOCKED` unverified,
so the right password fails too while the lock lasts. After a failure it
counts it, and for each failure and each lockout it writes one log line,
counts a metric and, for a connection of ours, writes its failure record (the
SipConnection's status: a REGISTER's failures, and every lockout). A request refused because of a lock is neither
logged nor recorded one by one: only counted.

`AuthenticationStep` is the step around it that both the registrar (401,
Authorization, the user in To) and the proxy (407, Proxy-Authorization, the
user in From) take: the address check of `ip` connections, the credentials,
the verdict and what the wire sees of it, the claimed user, the allow-list.

The log lines, for fail2ban and people (README "Password guessing"):

    sipreg: auth failed user=alice@sip.example.test source=udp:192.0.2.7:5060 reason="wrong password"
    sipreg: auth lockout user=alice@sip.example.test source=udp:192.0.2.7:5060 seconds=60 scope=source failures=5

The username is the one sent in the credentials, escaped (every character but
letters, digits and `._~+-` as \\xNN, \\uNNNN or \\UNNNNNNNN) and cut at 64 characters,
so what the wire sends can neither end a line nor forge a field.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from registrar.lockout import Lock, LockoutTable
from registrar.model import Connection, Domain, NotHeld
from registrar.sip import digest
from registrar.sip.message import Request, SipError
from registrar.sip.source import Source
from registrar.store import LocationStore, RegistrationFailure


log = logging.getLogger("sipreg.auth")

# Told of a request that names one of our connections (AuthenticationStep's on_identified).
Identified = Callable[[Request, Source, Connection], None]

# The reason phrase of the 403 a locked-out request gets, from the registrar and the proxy alike.
LOCKED_OUT_REASON = "Too Many Failed Authentications"
# A connection's failures are written to the store at most this often, so a
# flood of bad REGISTERs cannot become a flood of writes.
FAILURE_RECORD_INTERVAL = 5.0
_LOGGED_USERNAME_LENGTH = 64
# What a logged username may show as it is; anything else is escaped, spaces and '=' first.
_UNSAFE_IN_USERNAME = re.compile(r"[^A-Za-z0-9._~+-]")
# What a quoted log field may show as it is: printable ASCII but the quote and the backslash.
_UNSAFE_IN_QUOTES = re.compile(r'[^ -~]|["\\]')


class Verdict(enum.Enum):
    OK = "ok"
    STALE = "stale"  # right password, expired nonce: challenge again with stale=true
    FAILED = "failed"  # challenge again
    LOCKED = "locked"  # refuse: 403 LOCKED_OUT_REASON


class Authenticator:
    """Verifies digest responses for the registrar and the proxy, with lockouts, logs, metrics and failure records.

    `on_failure(domain, reason)` hears of every failed authentication,
    `on_lockout(domain, scope)` of every lock started, `on_refusal(domain,
    scope)` of every request refused for a lock (metrics).
    """

    def __init__(
        self,
        digest_authenticator: digest.DigestAuthenticator,
        lockouts: LockoutTable,
        store: LocationStore,
        *,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[str, str], None] | None = None,
        on_lockout: Callable[[str, str], None] | None = None,
        on_refusal: Callable[[str, str], None] | None = None,
        on_failure_record: Callable[[Connection], None] = lambda connection: None,
        node: str = "",
    ):
        self._digest = digest_authenticator
        # Named in failure records: the replica whose trace holds the failed request.
        self._node = node
        self._lockouts = lockouts
        self._store = store
        self._clock = clock
        self._on_failure = on_failure or (lambda domain, reason: None)
        self._on_lockout = on_lockout or (lambda domain, scope: None)
        self._on_refusal = on_refusal or (lambda domain, scope: None)
        # Told of each connection whose failure record is written (the trace keeps its messages apart).
        self._on_failure_record = on_failure_record
        # (domain, username) -> when its next failure may be written to the store.
        self._next_record: dict[tuple[str, str], float] = {}

    def challenges(self, realm: str, algorithms: Iterable[str], stale: bool = False) -> list[str]:
        """One challenge header value per algorithm, sharing one fresh nonce."""
        return self._digest.challenges(realm, algorithms, stale=stale)

    def verify(
        self,
        method: str,
        credentials: digest.Credentials,
        domain: Domain,
        known: Connection | None,
        source: Source,
        request: Request | None = None,
    ) -> Verdict:
        """The verdict on `credentials` (for `domain`'s realm) of a request from `source`.

        `known` is the connection credentials.username names, None for a name we
        do not have: both are treated alike up to what only logs and records say.
        `request`, the one verified, is named in a failure record.
        """
        now = self._clock()
        username = credentials.username
        lock = self._lockouts.locked(domain.name, username, source.host, now)
        if lock is not None:
            self._on_refusal(domain.name, lock.scope)
            return Verdict.LOCKED
        policy = domain.security.lockout
        outcome = self._digest.verify(
            method,
            credentials,
            domain.name,
            known.ha1 if known is not None else None,
            offered_algorithms=domain.digest_algorithms,
            failures_per_nonce=policy.failures_per_nonce,
        )
        if outcome.status is digest.AuthStatus.OK:
            self._lockouts.proved(domain.name, username, source.host, now)
            return Verdict.OK
        if outcome.status is digest.AuthStatus.STALE:
            return Verdict.STALE

        locks = self._lockouts.failed(domain.name, username, source.host, policy, now)
        user = _log_user(username, domain.name)
        log.warning('sipreg: auth failed user=%s source=%s reason="%s"', user, source, _log_text(outcome.reason))
        self._on_failure(domain.name, outcome.reason)
        for started in locks:
            log.warning(
                "sipreg: auth lockout user=%s source=%s seconds=%d scope=%s failures=%d",
                user, source, started.seconds, started.scope, started.failures,
            )
            self._on_lockout(domain.name, started.scope)
        if known is not None:
            if locks:
                # Kept until the lock ends, lest the next plain failure hide it from the status.
                self._record(known, _lockout_reason(locks[-1], source), source, request, now, locks[-1].until,
                             force=True)
            elif method == "REGISTER":
                # The record is the connection's last failed registration: a failed call is not
                # one; a lockout is, whatever started it, as it refuses registrations too.
                self._record(known, outcome.reason, source, request, now, now + FAILURE_RECORD_INTERVAL)
        if self._lockouts.locked(domain.name, username, source.host, now) is not None:
            return Verdict.LOCKED
        return Verdict.FAILED

    def note_failure(self, connection: Connection, reason: str, source: Source, request: Request | None = None) -> None:
        """A failure other than a digest response's (address not allowed, another user's AOR): metric and record."""
        self._on_failure(connection.domain, reason)
        now = self._clock()
        self._record(connection, reason, source, request, now, now + FAILURE_RECORD_INTERVAL)

    def _record(
        self, connection: Connection, reason: str, source: Source, request: Request | None, now: float,
        keep_until: float, *, force: bool = False,
    ) -> None:
        """Write the connection's failure record, unless one written lately is still to be kept (`force`: anyway)."""
        key = (connection.domain, connection.username)
        if not force and now < self._next_record.get(key, float("-inf")):
            return
        self._next_record[key] = keep_until
        failure = RegistrationFailure(connection.domain, connection.username, now, reason, str(source),
                                      node=self._node, request=_described(request))
        self._on_failure_record(connection)
        # Fire and forget: a failure record must never delay or fail the answer.
        task = asyncio.get_running_loop().create_task(self._store.record_failure(failure))
        task.add_done_callback(_ignore_result)


def _described(request: Request | None) -> str:
    """The failed request as a status names it: enough to find it in `sipreg trace` (its Call-ID and CSeq)."""
    if request is None:
        return ""
    cseq = request.get("CSeq") or ""
    return f"{request.method} {request.uri[:120]} (CSeq {cseq[:40]}, Call-ID {request.call_id[:80]})"


def _lockout_reason(lock: Lock, source: Source) -> str:
    if lock.scope == "source":
        return f"locked out for {lock.seconds} s after {lock.failures} failed authentications from {source}"
    return (
        f"locked out for {lock.seconds} s after {lock.failures} failed authentications from any address "
        f"(last {source}); addresses that proved the password are spared"
    )


def _log_user(username: str, domain: str) -> str:
    """user@domain for a log line, the username escaped and cut (see the module docstring)."""
    shown = _UNSAFE_IN_USERNAME.sub(_escape, username[:_LOGGED_USERNAME_LENGTH])
    return f"{shown}{'...' if len(username) > _LOGGED_USERNAME_LENGTH else ''}@{domain}"


def _log_text(text: str) -> str:
    """`text` for a quoted log field: quotes, backslashes and non-printables escaped."""
    return _UNSAFE_IN_QUOTES.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _ignore_result(task) -> None:  # type: ignore[no-untyped-def]
    if not task.cancelled():
        task.exception()


# -- the authentication step of a request, as a registrar and as a proxy makes it ------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """The digest exchange as a registrar (401) or a proxy (407) makes it (RFC 3261 22.2, 22.3)."""

    status: int
    reason: str
    challenge_header: str  # where the challenge goes
    credentials_header: str  # where the answer comes
    claimed_in: str  # the header naming the user the request claims to be, for the 403 when another proved
    relayed: bool  # the request goes on: the credentials for our realm are taken out, not passed on


REGISTRAR = Exchange(401, "Unauthorized", "WWW-Authenticate", "Authorization", "To", relayed=False)
PROXY = Exchange(
    407, "Proxy Authentication Required", "Proxy-Authenticate", "Proxy-Authorization", "From", relayed=True
)


class _Unread(enum.Enum):
    UNREAD = "unread"


# What `AuthenticationStep.authenticate` is given when the caller has not read the credentials yet.
UNREAD = _Unread.UNREAD


class AuthenticationStep:
    """Who a request proves to be, by digest credentials or by source address: a registrar's or a proxy's step.

    A REGISTER (`REGISTRAR`: 401, the user in To) and a call (`PROXY`: 407, the user
    in From) go through the same checks in the same order; what differs is in the
    `Exchange` and in the method. A failure of a REGISTER is written to the
    connection's status (`Authenticator.note_failure`), a failed call is not: that
    record is the connection's last failed registration. `on_authenticated` hears
    of every source that proved who it is, even if refused after: no stranger.
    `on_identified` hears of every request that names one of our connections,
    whether it proves to be it or not (its trace is that connection's).
    """

    def __init__(
        self, authenticator: Authenticator, exchange: Exchange, on_authenticated: Callable[[Source], None],
        on_identified: Identified = lambda request, source, connection: None,
    ):
        self._authenticator = authenticator
        self._exchange = exchange
        self._on_authenticated = on_authenticated
        self._on_identified = on_identified

    def credentials(self, request: Request, domain: Domain) -> digest.Credentials | None:
        """The credentials for this domain's realm (a UA may carry several, for several realms); 400 when malformed.

        Credentials of a scheme other than Digest are no answer to our challenge: they
        are passed over, as another realm's are, and the request is challenged (RFC 4475
        regaut01: a registrar that cares about authentication answers 401, issuing a
        challenge of a scheme it understands).
        """
        header = self._exchange.credentials_header
        for value in request.get_all(header):
            try:
                credentials = digest.parse_credentials(value)
            except digest.UnsupportedScheme:
                continue
            except digest.DigestError as exc:
                raise SipError(400, f"Bad {header}: {exc}") from None
            if credentials.realm == domain.name:
                return credentials
        return None

    def challenge(self, domain: Domain, *, stale: bool = False) -> SipError:
        """A fresh challenge for the domain's realm: one header per algorithm it offers (RFC 8760 2.4)."""
        exchange = self._exchange
        values = self._authenticator.challenges(domain.name, domain.digest_algorithms, stale=stale)
        return SipError(exchange.status, exchange.reason, [(exchange.challenge_header, value) for value in values])

    def authenticate(
        self,
        request: Request,
        source: Source,
        domain: Domain,
        connections: Mapping[tuple[str, str], Connection],
        claimed_user: str,
        credentials: digest.Credentials | None | _Unread = UNREAD,
    ) -> Connection:
        """The connection `request` proves to be, `claimed_user` of `domain`; raises the challenge or 403 otherwise.

        `credentials` are those the caller read already with `credentials` (the registrar
        reads them first, to challenge at once where no connection authenticates by
        address); left UNREAD, they are read here, after the address check, so an `ip`
        connection's request passes by its address whatever else it carries.
        """
        exchange = self._exchange
        registering = request.method == "REGISTER"
        by_address = _by_address(connections, (domain.name, claimed_user))
        if by_address is not None:
            self._on_identified(request, source, by_address)
            if by_address.allows_address(source.host):
                self._on_authenticated(source)
                return by_address
        if credentials is UNREAD:
            credentials = self.credentials(request, domain)
        if credentials is None:
            if by_address is not None and registering:
                # From elsewhere it is challenged like any name, lest a 403 tell that it exists
                # (with no HA1 it can never pass); its status still says why.
                self._authenticator.note_failure(by_address, "source address not allowed", source, request)
            raise self.challenge(domain)
        known = connections.get((domain.name, credentials.username))
        if known is not None:
            self._on_identified(request, source, known)
        verdict = self._authenticator.verify(request.method, credentials, domain, known, source, request)
        if verdict is Verdict.STALE:
            raise self.challenge(domain, stale=True)
        if verdict is Verdict.LOCKED:
            raise SipError(403, LOCKED_OUT_REASON)
        if verdict is not Verdict.OK or known is None:  # OK is only reached with a real HA1
            raise self.challenge(domain)
        self._on_authenticated(source)  # it knows a password: no stranger, even if refused below
        if credentials.username != claimed_user:
            if registering:
                reason = f"authenticated user does not match {exchange.claimed_in}"
                self._authenticator.note_failure(known, reason, source, request)
            raise SipError(403, f"Authenticated User Does Not Match {exchange.claimed_in}")
        if not known.allows_address(source.host):
            if registering:
                self._authenticator.note_failure(known, "source address not allowed", source, request)
            raise SipError(403, "Source Address Not Allowed")
        if exchange.relayed:
            # Credentials are for us, not for the next hop (RFC 3261 22.3).
            request.remove(exchange.credentials_header)
        return known


def _by_address(connections: Mapping[tuple[str, str], Connection], key: tuple[str, str]) -> Connection | None:
    """The connection `key` if it authenticates by address. A ConnectionCache holds every such one whole,
    so one it has not read is not one: no read for a request without credentials."""
    try:
        connection = connections.get(key)
    except NotHeld:
        return None
    return connection if connection is not None and connection.authentication == "ip" else None
