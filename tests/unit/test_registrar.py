"""Unit tests for registrar.registrar: RFC 3261 section 10.3 step by step, over a MemoryStore.

Requests are real SIP text parsed with `parse_message`; digest answers are
computed here with hashlib (RFC 2617/7616), independently of the digest module;
one fake clock drives the registrar, the store and the nonce authority.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import ipaddress
import itertools
import re
from collections.abc import Sequence

import pytest

from registrar.authentication import FAILURE_RECORD_INTERVAL, Authenticator
from registrar.lockout import LockoutTable
from registrar.model import Binding, Catalog, Connection, ConnectionCache, Domain, RegistrationPolicy
from registrar.registrar import Registrar
from registrar.service import RETRY_AFTER_SECONDS
from registrar.sip.source import Source
from registrar.sip import digest
from registrar.sip.headers import parse_name_addr
from registrar.sip.message import Request, Response, parse_message
from registrar.store import RegistrationFailure, StoreUnavailable
from registrar.store.memory import MemoryStore
from tests.helpers import FakeClock, authorization

DOMAIN = "sip.example.test"
NOREG = "noreg.example.test"
SECRET = b"0123456789abcdef0123456789abcdef"
NONCE_LIFETIME = 300.0
START = 1_700_000_000.0

PASSWORDS = {
    "alice": "alice-secret",
    "bob": "bob-secret",
    "carol": "carol-secret",
    "dave": "dave-secret",
}

# The UA's address when it is not behind NAT: its Contacts name this host:port.
HOME = Source("udp", "192.0.2.10", 5060)
NATTED = Source("udp", "203.0.113.5", 40123)
PBX_SOURCE = Source("udp", "198.51.100.7", 5060)


# -- fixtures and helpers ------------------------------------------------------------------


class CountingStore(MemoryStore):
    """A MemoryStore that counts `update` calls (the challenge leg must make none)."""

    def __init__(self, clock) -> None:
        super().__init__(clock=clock)
        self.updates = 0

    async def update(self, aor, change):
        self.updates += 1
        return await super().update(aor, change)


class UnavailableStore(CountingStore):
    """A store that cannot make anything durable, like etcd without quorum."""

    async def update(self, aor, change):
        self.updates += 1
        raise StoreUnavailable("no quorum")


def _credentials_connection(username: str, **kwargs) -> Connection:
    return Connection(
        domain=DOMAIN,
        username=username,
        authentication="credentials",
        ha1={"MD5": digest.ha1("MD5", username, DOMAIN, PASSWORDS[username])},
        name=username,
        **kwargs,
    )


def make_catalog() -> Catalog:
    connections = [
        _credentials_connection("alice", max_contacts=3),
        _credentials_connection("bob"),
        # Credentials plus an address allow-list as an extra check.
        _credentials_connection("carol", allowed_networks=(ipaddress.ip_network("192.0.2.0/24"),)),
        _credentials_connection("dave", inbound=False),
        Connection(
            domain=DOMAIN,
            username="pbx",
            authentication="ip",
            allowed_networks=(ipaddress.ip_network("198.51.100.0/24"),),
            name="pbx",
        ),
    ]
    return Catalog(
        domains={
            DOMAIN: Domain(
                DOMAIN,
                RegistrationPolicy(enabled=True, min_expires=60, default_expires=600, max_expires=3600),
            ),
            NOREG: Domain(NOREG, RegistrationPolicy(enabled=False)),
        },
        connections={(c.domain, c.username): c for c in connections},
    )


class Env:
    def __init__(self, store_class=CountingStore, catalog: Catalog | None = None, read_connection=None) -> None:
        self.clock = FakeClock(START)
        self.store = store_class(self.clock)
        self.nonces = digest.NonceAuthority(SECRET, lifetime=NONCE_LIFETIME, clock=self.clock)
        self.results: list[tuple[str, int]] = []
        self.auth_failures: list[tuple[str, str]] = []
        self.lockouts: list[tuple[str, str]] = []
        self.refusals: list[tuple[str, str]] = []
        self.bound: list[tuple[Source, list[str]]] = []
        self.authenticator = Authenticator(
            digest.DigestAuthenticator(self.nonces, digest.NonceCounts()),
            LockoutTable(),
            self.store,
            clock=self.clock,
            on_failure=lambda domain, reason: self.auth_failures.append((domain, reason)),
            on_lockout=lambda domain, scope: self.lockouts.append((domain, scope)),
            on_refusal=lambda domain, scope: self.refusals.append((domain, scope)),
        )
        self.registrar = Registrar(
            catalog or make_catalog(),
            self.store,
            self.authenticator,
            node="node-1",
            clock=self.clock,
            on_result=lambda domain, status: self.results.append((domain, status)),
            on_bound=lambda source, domain, bindings: self.bound.append((source, [b.contact for b in bindings])),
            read_connection=read_connection,
        )

    async def bindings(self, user: str = "alice") -> list[Binding]:
        return await self.store.lookup(f"{user}@{DOMAIN}")

    def phone(self, user: str = "alice", **kwargs) -> Phone:
        return Phone(self, user, **kwargs)


@pytest.fixture
def env() -> Env:
    return Env()


_branches = itertools.count(1)


def build_register(
    *,
    user: str = "alice",
    domain: str = DOMAIN,
    request_uri: str | None = None,
    to: str | None = None,
    call_id: str = "call-1@ua",
    cseq: int = 1,
    contacts: Sequence[str] = (),
    expires: int | str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Request:
    """A REGISTER as a UA sends it, parsed from SIP text."""
    lines = [
        f"REGISTER {request_uri or f'sip:{domain}'} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK-{next(_branches)}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{domain}>;tag=from-{user}",
        f"To: {to if to is not None else f'<sip:{user}@{domain}>'}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "User-Agent: test-phone/1.0",
    ]
    lines += [f"Contact: {contact}" for contact in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Content-Length: 0")
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


async def answer(registrar: Registrar, request: Request, source: Source) -> Response:
    result = registrar.register(request, source)
    if inspect.isawaitable(result):
        result = await result
    assert isinstance(result, Response)
    return result


def challenge_params(value: str) -> dict[str, str]:
    assert value.startswith("Digest ")
    return {
        name.lower(): (quoted if quoted or raw == "" else raw)
        for name, quoted, raw in re.findall(r'([\w-]+)=(?:"([^"]*)"|([^,\s]*))', value[len("Digest ") :])
    }


def nonce_of(response: Response) -> str:
    return challenge_params(response.get("WWW-Authenticate") or "")["nonce"]


class Phone:
    """A UA: one Call-ID, increasing CSeq, the 401 -> Authorization dance, nonce reuse with nc+1."""

    _ids = itertools.count(1)

    def __init__(
        self,
        env: Env,
        user: str = "alice",
        *,
        password: str | None = None,
        auth_user: str | None = None,
        source: Source = HOME,
        call_id: str | None = None,
    ) -> None:
        self.env = env
        self.user = user
        self.auth_user = auth_user or user
        self.password = password if password is not None else PASSWORDS.get(self.auth_user, "nope")
        self.source = source
        self.call_id = call_id or f"{user}-{next(self._ids)}@192.0.2.10"
        self.cseq = 0
        self.nonce: str | None = None
        self.nc = 0

    def request(self, contacts: Sequence[str] = (), *, cseq: int | None = None, **kwargs) -> Request:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        return build_register(user=self.user, call_id=self.call_id, cseq=cseq, contacts=contacts, **kwargs)

    async def send(self, request: Request, source: Source | None = None) -> Response:
        return await answer(self.env.registrar, request, source or self.source)

    async def challenge(self, contacts: Sequence[str] = (), *, source: Source | None = None, **kwargs) -> Response:
        response = await self.send(self.request(contacts, **kwargs), source)
        assert response.status == 401, (response.status, response.reason)
        self.nonce = nonce_of(response)
        self.nc = 0
        return response

    def authorization(self, *, password: str | None = None, nc: int | None = None) -> str:
        assert self.nonce is not None
        self.nc = self.nc + 1 if nc is None else nc
        return authorization(
            self.auth_user, self.password if password is None else password, self.nonce, self.nc
        )

    async def register(
        self,
        contacts: Sequence[str] = (),
        *,
        expires: int | str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        source: Source | None = None,
        password: str | None = None,
        cseq: int | None = None,
        nc: int | None = None,
        reuse_nonce: bool = False,
    ) -> Response:
        """Challenge (unless reusing the last nonce), then answer it with credentials."""
        if self.nonce is None or not reuse_nonce:
            await self.challenge(contacts, expires=expires, headers=headers, source=source)
        auth = self.authorization(password=password, nc=nc)
        request = self.request(
            contacts, expires=expires, headers=[*headers, ("Authorization", auth)], cseq=cseq
        )
        return await self.send(request, source)


def contact(user: str = "alice", host: str = "192.0.2.10", port: int | None = 5060, params: str = "") -> str:
    hostport = host if port is None else f"{host}:{port}"
    return f"<sip:{user}@{hostport}>{params}"


def response_contacts(response: Response) -> dict[str, dict[str, str | None]]:
    """Contact URI -> params of a 200 OK."""
    found = {}
    for value in response.get_all("Contact"):
        name_addr = parse_name_addr(value)
        found[name_addr.uri_text] = name_addr.params
    return found


async def settle() -> None:
    """Let fire-and-forget tasks run."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- step 1: the domain -----------------------------------------------------------------------


async def test_unserved_domain_gets_404(env):
    request = build_register(domain="other.example.test", contacts=[contact()])
    response = await answer(env.registrar, request, HOME)
    assert (response.status, response.reason) == (404, "Domain Not Served")
    assert env.results == [("other", 404)]
    assert env.store.updates == 0


async def test_registration_disabled_gets_405_with_allow_lacking_register(env):
    request = build_register(domain=NOREG, contacts=[contact()])
    response = await answer(env.registrar, request, HOME)
    assert response.status == 405
    allowed = [method.strip() for method in response.get_all("Allow")]
    assert allowed, "405 must carry Allow"
    assert "REGISTER" not in allowed
    assert "INVITE" in allowed
    assert env.store.updates == 0


async def test_responses_copy_transaction_headers_and_add_to_tag(env):
    request = build_register(contacts=[contact()])
    response = await answer(env.registrar, request, HOME)
    assert response.get("Via") == request.get("Via")
    assert response.get("Call-ID") == request.get("Call-ID")
    assert response.get("CSeq") == request.get("CSeq")
    assert response.get("From") == request.get("From")
    assert re.search(r";tag=\w+$", response.get("To") or "")
    assert response.get("Server") == "sipreg"


# -- step 2: extensions -------------------------------------------------------------------------


async def test_require_with_unknown_option_gets_420_with_unsupported(env):
    request = build_register(contacts=[contact()], headers=[("Require", "foo, 100rel")])
    response = await answer(env.registrar, request, HOME)
    assert response.status == 420
    assert response.get_all("Unsupported") == ["foo", "100rel"]
    assert env.store.updates == 0


async def test_unsupported_names_a_few_option_tags_back_each_cut_short(env):
    options = ["x" * 5000, *[f"opt{i}" for i in range(20)]]
    request = build_register(contacts=[contact()], headers=[("Require", ", ".join(options))])
    response = await answer(env.registrar, request, HOME)
    assert response.status == 420
    assert response.get_all("Unsupported") == ["x" * 64, *[f"opt{i}" for i in range(7)]]


async def test_a_require_that_is_no_option_tag_is_400(env):
    request = build_register(contacts=[contact()], headers=[("Require", 'foo, "quoted"')])
    response = await answer(env.registrar, request, HOME)
    assert (response.status, response.reason) == (400, "Bad Require: not an option tag: '\"quoted\"'")


# -- the To header ---------------------------------------------------------------------------


async def test_to_domain_not_matching_request_uri_gets_403(env):
    request = build_register(to="<sip:alice@elsewhere.example.test>", contacts=[contact()])
    response = await answer(env.registrar, request, HOME)
    assert (response.status, response.reason) == (403, "To Domain Does Not Match Request-URI")
    assert env.store.updates == 0


async def test_to_without_user_gets_400(env):
    request = build_register(to=f"<sip:{DOMAIN}>", contacts=[contact()])
    response = await answer(env.registrar, request, HOME)
    assert response.status == 400
    assert "To" in response.reason
    assert env.store.updates == 0


# -- steps 3-4: authentication and authorisation ---------------------------------------------


async def test_no_credentials_gets_a_digest_challenge_at_once_and_stores_nothing(env):
    request = build_register(contacts=[contact()])
    result = env.registrar.register(request, HOME)
    # The challenge leg is answered synchronously, without the store.
    assert isinstance(result, Response)
    assert (result.status, result.reason) == (401, "Unauthorized")
    challenges = result.get_all("WWW-Authenticate")
    assert len(challenges) == 1
    params = challenge_params(challenges[0])
    assert params["realm"] == DOMAIN
    assert params["algorithm"] == "MD5"
    assert params["qop"] == "auth"
    assert 'qop="auth"' in challenges[0]
    assert env.nonces.check(params["nonce"], DOMAIN) is digest.NonceStatus.VALID
    assert "stale" not in params
    assert env.store.updates == 0
    assert await env.bindings() == []
    assert env.results == [(DOMAIN, 401)]
    assert env.auth_failures == []


async def test_correct_credentials_get_200_listing_every_current_contact(env):
    phone = env.phone()
    first = await phone.register([contact(params=";expires=120")])
    assert (first.status, first.reason) == (200, "OK")
    assert response_contacts(first) == {"sip:alice@192.0.2.10:5060": {"expires": "120"}}
    assert first.get("Date") == "Tue, 14 Nov 2023 22:13:20 GMT"  # the registrar's clock
    assert env.store.updates == 1

    env.clock.advance(20)
    second = await phone.register([contact(port=5070)])
    assert second.status == 200
    # Every current binding, with the seconds each has left.
    assert response_contacts(second) == {
        "sip:alice@192.0.2.10:5060": {"expires": "100"},
        # Sent from port 5060: to the registrar the 5070 Contact is behind NAT.
        "sip:alice@192.0.2.10:5070": {"expires": "600", "received": "sip:192.0.2.10:5060"},
    }
    stored = {b.contact: b for b in await env.bindings()}
    assert set(stored) == {"sip:alice@192.0.2.10:5060", "sip:alice@192.0.2.10:5070"}
    new = stored["sip:alice@192.0.2.10:5070"]
    assert new.aor == f"alice@{DOMAIN}"
    assert new.expires_at == env.clock.now + 600
    assert new.call_id == phone.call_id
    assert new.cseq == phone.cseq
    assert new.transport == "udp"
    assert new.source == "udp:192.0.2.10:5060"
    assert new.node == "node-1"
    assert new.user_agent == "test-phone/1.0"
    assert new.registered_at == env.clock.now
    assert env.results[-1] == (DOMAIN, 200)
    assert env.auth_failures == []


async def test_wrong_password_gets_a_fresh_challenge_and_stores_nothing(env):
    phone = env.phone()
    first = await phone.challenge([contact()])
    response = await phone.register([contact()], password="wrong", reuse_nonce=True)
    assert (response.status, response.reason) == (401, "Unauthorized")
    fresh = nonce_of(response)
    assert fresh != nonce_of(first)
    assert env.nonces.check(fresh, DOMAIN) is digest.NonceStatus.VALID
    assert "stale" not in challenge_params(response.get("WWW-Authenticate") or "")
    assert env.store.updates == 0
    assert await env.bindings() == []
    assert env.auth_failures == [(DOMAIN, "wrong password")]


def _shape(response: Response) -> tuple:
    """What a response reveals, apart from the transaction's own values and the nonce."""
    challenges = [
        re.sub(r'nonce="[^"]*"', 'nonce="N"', value) for value in response.get_all("WWW-Authenticate")
    ]
    return (response.status, response.reason, [name for name, _ in response.headers], challenges)


async def test_unknown_user_is_indistinguishable_from_wrong_password(env):
    wrong = await env.phone("alice").register([contact()], password="wrong")
    unknown = await env.phone("mallory", password="whatever").register([contact("mallory")])
    assert wrong.status == unknown.status == 401
    assert _shape(wrong) == _shape(unknown)
    assert env.store.updates == 0
    assert env.auth_failures == [(DOMAIN, "wrong password"), (DOMAIN, "unknown user")]


async def test_stale_nonce_gets_401_with_stale_true_and_then_registers(env):
    phone = env.phone()
    await phone.challenge([contact()])
    env.clock.advance(NONCE_LIFETIME + 1)
    response = await phone.register([contact()], reuse_nonce=True)
    assert (response.status, response.reason) == (401, "Unauthorized")
    params = challenge_params(response.get("WWW-Authenticate") or "")
    assert params["stale"] == "true"
    assert env.store.updates == 0
    # A stale nonce with the right password is not an authentication failure.
    assert env.auth_failures == []
    # The UA answers the new nonce at once.
    phone.nonce, phone.nc = params["nonce"], 0
    retry = await phone.register([contact()], reuse_nonce=True)
    assert retry.status == 200
    assert len(await env.bindings()) == 1


async def test_stale_nonce_with_wrong_password_is_not_stale(env):
    phone = env.phone()
    await phone.challenge([contact()])
    env.clock.advance(NONCE_LIFETIME + 1)
    response = await phone.register([contact()], password="wrong", reuse_nonce=True)
    assert response.status == 401
    assert "stale" not in challenge_params(response.get("WWW-Authenticate") or "")
    assert env.auth_failures == [(DOMAIN, "wrong password")]


async def test_nonce_reuse_needs_an_increasing_nonce_count(env):
    phone = env.phone()
    assert (await phone.register([contact()])).status == 200
    before = await env.bindings()

    replay = await phone.register([contact()], reuse_nonce=True, nc=1)
    assert (replay.status, replay.reason) == (401, "Unauthorized")
    assert env.auth_failures == [(DOMAIN, "replayed nonce count")]
    assert await env.bindings() == before
    assert env.store.updates == 1

    env.clock.advance(10)
    refresh = await phone.register([contact()], reuse_nonce=True, nc=2)
    assert refresh.status == 200
    (binding,) = await env.bindings()
    assert binding.expires_at == env.clock.now + 600


async def test_authenticated_user_other_than_to_user_gets_403(env):
    phone = env.phone("alice", auth_user="bob")
    response = await phone.register([contact()])
    assert (response.status, response.reason) == (403, "Authenticated User Does Not Match To")
    assert env.store.updates == 0
    assert await env.bindings("alice") == [] and await env.bindings("bob") == []
    assert env.auth_failures == [(DOMAIN, "authenticated user does not match To")]


async def test_credentials_with_allowed_addresses_refuse_other_sources(env):
    outside = Source("udp", "203.0.113.9", 5060)
    response = await env.phone("carol", source=outside).register([contact("carol", "203.0.113.9")])
    assert (response.status, response.reason) == (403, "Source Address Not Allowed")
    assert await env.bindings("carol") == []
    assert env.auth_failures == [(DOMAIN, "source address not allowed")]

    inside = await env.phone("carol").register([contact("carol")])
    assert inside.status == 200
    assert len(await env.bindings("carol")) == 1


async def test_connection_with_inbound_disabled_gets_403(env):
    response = await env.phone("dave").register([contact("dave")])
    assert response.status == 403
    assert "Inbound" in response.reason
    assert env.store.updates == 0
    assert await env.bindings("dave") == []


async def test_credentials_for_another_realm_are_ignored_and_challenged(env):
    phone = env.phone()
    await phone.challenge([contact()])
    foreign = authorization("alice", PASSWORDS["alice"], phone.nonce, 1, realm="other.example.test")
    response = await phone.send(phone.request([contact()], headers=[("Authorization", foreign)]))
    assert response.status == 401
    assert env.auth_failures == []
    assert env.store.updates == 0


@pytest.mark.parametrize("scheme", ["NoOneKnowsThisScheme opaque-data=here", "Basic YWxpY2U6cHc="])
async def test_credentials_of_another_scheme_are_passed_over_and_challenged(env, scheme):
    # RFC 4475 regaut01: a registrar that cares about authentication issues a challenge it understands.
    response = await answer(env.registrar, build_register(contacts=[contact()], headers=[("Authorization", scheme)]), HOME)
    assert response.status == 401
    assert response.get("WWW-Authenticate").startswith("Digest ")
    assert env.auth_failures == []


async def test_malformed_authorization_gets_400(env):
    request = build_register(contacts=[contact()], headers=[("Authorization", 'Digest username="alice", realm=')])
    response = await answer(env.registrar, request, HOME)
    assert response.status == 400
    assert response.reason.startswith("Bad Authorization")


async def test_sha256_domain_offers_each_algorithm_and_accepts_sha256():
    sha_domain = "sha.example.test"
    password = "erin-secret"
    erin = Connection(
        domain=sha_domain,
        username="erin",
        ha1={algorithm: digest.ha1(algorithm, "erin", sha_domain, password) for algorithm in ("SHA-256", "MD5")},
    )
    env = Env()
    env.registrar.catalog = Catalog(
        domains={sha_domain: Domain(sha_domain, digest_algorithms=("SHA-256", "MD5"))},
        connections={(sha_domain, "erin"): erin},
    )
    first = build_register(user="erin", domain=sha_domain, contacts=["<sip:erin@192.0.2.10:5060>"])
    challenge = await answer(env.registrar, first, HOME)
    assert challenge.status == 401
    offered = [challenge_params(value) for value in challenge.get_all("WWW-Authenticate")]
    assert [params["algorithm"] for params in offered] == ["SHA-256", "MD5"]
    assert offered[0]["nonce"] == offered[1]["nonce"]

    sha = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    nonce, uri, cnonce = offered[0]["nonce"], f"sip:{sha_domain}", "c0ffee"
    ha1 = sha(f"erin:{sha_domain}:{password}")
    response = sha(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{sha('REGISTER:' + uri)}")
    value = (
        f'Digest username="erin", realm="{sha_domain}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=SHA-256, cnonce="{cnonce}", qop=auth, nc=00000001'
    )
    second = build_register(
        user="erin", domain=sha_domain, cseq=2, contacts=["<sip:erin@192.0.2.10:5060>"],
        headers=[("Authorization", value)],
    )
    ok = await answer(env.registrar, second, HOME)
    assert ok.status == 200
    assert [b.contact for b in await env.store.lookup(f"erin@{sha_domain}")] == ["sip:erin@192.0.2.10:5060"]


# -- IP authentication ------------------------------------------------------------------------


async def test_ip_authenticated_connection_registers_without_challenge(env):
    request = build_register(user="pbx", contacts=[contact("pbx", "198.51.100.7")])
    response = await answer(env.registrar, request, PBX_SOURCE)
    assert (response.status, response.reason) == (200, "OK")
    assert not response.has("WWW-Authenticate")
    (binding,) = await env.bindings("pbx")
    assert binding.contact == "sip:pbx@198.51.100.7:5060"
    assert binding.source == "udp:198.51.100.7:5060"


async def test_ip_authenticated_connection_from_elsewhere_is_challenged_like_any_name(env):
    elsewhere = Source("udp", "203.0.113.9", 5060)
    pbx = await answer(env.registrar, build_register(user="pbx", contacts=[contact("pbx", "203.0.113.9")]), elsewhere)
    nobody = await answer(
        env.registrar, build_register(user="nobody", contacts=[contact("nobody", "203.0.113.9")]), elsewhere
    )
    assert pbx.status == nobody.status == 401
    assert _shape(pbx) == _shape(nobody)
    # The status still says why, where only the operator sees it.
    assert env.auth_failures == [(DOMAIN, "source address not allowed")]
    await settle()
    failure = await env.store.last_failure(DOMAIN, "pbx")
    assert failure is not None and failure.reason == "source address not allowed"
    # Answering the challenge cannot succeed: the connection has no HA1.
    response = await env.phone("pbx", password="anything", source=elsewhere).register([contact("pbx", "203.0.113.9")])
    assert response.status == 401
    assert env.auth_failures[-1] == (DOMAIN, "no MD5 credentials")
    assert await env.bindings("pbx") == []
    assert env.store.updates == 0


# -- steps 6-7: expiry ------------------------------------------------------------------------


async def test_contact_expires_param_wins_over_expires_header(env):
    response = await env.phone().register([contact(params=";expires=120")], expires=900)
    assert response.status == 200
    (binding,) = await env.bindings()
    assert binding.expires_at == env.clock.now + 120
    assert response_contacts(response)["sip:alice@192.0.2.10:5060"]["expires"] == "120"


async def test_expires_header_applies_without_contact_param(env):
    response = await env.phone().register([contact()], expires=900)
    assert response.status == 200
    (binding,) = await env.bindings()
    assert binding.expires_at == env.clock.now + 900
    assert response_contacts(response)["sip:alice@192.0.2.10:5060"]["expires"] == "900"


async def test_domain_default_expiry_applies_without_any_expires(env):
    response = await env.phone().register([contact()])
    assert response.status == 200
    (binding,) = await env.bindings()
    assert binding.expires_at == env.clock.now + 600
    assert response_contacts(response)["sip:alice@192.0.2.10:5060"]["expires"] == "600"


@pytest.mark.parametrize(
    ("params", "expires"), [(";expires=30", None), ("", 59), (";expires=1", 3600)]
)
async def test_expiry_below_minimum_gets_423_with_min_expires(env, params, expires):
    response = await env.phone().register([contact(params=params)], expires=expires)
    assert (response.status, response.reason) == (423, "Interval Too Brief")
    assert response.get("Min-Expires") == "60"
    assert await env.bindings() == []
    assert env.store.updates == 0


async def test_expiry_at_the_minimum_is_accepted(env):
    response = await env.phone().register([contact(params=";expires=60")])
    assert response.status == 200
    (binding,) = await env.bindings()
    assert binding.expires_at == env.clock.now + 60


@pytest.mark.parametrize(
    ("draw", "asked", "granted"),
    [(0.0, 600, 600), (0.5, 600, 570), (0.999, 600, 541), (0.999, 3600, 3241), (0.999, 62, 60), (0.999, 60, 60)],
)
async def test_granted_expiries_are_spread_below_the_request_never_below_the_minimum(env, draw, asked, granted):
    env.registrar.expires_spread = 0.1
    env.registrar._random = lambda: draw
    response = await env.phone().register([contact(params=f";expires={asked}")])
    assert response_contacts(response)["sip:alice@192.0.2.10:5060"]["expires"] == str(granted)
    (binding,) = await env.bindings()
    assert binding.expires_at == env.clock.now + granted
    # Removal stays removal.
    response = await env.phone().register([contact(params=";expires=0")])
    assert response.status == 200 and await env.bindings() == []


@pytest.mark.parametrize(("params", "expires"), [(";expires=7200", None), ("", 86400)])
async def test_expiry_above_maximum_is_capped(env, params, expires):
    response = await env.phone().register([contact(params=params)], expires=expires)
    assert response.status == 200
    (binding,) = await env.bindings()
    assert binding.expires_at == env.clock.now + 3600
    assert response_contacts(response)["sip:alice@192.0.2.10:5060"]["expires"] == "3600"


async def test_expires_zero_removes_that_contact_only(env):
    phone = env.phone()
    await phone.register([contact(port=5060), contact(port=5070)])
    assert len(await env.bindings()) == 2
    response = await phone.register([contact(port=5060, params=";expires=0")])
    assert response.status == 200
    assert response_contacts(response) == {
        "sip:alice@192.0.2.10:5070": {"expires": "600", "received": "sip:192.0.2.10:5060"}
    }
    assert [b.contact for b in await env.bindings()] == ["sip:alice@192.0.2.10:5070"]


async def test_expires_header_zero_removes_the_listed_contacts(env):
    phone = env.phone()
    await phone.register([contact(port=5060), contact(port=5070)])
    response = await phone.register([contact(port=5070)], expires=0)
    assert response.status == 200
    assert [b.contact for b in await env.bindings()] == ["sip:alice@192.0.2.10:5060"]


async def test_wildcard_with_expires_zero_removes_all_bindings(env):
    phone = env.phone()
    await phone.register([contact(port=5060), contact(port=5070)])
    other = env.phone()  # another Call-ID, as from a second device
    await other.register([contact(port=5080)])
    assert len(await env.bindings()) == 3
    response = await phone.register(["*"], expires=0)
    assert (response.status, response.reason) == (200, "OK")
    assert response.get_all("Contact") == []
    assert await env.bindings() == []
    assert env.store.binding_counts() == {}


async def test_wildcard_with_other_contacts_gets_400(env):
    phone = env.phone()
    await phone.register([contact()])
    response = await phone.register(["*", contact(port=5070)], expires=0)
    assert response.status == 400
    assert "Wildcard" in response.reason
    assert [b.contact for b in await env.bindings()] == ["sip:alice@192.0.2.10:5060"]


@pytest.mark.parametrize("expires", [None, 60])
async def test_wildcard_without_expires_zero_gets_400(env, expires):
    phone = env.phone()
    await phone.register([contact()])
    response = await phone.register(["*"], expires=expires)
    assert response.status == 400
    assert "Expires: 0" in response.reason
    assert len(await env.bindings()) == 1


async def test_wildcard_with_same_call_id_and_old_cseq_gets_400(env):
    phone = env.phone()
    await phone.register([contact()])
    registered_cseq = phone.cseq
    response = await phone.register(["*"], expires=0, cseq=registered_cseq)
    assert response.status == 400
    assert len(await env.bindings()) == 1


async def test_query_without_contact_lists_bindings_and_changes_nothing(env):
    phone = env.phone()
    await phone.register([contact(port=5060), contact(port=5070, params=";expires=300")])
    before = await env.bindings()
    env.clock.advance(100)
    query = await env.phone().register([])  # a different Call-ID, no Contact
    assert (query.status, query.reason) == (200, "OK")
    assert response_contacts(query) == {
        "sip:alice@192.0.2.10:5060": {"expires": "500"},
        "sip:alice@192.0.2.10:5070": {"expires": "200", "received": "sip:192.0.2.10:5060"},
    }
    assert await env.bindings() == before


async def test_bad_expires_header_gets_400(env):
    response = await env.phone().register([contact()], expires="soon")
    assert response.status == 400
    assert await env.bindings() == []


# -- step 7: Call-ID and CSeq ordering ---------------------------------------------------------


@pytest.mark.parametrize("offset", [0, -1])
async def test_same_call_id_with_cseq_not_higher_gets_400_and_keeps_the_binding(env, offset):
    phone = env.phone()
    await phone.register([contact()], expires=300)
    (before,) = await env.bindings()
    env.clock.advance(10)
    response = await phone.register([contact()], expires=900, cseq=before.cseq + offset)
    assert response.status == 400
    assert "CSeq" in response.reason
    assert await env.bindings() == [before]
    assert env.results[-1] == (DOMAIN, 400)


async def test_same_call_id_with_higher_cseq_refreshes(env):
    phone = env.phone()
    await phone.register([contact()], expires=300)
    env.clock.advance(10)
    response = await phone.register([contact()], expires=900)
    assert response.status == 200
    (binding,) = await env.bindings()
    assert binding.cseq == phone.cseq
    assert binding.expires_at == env.clock.now + 900


async def test_new_call_id_replaces_the_same_contact(env):
    await env.phone(call_id="before-reboot@ua").register([contact()])
    env.clock.advance(10)
    rebooted = env.phone(call_id="after-reboot@ua")
    rebooted.cseq = 0  # a lower CSeq is fine with another Call-ID
    response = await rebooted.register([contact()])
    assert response.status == 200
    (binding,) = await env.bindings()
    assert binding.call_id == "after-reboot@ua"
    assert binding.cseq == 2
    assert binding.registered_at == env.clock.now


async def test_contact_uri_comparison_ignores_host_case(env):
    await env.phone().register(["<sip:alice@Phone.Example.Test:5060>"])
    await env.phone().register(["<sip:alice@phone.example.test:5060>"])
    assert len(await env.bindings()) == 1


@pytest.mark.parametrize(
    "first, second, bindings",
    [
        (";rinstance=a1", ";rinstance=b2", 2),  # a parameter both carry differs: two UAs on one host
        (";rinstance=a1", ";RINSTANCE=A1", 1),  # parameter names and values compare case-insensitively
        (";rinstance=a1", "", 1),  # one that only one of them carries does not count
        (";ob", "", 1),
        (";transport=tcp", "", 2),  # but user, ttl, method, maddr and transport count even then
        (";maddr=192.0.2.99", "", 2),
        (";user=phone", "", 2),
    ],
)
async def test_contacts_are_one_binding_by_the_uri_comparison_of_rfc_3261(env, first, second, bindings):
    # URI parameters, inside the <>: what the comparison is about.
    await env.phone(call_id="one@ua").register([f"<sip:alice@192.0.2.10:5060{first}>"])
    await env.phone(call_id="two@ua").register([f"<sip:alice@192.0.2.10:5060{second}>"])
    assert len(await env.bindings()) == bindings


# -- q values and RFC 5626 instances -------------------------------------------------------------


async def test_q_values_are_stored_and_echoed(env):
    response = await env.phone().register([contact(port=5060, params=";q=0.5"), contact(port=5070, params=";q=1")])
    assert response.status == 200
    contacts = response_contacts(response)
    assert contacts["sip:alice@192.0.2.10:5060"]["q"] == "0.5"
    assert contacts["sip:alice@192.0.2.10:5070"]["q"] == "1"
    stored = {b.contact: b.q for b in await env.bindings()}
    assert stored == {"sip:alice@192.0.2.10:5060": 0.5, "sip:alice@192.0.2.10:5070": 1.0}


async def test_contact_without_q_has_no_q(env):
    response = await env.phone().register([contact()])
    assert "q" not in response_contacts(response)["sip:alice@192.0.2.10:5060"]
    (binding,) = await env.bindings()
    assert binding.q is None


@pytest.mark.parametrize("q", [";q=1.5", ";q=-0.1", ";q=abc", ";q"])
async def test_bad_q_gets_400(env, q):
    response = await env.phone().register([contact(params=q)])
    assert response.status == 400
    assert "q" in response.reason
    assert await env.bindings() == []
    assert env.store.updates == 0


INSTANCE = "urn:uuid:00000000-0000-1000-8000-000a95a0e128"


async def test_same_instance_with_another_contact_uri_replaces_the_binding(env):
    params = f';+sip.instance="<{INSTANCE}>";reg-id=1'
    await env.phone(call_id="boot-1@ua").register([contact(port=5060, params=params)])
    env.clock.advance(30)
    response = await env.phone(call_id="boot-2@ua").register([contact(port=6000, params=params)])
    assert response.status == 200
    (binding,) = await env.bindings()
    assert binding.contact == "sip:alice@192.0.2.10:6000"
    assert binding.instance == INSTANCE
    assert binding.reg_id == 1
    echoed = response_contacts(response)["sip:alice@192.0.2.10:6000"]
    assert echoed["+sip.instance"] == f"<{INSTANCE}>"
    assert echoed["reg-id"] == "1"


async def test_same_instance_with_another_reg_id_is_another_flow(env):
    await env.phone().register([contact(port=5060, params=f';+sip.instance="<{INSTANCE}>";reg-id=1')])
    await env.phone().register([contact(port=5061, params=f';+sip.instance="<{INSTANCE}>";reg-id=2')])
    assert {b.reg_id for b in await env.bindings()} == {1, 2}


async def test_bad_reg_id_gets_400(env):
    response = await env.phone().register([contact(params=f';+sip.instance="<{INSTANCE}>";reg-id=x')])
    assert response.status == 400
    assert await env.bindings() == []


@pytest.mark.parametrize("value", ["<tel:+15551234567>", "<mailto:alice@example.test>", "<sip:alice@"])
async def test_unusable_contact_gets_400(env, value):
    response = await env.phone().register([value])
    assert response.status == 400
    assert response.reason.startswith("Bad Contact")
    assert await env.bindings() == []


# -- maxContacts -----------------------------------------------------------------------------


async def test_at_max_contacts_a_new_contact_evicts_the_least_recently_refreshed(env):
    phone = env.phone()  # alice: maxContacts 3
    for port in (5001, 5002, 5003):
        assert (await phone.register([contact(port=port)])).status == 200
        env.clock.advance(10)
    # Refreshing 5001 makes 5002 the binding refreshed longest ago.
    assert (await phone.register([contact(port=5001)])).status == 200
    env.clock.advance(10)
    response = await phone.register([contact(port=5004)])
    assert response.status == 200
    expected = {"sip:alice@192.0.2.10:5001", "sip:alice@192.0.2.10:5003", "sip:alice@192.0.2.10:5004"}
    assert set(response_contacts(response)) == expected
    assert {b.contact for b in await env.bindings()} == expected


async def test_one_register_with_more_contacts_than_allowed_gets_403(env):
    phone = env.phone()
    await phone.register([contact(port=5001)])
    response = await phone.register([contact(port=port) for port in (5002, 5003, 5004, 5005)])
    assert (response.status, response.reason) == (403, "Too Many Contacts (max 3)")
    assert [b.contact for b in await env.bindings()] == ["sip:alice@192.0.2.10:5001"]


async def test_expired_bindings_neither_count_nor_show(env):
    phone = env.phone()
    await phone.register([contact(port=port, params=";expires=60") for port in (5001, 5002, 5003)])
    env.clock.advance(61)
    response = await phone.register([contact(port=port) for port in (5004, 5005, 5006)])
    assert response.status == 200
    expected = {f"sip:alice@192.0.2.10:{port}" for port in (5004, 5005, 5006)}
    assert set(response_contacts(response)) == expected
    assert {b.contact for b in await env.bindings()} == expected


@pytest.mark.parametrize(
    "contacts",
    [
        [contact(), contact()],
        [
            contact(port=5060, params=f';+sip.instance="<{INSTANCE}>";reg-id=1'),
            contact(port=5070, params=f';+sip.instance="<{INSTANCE}>";reg-id=1'),
        ],
    ],
    ids=["same-uri", "same-instance-and-reg-id"],
)
async def test_one_binding_per_contact_even_when_a_register_repeats_it(env, contacts):
    phone = env.phone()
    response = await phone.register(contacts)
    # Either refused, or one binding for the one Contact; never two bindings of one UA.
    assert response.status in (200, 400)
    assert len(await env.bindings()) <= 1
    # A later refresh must leave exactly one binding behind, not a stale twin.
    await phone.register(contacts[-1:])
    assert len(await env.bindings()) == 1


async def test_removals_do_not_count_towards_max_contacts(env):
    phone = env.phone()
    await phone.register([contact(port=5001)])
    response = await phone.register(
        [contact(port=5001, params=";expires=0")] + [contact(port=port) for port in (5002, 5003, 5004)]
    )
    assert response.status == 200
    assert {b.contact for b in await env.bindings()} == {
        f"sip:alice@192.0.2.10:{port}" for port in (5002, 5003, 5004)
    }


# -- NAT --------------------------------------------------------------------------------------


async def test_behind_nat_the_binding_keeps_the_source_and_200_shows_received(env):
    phone = env.phone(source=NATTED)
    response = await phone.register([contact(host="192.168.1.20", port=5060)])
    assert response.status == 200
    (value,) = response.get_all("Contact")
    assert value.endswith(';received="sip:203.0.113.5:40123"')
    (binding,) = await env.bindings()
    assert binding.contact == "sip:alice@192.168.1.20:5060"
    assert binding.source == "udp:203.0.113.5:40123"
    assert binding.transport == "udp"


async def test_behind_nat_over_tcp_the_received_uri_names_the_transport_and_flow_is_kept(env):
    source = Source("tcp", "203.0.113.5", 50000, flow="flow-7")
    phone = env.phone(source=source)
    response = await phone.register(["<sip:alice@192.168.1.20:5060;transport=tcp>"])
    assert response.status == 200
    params = response_contacts(response)["sip:alice@192.168.1.20:5060;transport=tcp"]
    assert params["received"] == "sip:203.0.113.5:50000;transport=tcp"
    (binding,) = await env.bindings()
    assert (binding.transport, binding.source, binding.flow) == ("tcp", "tcp:203.0.113.5:50000", "flow-7")
    assert (binding.source_host, binding.source_port) == ("203.0.113.5", 50000)


@pytest.mark.parametrize("port", [5060, None])
async def test_without_nat_there_is_no_received_param(env, port):
    response = await env.phone(source=HOME).register([contact(port=port)])
    assert response.status == 200
    (params,) = response_contacts(response).values()
    assert "received" not in params
    (binding,) = await env.bindings()
    assert binding.source == "udp:192.0.2.10:5060"


# -- store failures ---------------------------------------------------------------------------


async def test_store_unavailable_gets_503_with_retry_after_and_never_200():
    env = Env(store_class=UnavailableStore)
    response = await env.phone().register([contact()])
    assert response.status == 503
    assert response.get("Retry-After") == str(RETRY_AFTER_SECONDS)
    assert not response.has("Contact")
    assert env.store.updates == 1
    assert await env.store.lookup(f"alice@{DOMAIN}") == []
    assert env.results == [(DOMAIN, 401), (DOMAIN, 503)]
    assert all(status != 200 for _, status in env.results)


# -- connections read on demand (a registrar on etcd) ------------------------------------------


class ReadOnDemand:
    """A ConnectionCache that knows make_catalog's ip connection only, and the reads that fill it."""

    def __init__(self, *, unavailable: bool = False) -> None:
        self.everything = make_catalog()
        self.cache = ConnectionCache(100)
        self.cache.held = {key: c for key, c in self.everything.connections.items() if c.authentication == "ip"}
        self.catalog = Catalog(self.everything.domains, self.cache)
        self.reads: list[tuple[str, str]] = []
        self.unavailable = unavailable

    async def read(self, key: tuple[str, str]) -> None:
        self.reads.append(key)
        if self.unavailable:
            raise StoreUnavailable("etcd is away")
        self.cache.reading(key)
        await asyncio.sleep(0)
        self.cache.read(key, len(self.reads), self.everything.connections.get(key))


async def test_a_registrar_reading_connections_on_demand_reads_each_once_and_challenges_without_reading():
    connections = ReadOnDemand()
    env = Env(catalog=connections.catalog, read_connection=connections.read)
    alice = env.phone()
    await alice.challenge([contact()])
    assert connections.reads == []  # the first leg reads nothing: no flood of unknown names reaches etcd
    assert (await alice.register([contact()])).status == 200
    assert (await alice.register([contact()])).status == 200
    assert connections.reads == [(DOMAIN, "alice")]
    # An unknown name with credentials is read once, then known absent: refused as before.
    stranger = env.phone("mallory", password="guess")
    assert (await stranger.register([contact("mallory")])).status == 401
    assert (await stranger.register([contact("mallory")])).status == 401
    assert connections.reads == [(DOMAIN, "alice"), (DOMAIN, "mallory")]
    # A connection by address is held whole: its REGISTER without credentials reads nothing.
    pbx = await answer(env.registrar, build_register(user="pbx", contacts=[contact("pbx", "198.51.100.7")]), PBX_SOURCE)
    assert pbx.status == 200
    assert connections.reads == [(DOMAIN, "alice"), (DOMAIN, "mallory")]


async def test_a_connection_that_cannot_be_read_gets_503_not_a_challenge():
    connections = ReadOnDemand(unavailable=True)
    env = Env(catalog=connections.catalog, read_connection=connections.read)
    response = await env.phone().register([contact()])
    assert (response.status, response.reason) == (503, "Location Service Unavailable")
    assert response.get("Retry-After") == str(RETRY_AFTER_SECONDS)


# -- password guessing: lockouts --------------------------------------------------------------

ATTACKER = Source("udp", "203.0.113.66", 5060)


async def guesses(env: Env, user: str, count: int, source: Source = ATTACKER) -> list[tuple[int, str]]:
    """`count` REGISTERs for `user` answered with wrong passwords, each on a fresh challenge."""
    answers = []
    for n in range(count):
        response = await env.phone(user, password=f"guess-{n}", source=source).register([contact(user)])
        answers.append((response.status, response.reason))
    return answers


async def test_failures_from_one_address_lock_it_out_and_then_the_right_password_fails_too(env):
    assert await guesses(env, "alice", 5) == [(401, "Unauthorized")] * 4 + [(403, "Too Many Failed Authentications")]
    assert env.lockouts == [(DOMAIN, "source")]
    right = await env.phone(source=ATTACKER).register([contact()])
    assert (right.status, right.reason) == (403, "Too Many Failed Authentications")
    assert env.refusals == [(DOMAIN, "source")]
    assert env.auth_failures == [(DOMAIN, "wrong password")] * 5  # the refused one is no failure: never verified
    assert await env.bindings() == []
    # Other addresses are not locked, nor other users from this one.
    assert (await env.phone().register([contact()])).status == 200
    assert (await env.phone("bob", source=ATTACKER).register([contact("bob")])).status == 200
    env.clock.advance(60)
    assert (await env.phone(source=ATTACKER).register([contact(port=5070)])).status == 200


async def test_unknown_usernames_are_locked_out_exactly_like_known_ones(env):
    known = await guesses(env, "alice", 6)
    unknown = await guesses(env, "mallory", 6)
    assert known == unknown == [(401, "Unauthorized")] * 4 + [(403, "Too Many Failed Authentications")] * 2
    assert env.lockouts == [(DOMAIN, "source"), (DOMAIN, "source")]


async def test_a_user_locked_across_addresses_still_registers_from_addresses_that_proved_its_password(env):
    assert (await env.phone().register([contact()])).status == 200  # the phone at HOME proves the password
    for n in range(10):  # a botnet: three guesses from each of ten addresses, below the pair threshold
        answers = await guesses(env, "alice", 3, Source("udp", f"198.51.100.{n}", 5060))
    assert answers[-1] == (403, "Too Many Failed Authentications")
    assert env.lockouts == [(DOMAIN, "user")]
    # The right password from an address that never proved it: refused while the lock lasts.
    elsewhere = await env.phone(source=Source("udp", "198.51.100.200", 5060)).register([contact()])
    assert (elsewhere.status, elsewhere.reason) == (403, "Too Many Failed Authentications")
    assert env.refusals == [(DOMAIN, "user")]
    # The phone keeps registering.
    env.clock.advance(30)
    assert (await env.phone().register([contact()])).status == 200
    env.clock.advance(30)
    assert (await env.phone(source=Source("udp", "198.51.100.200", 5060)).register([contact()])).status == 200


async def test_each_failure_after_a_lock_doubles_it_and_the_status_says_so(env):
    await guesses(env, "alice", 5)
    await settle()
    failure = await env.store.last_failure(DOMAIN, "alice")
    assert failure is not None
    assert failure.reason == "locked out for 60 s after 5 failed authentications from udp:203.0.113.66:5060"
    assert failure.source == "udp:203.0.113.66:5060"

    # Plain failures from elsewhere during the lock do not hide it from the status.
    env.clock.advance(FAILURE_RECORD_INTERVAL + 1)
    await guesses(env, "alice", 1, Source("udp", "198.51.100.1", 5060))
    await settle()
    assert (await env.store.last_failure(DOMAIN, "alice")) == failure

    env.clock.advance(60 - FAILURE_RECORD_INTERVAL - 1)  # the lock has ended: one more guess locks for 120 s
    assert await guesses(env, "alice", 1) == [(403, "Too Many Failed Authentications")]
    await settle()
    failure = await env.store.last_failure(DOMAIN, "alice")
    assert failure.reason == "locked out for 120 s after 6 failed authentications from udp:203.0.113.66:5060"
    env.clock.advance(119)
    assert (await env.phone(source=ATTACKER).register([contact()])).status == 403
    env.clock.advance(1)
    assert (await env.phone(source=ATTACKER).register([contact()])).status == 200


async def test_a_nonce_admits_failures_per_nonce_wrong_responses_then_is_spent(env):
    phone = env.phone()
    await phone.challenge([contact()])
    for _ in range(3):  # failures_per_nonce, by default
        response = await phone.register([contact()], password="wrong", reuse_nonce=True)
        assert response.status == 401
    spent = await phone.register([contact()], reuse_nonce=True)  # the right password, on the spent nonce
    assert (spent.status, spent.reason) == (401, "Unauthorized")
    assert env.auth_failures[-1] == (DOMAIN, "nonce spent")
    assert (await phone.register([contact()])).status == 200  # a fresh challenge's nonce


async def test_refusals_after_the_right_password_are_no_guesses(env):
    # Registering another user's AOR proves the password all the same: no lockout however often.
    for _ in range(6):
        response = await env.phone("alice", auth_user="bob").register([contact()])
        assert (response.status, response.reason) == (403, "Authenticated User Does Not Match To")
    assert env.lockouts == []
    assert (await env.phone("bob").register([contact("bob")])).status == 200


async def test_each_failure_and_lockout_is_one_log_line_and_refusals_none(env, caplog):
    caplog.set_level("WARNING", logger="sipreg.auth")
    await guesses(env, "alice", 5)
    await env.phone(source=ATTACKER).register([contact()])  # refused: no line
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        'sipreg: auth failed user=alice@sip.example.test source=udp:203.0.113.66:5060 reason="wrong password"'
    ] * 5 + [
        "sipreg: auth lockout user=alice@sip.example.test source=udp:203.0.113.66:5060 seconds=60 scope=source "
        "failures=5"
    ]


async def test_usernames_from_the_wire_cannot_forge_log_fields(env, caplog):
    caplog.set_level("WARNING", logger="sipreg.auth")
    nasty = 'x" reason="ok source=udp:6.6.6.6:1 \\ \x7f\u00e9'
    phone = env.phone()
    await phone.challenge([contact()])
    value = authorization("alice", "wrong", phone.nonce, 1).replace('username="alice"', f'username="{_quoted(nasty)}"')
    await phone.send(phone.request([contact()], headers=[("Authorization", value)]))
    [line] = [record.getMessage() for record in caplog.records]
    assert line == (
        "sipreg: auth failed user=x\\x22\\x20reason\\x3d\\x22ok\\x20source\\x3dudp\\x3a6.6.6.6\\x3a1\\x20\\x5c"
        '\\x20\\x7f\\xe9@sip.example.test source=udp:192.0.2.10:5060 reason="unknown user"'
    )
    assert line.count(" source=") == 1 and line.count(" reason=") == 1


def _quoted(text: str) -> str:
    # DEL as a quoted-pair too: a quoted string may not carry it bare (the parser answers 400).
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\x7f", "\\\x7f")


# -- callbacks and failure records --------------------------------------------------------------


async def test_on_result_sees_every_answer_and_on_auth_failure_only_real_failures(env):
    phone = env.phone()
    await phone.challenge([contact()])
    assert env.results == [(DOMAIN, 401)]
    assert env.auth_failures == []
    await phone.register([contact()], password="wrong", reuse_nonce=True)
    assert env.results == [(DOMAIN, 401), (DOMAIN, 401)]
    assert env.auth_failures == [(DOMAIN, "wrong password")]
    await phone.register([contact()])
    assert env.results == [(DOMAIN, 401), (DOMAIN, 401), (DOMAIN, 401), (DOMAIN, 200)]
    assert env.auth_failures == [(DOMAIN, "wrong password")]


async def test_on_bound_is_told_the_bindings_after_each_register_with_contacts(env):
    over_tcp = Source("tcp", "192.0.2.10", 40312, flow="tcp-7")
    await env.phone(source=over_tcp).register([contact(port=5060, params=";expires=120"), contact(port=5070)])
    assert env.bound == [(over_tcp, ["sip:alice@192.0.2.10:5060", "sip:alice@192.0.2.10:5070"])]
    await env.phone(source=over_tcp).register([])  # a fetch binds nothing
    assert len(env.bound) == 1


async def test_wrong_password_records_the_last_failure(env):
    await env.phone().register([contact()], password="wrong")
    await settle()
    failure = await env.store.last_failure(DOMAIN, "alice")
    assert failure is not None
    # It names the request refused, so that its trace can be found.
    assert failure.request.startswith("REGISTER sip:sip.example.test (CSeq 2 REGISTER, Call-ID ")
    assert failure == RegistrationFailure(
        DOMAIN, "alice", env.clock.now, "wrong password", "udp:192.0.2.10:5060", request=failure.request
    )


async def test_failure_records_are_throttled_per_connection(env):
    first_time = env.clock.now
    await env.phone().register([contact()], password="wrong")
    await settle()
    env.clock.advance(FAILURE_RECORD_INTERVAL / 2)
    await env.phone(source=NATTED).register([contact()], password="wrong again")
    # Another connection is not throttled by alice's failures.
    await env.phone("bob").register([contact("bob")], password="wrong")
    await settle()
    failure = await env.store.last_failure(DOMAIN, "alice")
    assert failure is not None and failure.time == first_time
    assert failure.source == "udp:192.0.2.10:5060"
    bob = await env.store.last_failure(DOMAIN, "bob")
    assert bob is not None and bob.time == env.clock.now

    env.clock.advance(FAILURE_RECORD_INTERVAL)
    await env.phone(source=NATTED).register([contact()], password="wrong")
    await settle()
    failure = await env.store.last_failure(DOMAIN, "alice")
    assert failure is not None
    assert (failure.time, failure.source) == (env.clock.now, "udp:203.0.113.5:40123")


async def test_unknown_users_leave_no_failure_record(env):
    await env.phone("mallory", password="x").register([contact("mallory")])
    await settle()
    assert await env.store.last_failure(DOMAIN, "mallory") is None


async def test_source_not_allowed_records_a_failure(env):
    outside = Source("udp", "203.0.113.9", 5060)
    await env.phone("carol", source=outside).register([contact("carol")])
    await settle()
    failure = await env.store.last_failure(DOMAIN, "carol")
    assert failure is not None
    assert (failure.reason, failure.source) == ("source address not allowed", "udp:203.0.113.9:5060")


async def test_failure_recording_errors_do_not_change_the_answer():
    class BrokenFailureStore(CountingStore):
        async def record_failure(self, failure):
            raise StoreUnavailable("down")

    env = Env(store_class=BrokenFailureStore)
    response = await env.phone().register([contact()], password="wrong")
    await settle()
    assert response.status == 401


def test_source_text_brackets_ipv6():
    assert str(Source("tls", "2001:db8::1", 5061)) == "tls:[2001:db8::1]:5061"
    assert str(HOME) == "udp:192.0.2.10:5060"


def test_received_uri_for_ipv6_source_behind_nat():
    binding = Binding(
        aor=f"alice@{DOMAIN}", contact="sip:alice@[2001:db8::5]:5060", expires_at=START + 60,
        call_id="c", cseq=1, source_host="2001:db8::9", source_port=40000,
    )
    assert binding.received_uri() == "sip:[2001:db8::9]:40000"
    assert binding.source == "udp:[2001:db8::9]:40000"
    same = Binding(
        aor=f"alice@{DOMAIN}", contact="sip:alice@[2001:db8::9]:40000", expires_at=START + 60,
        call_id="c", cseq=1, source_host="2001:db8::9", source_port=40000,
    )
    assert same.received_uri() is None


# -- Path (RFC 3327): a registrar behind an edge proxy ------------------------------------------------

EDGE_PATH = ["<sip:edge-1@198.51.100.1:5060;lr>", "<sip:sbc.example.test;transport=tcp;lr>"]


async def test_a_path_is_stored_in_order_and_echoed_to_a_ua_that_supports_it(env):
    phone = Phone(env)
    headers = [("Path", EDGE_PATH[0]), ("Path", EDGE_PATH[1]), ("Supported", "outbound, path")]
    response = await phone.register([contact()], headers=headers)
    assert response.status == 200
    assert response.get_all("Path") == EDGE_PATH
    [binding] = await env.store.lookup(f"alice@{DOMAIN}")
    assert binding.path == tuple(EDGE_PATH)


async def test_a_path_is_kept_but_not_echoed_to_a_ua_that_does_not_say_it_supports_it(env):
    phone = Phone(env)
    response = await phone.register([contact()], headers=[("Path", ", ".join(EDGE_PATH))])
    assert response.status == 200 and response.get_all("Path") == []
    [binding] = await env.store.lookup(f"alice@{DOMAIN}")
    assert binding.path == tuple(EDGE_PATH)  # its calls still go through the edge


@pytest.mark.parametrize("path, reason", [
    ("<sip:edge.example.test>", "Bad Path: not a loose route (no lr parameter)"),
    ("<tel:+15551234567;lr>", "Bad Path: only sip: and sips: URIs route"),
    ("<sip:edge.example.test;lr", "Bad Path: unterminated <URI>"),
    (", ".join(["<sip:edge.example.test;lr>"] * 9), "Bad Path: more than 8 hops"),
])
async def test_a_path_we_could_not_route_by_gets_400_and_stores_nothing(env, path, reason):
    response = await Phone(env).register([contact()], headers=[("Path", path)])
    assert (response.status, response.reason) == (400, reason)
    assert env.store.updates == 0


async def test_require_path_is_supported(env):
    response = await Phone(env).register([contact()], headers=[("Require", "path"), ("Path", EDGE_PATH[0])])
    assert response.status == 200


# -- RFC 5626 outbound: flows a phone keeps alive -------------------------------------------------------

INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"'


@pytest.mark.parametrize("transport, flow_timer", [("udp", "25"), ("tcp", "120")])
async def test_an_outbound_registration_gets_require_outbound_and_a_flow_timer(env, transport, flow_timer):
    source = Source(transport, "192.0.2.10", 40000, None if transport == "udp" else "tcp-1")
    response = await Phone(env, source=source).register(
        [contact(params=f";{INSTANCE};reg-id=1")], headers=[("Supported", "outbound, path")])
    assert response.status == 200
    assert (response.get("Require"), response.get("Flow-Timer")) == ("outbound", flow_timer)
    [binding] = await env.store.lookup(f"alice@{DOMAIN}")
    assert (binding.instance, binding.reg_id) == ("urn:uuid:00000000-0000-1000-8000-000a95a0e128", 1)


@pytest.mark.parametrize("contact_params, supported, path", [
    (f";{INSTANCE};reg-id=1", None, None),  # the UA did not say it supports outbound
    (f";{INSTANCE}", "outbound", None),  # no reg-id: no flow asked for (RFC 5626 6)
    (";reg-id=1", "outbound", None),  # no instance
    (f";{INSTANCE};reg-id=1", "outbound", "<sip:edge.example.test;lr>"),  # an edge that keeps no flows (no ob)
])
async def test_no_require_outbound_unless_a_flow_was_asked_for_and_can_be_kept(env, contact_params, supported, path):
    headers = [("Supported", supported)] if supported else []
    headers += [("Path", path)] if path else []
    response = await Phone(env).register([contact(params=contact_params)], headers=headers)
    assert response.status == 200
    assert response.get("Require") is None and response.get("Flow-Timer") is None


async def test_an_edge_that_keeps_flows_lets_the_registration_be_outbound(env):
    headers = [("Supported", "outbound, path"), ("Path", "<sip:edge.example.test;lr;ob>")]
    response = await Phone(env).register([contact(params=f";{INSTANCE};reg-id=1")], headers=headers)
    assert response.get("Require") == "outbound" and response.get_all("Path") == ["<sip:edge.example.test;lr;ob>"]
