"""Unit tests for the registrar.sip.digest package: vectors, parsing, nonces, replay, verdicts."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrar.sip import digest
from registrar.sip.digest import (
    AuthStatus,
    Credentials,
    DigestAuthenticator,
    DigestError,
    NonceAuthority,
    NonceCounts,
    NonceCountStatus,
    NonceFailures,
    NonceStatus,
    challenge,
    compute_response,
    ha1,
    parse_credentials,
)
from registrar.sip.digest.algorithms import Algorithm
from registrar.sip.digest.authenticator import _DUMMY_HA1
from registrar.sip.digest.credentials import _parameters, _parameters_carefully
from tests.helpers import FakeClock, pure_python_only

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "sip.example.test"
NOW = 1_000_000.0


# --- Known-answer vectors ----------------------------------------------------


def test_rfc2617_md5_qop_auth_example():
    stored = ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    assert stored == "939e7578ed9e3c518a452acee763bce9"
    response = compute_response(
        "MD5", stored, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "GET", "/dir/index.html",
        qop="auth", nc="00000001", cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_examples(algorithm, expected):
    stored = ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    response = compute_response(
        algorithm, stored, "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "GET", "/dir/index.html",
        qop="auth", nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert response == expected


def test_rfc2617_example_header_parses_and_verifies_against_its_own_response():
    credentials = parse_credentials(
        'Digest username="Mufasa",\r\n realm="testrealm@host.com",\r\n'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n uri="/dir/index.html",\r\n'
        " qop=auth,\r\n nc=00000001,\r\n cnonce=\"0a4f113b\",\r\n"
        ' response="6629fae49393a05397450978507c4ef1",\r\n'
        ' opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert credentials == Credentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        response="6629fae49393a05397450978507c4ef1",
        algorithm="MD5",
        cnonce="0a4f113b",
        qop="auth",
        nc="00000001",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )


def test_rfc2069_response_without_qop():
    # H(HA1:nonce:HA2), computed independently.
    stored = ha1("MD5", "alice", REALM, "secret")
    ha2 = hashlib.md5(b"REGISTER:sip:sip.example.test").hexdigest()
    expected = hashlib.md5(f"{stored}:abc:{ha2}".encode()).hexdigest()
    assert compute_response("MD5", stored, "abc", "REGISTER", "sip:sip.example.test") == expected


def test_sess_variant_rehashes_ha1_with_nonce_and_cnonce():
    stored = ha1("SHA-256", "alice", REALM, "secret")
    session_ha1 = hashlib.sha256(f"{stored}:n:c".encode()).hexdigest()
    assert compute_response(
        "SHA-256-sess", stored, "n", "REGISTER", "sip:x", qop="auth", nc="00000001", cnonce="c"
    ) == compute_response("SHA-256", session_ha1, "n", "REGISTER", "sip:x", qop="auth", nc="00000001", cnonce="c")


def test_ha1_refuses_unsupported_and_session_algorithms():
    with pytest.raises(ValueError):
        ha1("SHA-512-256", "a", "r", "p")
    with pytest.raises(ValueError):
        ha1("MD5-sess", "a", "r", "p")
    assert ha1("sha-256", "a", "r", "p") == ha1("SHA-256", "a", "r", "p")


# --- Challenges ----------------------------------------------------------------


def test_challenge_format():
    assert challenge(REALM, "abc", "MD5") == 'Digest realm="sip.example.test", nonce="abc", algorithm=MD5, qop="auth"'
    assert challenge(REALM, "abc", "sha-256", stale=True, opaque="o") == (
        'Digest realm="sip.example.test", nonce="abc", algorithm=SHA-256, qop="auth", opaque="o", stale=true'
    )


def test_challenge_escapes_quotes_in_realm():
    assert challenge('a"b\\c', "n", "MD5").startswith('Digest realm="a\\"b\\\\c", ')


def test_challenge_refuses_unknown_algorithm():
    with pytest.raises(ValueError):
        challenge(REALM, "n", "SHA-512-256")


# --- Parser --------------------------------------------------------------------

MINIMAL = 'username="alice", realm="r", nonce="n", uri="sip:r", response="' + "a" * 32 + '"'


def test_parser_whitespace_case_escapes_and_unknown_parameters():
    credentials = parse_credentials(
        '  dIGEST   USERNAME =  "al\\"ice\\\\" ,Realm="r",,  , NONCE=n ,uri = sip:r;transport=tcp,'
        ' foo="bar, baz", Response="' + "A" * 64 + '",algorithm="sha-256",QOP="auth",nc=0000000A,'
        "cnonce=xyz, userhash=false , "
    )
    assert credentials.username == 'al"ice\\'
    assert credentials.realm == "r"
    assert credentials.nonce == "n"
    assert credentials.uri == "sip:r;transport=tcp"
    assert credentials.response == "A" * 64
    assert credentials.algorithm == "SHA-256"
    assert credentials.qop == "auth"
    assert credentials.nc == "0000000A"  # kept as sent: it is hashed as sent
    assert credentials.cnonce == "xyz"
    assert credentials.opaque is None


def test_parser_defaults_to_md5_without_qop():
    credentials = parse_credentials("Digest " + MINIMAL)
    assert credentials.algorithm == "MD5"
    assert (credentials.qop, credentials.nc, credentials.cnonce) == (None, None, None)


def test_parser_ignores_username_star_when_username_present():
    credentials = parse_credentials("Digest " + MINIMAL + ", username*=UTF-8''%C3%A4")
    assert credentials.username == "alice"


def test_parser_accepts_empty_quoted_values_and_tabs():
    credentials = parse_credentials('Digest\tusername="a",realm=""\t,nonce="",uri="",response="' + "0" * 32 + '"')
    assert (credentials.realm, credentials.nonce, credentials.uri) == ("", "", "")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "empty credentials"),
        ("   ", "empty credentials"),
        ("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "unsupported scheme Basic"),
        ('"Digest" username="a"', "malformed credentials scheme"),
        ("Digest", "missing username"),
        ('Digest realm="r", nonce="n", uri="u", response="' + "a" * 32 + '"', "missing username"),
        ("Digest username*=UTF-8''x, realm=r, nonce=n, uri=u, response=" + "a" * 32, "username* is not supported"),
        ('Digest username="", realm="r", nonce="n", uri="u", response="' + "a" * 32 + '"', "empty username"),
        ('Digest username="a", nonce="n", uri="u", response="' + "a" * 32 + '"', "missing realm"),
        ('Digest username="a", realm="r", uri="u", response="' + "a" * 32 + '"', "missing nonce"),
        ('Digest username="a", realm="r", nonce="n", response="' + "a" * 32 + '"', "missing uri"),
        ('Digest username="a", realm="r", nonce="n", uri="u"', "missing response"),
        ("Digest " + MINIMAL + ", algorithm=SHA-512-256", "unsupported algorithm SHA-512-256"),
        ("Digest " + MINIMAL + ', algorithm="x\r\ny"', "unsupported algorithm"),
        ("Digest " + MINIMAL + ", algorithm=SHA-256", "response is not 64 hex digits"),
        ('Digest username="a", realm="r", nonce="n", uri="u", response="' + "g" * 32 + '"',
         "response is not 32 hex digits"),
        ("Digest " + MINIMAL + ", qop=auth-int, nc=00000001, cnonce=c", "unsupported qop auth-int"),
        ("Digest " + MINIMAL + ", qop=auth, nc=00000001", "missing cnonce"),
        ("Digest " + MINIMAL + ", qop=auth, cnonce=c", "missing nc"),
        ("Digest " + MINIMAL + ", qop=auth, nc=1, cnonce=c", "nc is not 8 hex digits"),
        ("Digest " + MINIMAL + ", qop=auth, nc=0000000g, cnonce=c", "nc is not 8 hex digits"),
        ("Digest " + MINIMAL + ", qop=auth, nc=+0000001, cnonce=c", "nc is not 8 hex digits"),
        ("Digest " + MINIMAL + ", qop=auth, nc=00000000, cnonce=c", "nc is zero"),
        ("Digest " + MINIMAL + ", algorithm=MD5-sess", "missing cnonce"),
        ("Digest " + MINIMAL + ", userhash=true", "userhash is not supported"),
        ("Digest " + MINIMAL + ', NONCE="again"', "duplicate nonce"),
        ('Digest username="a" realm="r"', "missing comma after username"),
        ('Digest username="a"x, realm="r"', "missing comma after username"),
        ('Digest username="a, realm="r', "missing comma after username"),
        ('Digest username="a, realm=r', "unterminated quoted string in username"),
        ('Digest username="a\\', "unterminated quoted string in username"),
        ("Digest username", "missing = after username"),
        ("Digest username=", "missing value for username"),
        ("Digest username=, realm=r", "missing value for username"),
        ('Digest ="a"', "expected a parameter name"),
        # Names are SIP tokens (RFC 3261 25.1), which, unlike HTTP's, hold no '#', '$', '&', '^' or '|'.
        ("Digest " + MINIMAL + ", x|y=1", "missing = after x"),
        ("Digest " + MINIMAL + ", algorithm=a#b", "unsupported algorithm"),
    ],
)
def test_parser_reasons(header, reason):
    with pytest.raises(DigestError) as caught:
        parse_credentials(header)
    assert str(caught.value) == reason


def test_parser_reason_does_not_echo_long_or_unsafe_values():
    with pytest.raises(DigestError) as caught:
        parse_credentials("Digest " + MINIMAL + ", algorithm=" + "X" * 1000)
    assert str(caught.value) == "unsupported algorithm"
    with pytest.raises(DigestError) as caught:
        parse_credentials("Digest " + "n" * 1000)
    assert len(str(caught.value)) < 80


def test_digest_error_is_a_value_error():
    assert issubclass(DigestError, ValueError)


_REASON_PHRASE = re.compile(r"[ -~]{1,80}")
_FRAGMENTS = st.sampled_from(
    [
        "Digest ", "digest", " ", "\t", "\r\n ", ",", "=", '"', "\\", "username", "realm", "nonce", "uri",
        "response", "algorithm", "qop", "nc", "cnonce", "opaque", "username*", "userhash", "MD5", "SHA-256",
        "md5-sess", "auth", "auth-int", "true", "00000001", "a" * 32, "b" * 64, "=\"x\"", "\x00", "\udcff",
        "\ud800", "é", "0", "ﬀ",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(_FRAGMENTS, max_size=40).map("".join)))
def test_parser_raises_only_digest_error_with_a_short_printable_reason(text):
    try:
        credentials = parse_credentials(text)
    except DigestError as error:
        assert _REASON_PHRASE.fullmatch(str(error)), str(error)
        assert str(error) != "malformed parameters"  # the fallback: every case has a precise reason
    else:
        assert isinstance(credentials, Credentials)
        assert credentials.algorithm in digest.SUPPORTED_ALGORITHMS


@settings(max_examples=200, deadline=None)
@given(
    username=st.text(min_size=1),
    realm=st.text(),
    uri=st.text(),
    cnonce=st.text(),
)
def test_parser_round_trips_quoted_values(username, realm, uri, cnonce):
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    header = (
        f"Digest username={quoted(username)}, realm={quoted(realm)}, nonce=n, uri={quoted(uri)},"
        f" response={'1' * 32}, qop=auth, nc=00000001, cnonce={quoted(cnonce)}"
    )
    credentials = parse_credentials(header)
    assert (credentials.username, credentials.realm, credentials.uri, credentials.cnonce) == (
        username, realm, uri, cnonce,
    )


# --- The fast path agrees with the careful parser ----------------------------------

_KNOWN_NAMES = ["username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "qop", "nc", "opaque", "userhash"]
_CLEAN_VALUE = st.text(alphabet="ab09:;@.=-/+", max_size=12)
_ANY_VALUE = st.text(alphabet='aB09:;@.=, "\\\t-', max_size=10)
# What UAs send: known names, ", " between pairs, clean quoted or token values.
_PLAIN_CREDENTIALS = st.lists(
    st.tuples(st.sampled_from(_KNOWN_NAMES), st.booleans(), _CLEAN_VALUE.filter(bool)),
    min_size=1, max_size=9, unique_by=lambda pair: pair[0],
).map(lambda pairs: "Digest " + ", ".join(f'{name}="{value}"' if quoted else f"{name}={value}"
                                            for name, quoted, value in pairs))
# The same with one thing out of place: the edge of what the fast path takes.
_NEAR_PLAIN_CREDENTIALS = st.tuples(
    _PLAIN_CREDENTIALS,
    st.integers(min_value=0, max_value=300),
    st.sampled_from([",", ", ", " ", "\t", '"', "\\", "=", "A", "*", "foo=1, ", "nc=1, ", "username*=x, ", ', x="', "\u00e9"]),
).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :])
_ANY_CREDENTIALS = st.tuples(
    st.sampled_from(["Digest ", "digest ", "Digest  ", "Digest", "Basic "]),
    st.lists(st.tuples(st.sampled_from([*_KNOWN_NAMES, "username*", "Realm", "foo", ""]),
                       _ANY_VALUE.map(lambda v: f'"{v}"') | _ANY_VALUE), max_size=6),
    st.sampled_from([", ", ",", " ,", ",  ", ", , ", ""]),
).map(lambda t: t[0] + t[2].join(f"{name}={value}" for name, value in t[1]))


def _outcome(parse, text):
    try:
        return parse(text)
    except DigestError as error:
        return f"DigestError: {error}"


@settings(max_examples=800, deadline=None)
@given(st.one_of(_PLAIN_CREDENTIALS, _NEAR_PLAIN_CREDENTIALS, _ANY_CREDENTIALS))
def test_the_fast_path_gives_what_the_careful_parser_gives(text):
    assert _outcome(_parameters, text) == _outcome(_parameters_carefully, text)


@pure_python_only
def test_usual_credentials_take_the_fast_path_and_the_rest_falls_back(monkeypatch):
    usual = (
        'Digest username="alice", realm="sip.example.test", nonce="AAAAAGlBXy1d3XK0lLsWcw8SDQz7D7yJt8wqx4gBvMUQ", '
        'uri="sip:sip.example.test", response="' + "0" * 32 + '", algorithm=MD5, cnonce="abc", qop=auth, nc=00000001'
    )
    unusual = [
        usual.replace(", ", ","),  # other spacing
        usual.replace("realm=", "Realm="),  # other case
        usual.replace('"alice"', '"al\\ice"'),  # an escape
        usual + ", foo=bar",  # a parameter we do not read
        usual + ", nc=00000002",  # a duplicate
    ]
    careful = _parameters_carefully
    calls = []
    monkeypatch.setattr(
        "registrar.sip.digest.credentials._parameters_carefully", lambda text: calls.append(text) or careful(text)
    )
    assert _parameters(usual)["nonce"] == "AAAAAGlBXy1d3XK0lLsWcw8SDQz7D7yJt8wqx4gBvMUQ"
    assert calls == []
    for text in unusual:
        assert _outcome(_parameters, text) == _outcome(careful, text)
    assert calls == unusual


# --- Nonces --------------------------------------------------------------------


def test_nonce_is_valid_then_stale_after_its_lifetime():
    clock = FakeClock(NOW)
    authority = NonceAuthority(SECRET, lifetime=300, clock=clock)
    nonce = authority.issue(REALM)
    assert authority.check(nonce, REALM) is NonceStatus.VALID
    clock.now += 300
    assert authority.check(nonce, REALM) is NonceStatus.VALID
    clock.now += 1.5
    assert authority.check(nonce, REALM) is NonceStatus.STALE
    assert authority.inspect(nonce, REALM) == (NonceStatus.STALE, 1_000_000)


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(min_size=16, max_size=200), signed=st.binary(max_size=40), realm=st.text(max_size=20))
def test_nonce_mac_is_hmac_sha256_of_the_secret(secret, signed, realm):
    expected = hmac.new(secret, signed + realm.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()[:16]
    assert NonceAuthority(secret)._mac(signed, realm) == expected


def test_nonce_from_the_future_is_invalid_beyond_the_skew():
    clock = FakeClock(NOW)
    issuer = NonceAuthority(SECRET, clock=clock)
    nonce = issuer.issue(REALM)
    clock.now -= 4
    assert issuer.check(nonce, REALM) is NonceStatus.VALID  # within 5 s of skew
    clock.now -= 2
    assert issuer.check(nonce, REALM) is NonceStatus.INVALID


def test_nonce_is_invalid_for_another_realm_secret_or_any_alteration():
    authority = NonceAuthority(SECRET)
    nonce = authority.issue(REALM)
    assert authority.check(nonce, "other.example.test") is NonceStatus.INVALID
    assert NonceAuthority(b"another secret, just as long..").check(nonce, REALM) is NonceStatus.INVALID
    for index in range(len(nonce)):
        replacement = "A" if nonce[index] != "A" else "B"
        altered = nonce[:index] + replacement + nonce[index + 1 :]
        assert authority.check(altered, REALM) is NonceStatus.INVALID
    for junk in ["", "x", nonce + "A", nonce[:-1], "é" * 44, " " * 44]:
        if junk != nonce:
            assert authority.check(junk, REALM) is NonceStatus.INVALID


def test_standard_base64_alphabet_is_not_an_alias():
    authority = NonceAuthority(SECRET)
    for _ in range(50):
        nonce = authority.issue(REALM)
        if "-" in nonce or "_" in nonce:
            assert authority.check(nonce.replace("-", "+").replace("_", "/"), REALM) is NonceStatus.INVALID
            return
    pytest.fail("no nonce with - or _ in 50 tries")


def test_nonces_issued_in_the_same_second_differ_and_are_tokens():
    authority = NonceAuthority(SECRET, clock=FakeClock(NOW))
    nonces = {authority.issue(REALM) for _ in range(1000)}
    assert len(nonces) == 1000
    for nonce in nonces:
        assert re.fullmatch(r"[A-Za-z0-9_-]{44}", nonce)


def test_any_replica_with_the_same_secret_verifies_a_nonce():
    clock = FakeClock(NOW)
    pod_a = NonceAuthority(SECRET, clock=clock)
    pod_b = NonceAuthority(SECRET, clock=clock)
    assert pod_b.check(pod_a.issue(REALM), REALM) is NonceStatus.VALID


def test_short_secret_is_refused():
    with pytest.raises(ValueError):
        NonceAuthority(b"short")


# --- Nonce counts ----------------------------------------------------------------


def test_nonce_count_must_increase():
    counts = NonceCounts()
    assert counts.accept("n", 1, 100) is NonceCountStatus.ACCEPTED
    assert counts.accept("n", 1, 100) is NonceCountStatus.REPLAYED
    assert counts.accept("n", 3, 100) is NonceCountStatus.ACCEPTED  # gaps are fine
    assert counts.accept("n", 2, 100) is NonceCountStatus.REPLAYED
    assert counts.accept("other", 1, 100) is NonceCountStatus.ACCEPTED


def test_evicted_nonce_is_forgotten_not_accepted_again():
    counts = NonceCounts(max_nonces=2)
    assert counts.accept("old", 1, 100) is NonceCountStatus.ACCEPTED
    assert counts.accept("mid", 1, 101) is NonceCountStatus.ACCEPTED
    assert counts.accept("new", 1, 102) is NonceCountStatus.ACCEPTED  # evicts "old"
    assert len(counts) == 2
    # A replay of the evicted nonce must not pass as a first use...
    assert counts.accept("old", 1, 100) is NonceCountStatus.FORGOTTEN
    # ...nor does any unknown nonce issued no later than it,
    assert counts.accept("unseen", 1, 99) is NonceCountStatus.FORGOTTEN
    # while nonces issued later are still new, and remembered ones still tracked.
    assert counts.accept("newer", 1, 103) is NonceCountStatus.ACCEPTED
    assert counts.accept("new", 1, 102) is NonceCountStatus.REPLAYED


def test_recently_used_nonce_survives_eviction():
    counts = NonceCounts(max_nonces=2)
    counts.accept("a", 1, 100)
    counts.accept("b", 1, 101)
    counts.accept("a", 2, 100)  # "a" is now the most recently used
    counts.accept("c", 1, 102)  # evicts "b"
    assert counts.accept("a", 2, 100) is NonceCountStatus.REPLAYED
    assert counts.accept("a", 3, 100) is NonceCountStatus.ACCEPTED
    assert counts.accept("b", 2, 101) is NonceCountStatus.FORGOTTEN


def test_forget_issued_until_covers_a_restart():
    counts = NonceCounts(forget_issued_until=500)
    assert counts.accept("before restart", 7, 500) is NonceCountStatus.FORGOTTEN
    assert counts.accept("after restart", 1, 501) is NonceCountStatus.ACCEPTED


# --- The authenticator ---------------------------------------------------------------


def _setup(clock=None, **kwargs):
    clock = clock or FakeClock(NOW)
    nonces = NonceAuthority(SECRET, lifetime=300, clock=clock)
    return clock, DigestAuthenticator(nonces, NonceCounts(), **kwargs)


def _nonce_of(header: str) -> str:
    match = re.search(r'nonce="([^"]*)"', header)
    assert match
    return match[1]


def _authorization(
    header: str, password: str = "secret", *, username: str = "alice", algorithm: str = "MD5",
    nc: str | None = "00000001", qop: str | None = "auth", realm: str = REALM, method: str = "REGISTER",
) -> Credentials:
    """What a UA sends back for challenge `header` (built like a client, then parsed)."""
    nonce = _nonce_of(header)
    uri = "sip:sip.example.test"
    cnonce = "0a4f113b"
    base = algorithm.removesuffix("-sess")
    response = compute_response(
        algorithm, ha1(base, username, realm, password), nonce, method, uri,
        qop=qop, nc=nc if qop else None, cnonce=cnonce if qop or algorithm != base else None,
    )
    value = (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}",'
        f' response="{response}", algorithm={algorithm}'
    )
    if qop:
        value += f', qop={qop}, nc={nc}, cnonce="{cnonce}"'
    elif algorithm != base:
        value += f', cnonce="{cnonce}"'
    return parse_credentials(value)


ALICE = {"MD5": ha1("MD5", "alice", REALM, "secret"), "SHA-256": ha1("SHA-256", "alice", REALM, "secret")}


def test_challenges_share_one_nonce_in_the_given_order():
    _, authenticator = _setup()
    headers = authenticator.challenges(REALM, ["SHA-256", "MD5"])
    assert [re.search(r"algorithm=([^,]+)", h)[1] for h in headers] == ["SHA-256", "MD5"]
    assert _nonce_of(headers[0]) == _nonce_of(headers[1])
    assert headers == [challenge(REALM, _nonce_of(headers[0]), algorithm) for algorithm in ["SHA-256", "MD5"]]
    assert all('qop="auth"' in h and "stale" not in h for h in headers)
    assert authenticator.challenges(REALM, ["MD5"], stale=True)[0].endswith(", stale=true")


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"])
def test_right_password_is_ok(algorithm):
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, [algorithm])[0]
    outcome = authenticator.verify("REGISTER", _authorization(header, algorithm=algorithm), REALM, ALICE)
    assert outcome.status is AuthStatus.OK
    assert outcome.ok and outcome.username == "alice" and outcome.reason == ""


def test_wrong_password_fails():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    outcome = authenticator.verify("REGISTER", _authorization(header, "guess"), REALM, ALICE)
    assert (outcome.status, outcome.reason) == (AuthStatus.FAILED, "wrong password")


def test_response_for_another_method_fails():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    outcome = authenticator.verify("INVITE", _authorization(header), REALM, ALICE)
    assert outcome.reason == "wrong password"


@pure_python_only
def test_unknown_user_fails_after_the_same_computation_as_a_wrong_password(monkeypatch):
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    guessed = _authorization(header, "guess", nc="00000001")
    mallory = _authorization(header, username="mallory", nc="00000002")
    right = _authorization(header, nc="00000003")

    calls = []
    real_response = Algorithm.response

    def counting_response(algorithm, ha1_hex, *rest):
        calls.append(ha1_hex)
        return real_response(algorithm, ha1_hex, *rest)

    monkeypatch.setattr(Algorithm, "response", counting_response)
    wrong_password = authenticator.verify("REGISTER", guessed, REALM, ALICE)
    unknown = authenticator.verify("REGISTER", mallory, REALM, None)
    # Even the right password fails for a user provisioned without that algorithm.
    no_md5 = authenticator.verify("REGISTER", right, REALM, {"SHA-256": ALICE["SHA-256"]})
    assert (wrong_password.status, wrong_password.reason) == (AuthStatus.FAILED, "wrong password")
    assert (unknown.status, unknown.reason) == (AuthStatus.FAILED, "unknown user")
    assert (no_md5.status, no_md5.reason) == (AuthStatus.FAILED, "no MD5 credentials")
    assert len(calls) == 3
    assert len({len(h) for h in calls}) == 1  # a dummy HA1 of the same length
    assert calls[1] not in ALICE.values() and calls[2] not in ALICE.values()


def test_unknown_user_never_ok_even_with_a_response_for_the_dummy_ha1():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    nonce = _nonce_of(header)
    response = compute_response(
        "MD5", _DUMMY_HA1["MD5"], nonce, "REGISTER", "sip:x", qop="auth", nc="00000001", cnonce="c"
    )
    credentials = Credentials("mallory", REALM, nonce, "sip:x", response, "MD5", "c", "auth", "00000001")
    assert authenticator.verify("REGISTER", credentials, REALM, None).status is AuthStatus.FAILED


def test_stale_nonce_with_right_password_is_stale_and_with_wrong_password_fails():
    clock, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    clock.now += 301
    right = authenticator.verify("REGISTER", _authorization(header), REALM, ALICE)
    wrong = authenticator.verify("REGISTER", _authorization(header, "guess"), REALM, ALICE)
    assert (right.status, right.reason) == (AuthStatus.STALE, "nonce expired")
    assert (wrong.status, wrong.reason) == (AuthStatus.FAILED, "wrong password")


def test_invalid_nonce_fails():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0].replace('nonce="', 'nonce="x')
    outcome = authenticator.verify("REGISTER", _authorization(header), REALM, ALICE)
    assert (outcome.status, outcome.reason) == (AuthStatus.FAILED, "invalid nonce")


def test_replayed_nonce_count_fails_and_refresh_with_higher_nc_passes():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    first = _authorization(header, nc="00000001")
    assert authenticator.verify("REGISTER", first, REALM, ALICE).ok
    replay = authenticator.verify("REGISTER", first, REALM, ALICE)
    assert (replay.status, replay.reason) == (AuthStatus.FAILED, "replayed nonce count")
    assert authenticator.verify("REGISTER", _authorization(header, nc="00000002"), REALM, ALICE).ok
    assert authenticator.verify("REGISTER", _authorization(header, nc="0000000a"), REALM, ALICE).ok
    assert not authenticator.verify("REGISTER", _authorization(header, nc="00000009"), REALM, ALICE).ok


def test_forgotten_nonce_count_asks_for_a_new_nonce():
    clock = FakeClock(NOW)
    nonces = NonceAuthority(SECRET, clock=clock)
    authenticator = DigestAuthenticator(nonces, NonceCounts(max_nonces=1))
    old = authenticator.challenges(REALM, ["MD5"])[0]
    assert authenticator.verify("REGISTER", _authorization(old), REALM, ALICE).ok
    clock.now += 1
    new = authenticator.challenges(REALM, ["MD5"])[0]
    assert authenticator.verify("REGISTER", _authorization(new), REALM, ALICE).ok  # evicts old
    outcome = authenticator.verify("REGISTER", _authorization(old, nc="00000002"), REALM, ALICE)
    assert (outcome.status, outcome.reason) == (AuthStatus.STALE, "nonce count forgotten")


def test_a_nonce_is_spent_after_failures_per_nonce_wrong_responses():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    for n in range(1, 4):
        outcome = authenticator.verify(
            "REGISTER", _authorization(header, f"guess-{n}", nc=f"{n:08x}"), REALM, ALICE, failures_per_nonce=3
        )
        assert outcome.reason == "wrong password"
    right = authenticator.verify("REGISTER", _authorization(header, nc="00000004"), REALM, ALICE, failures_per_nonce=3)
    assert (right.status, right.reason) == (AuthStatus.FAILED, "nonce spent")
    # Unknown users spend nonces alike; other nonces are untouched.
    other = authenticator.challenges(REALM, ["MD5"])[0]
    for _ in range(3):
        authenticator.verify("REGISTER", _authorization(other, username="nobody"), REALM, None, failures_per_nonce=3)
    assert authenticator.verify("REGISTER", _authorization(other), REALM, ALICE, failures_per_nonce=3).reason == (
        "nonce spent"
    )
    fresh = authenticator.challenges(REALM, ["MD5"])[0]
    assert authenticator.verify("REGISTER", _authorization(fresh), REALM, ALICE, failures_per_nonce=3).ok


def test_nonce_failures_are_bounded_and_forget_the_least_recently_failed():
    failures = NonceFailures(max_nonces=2)
    failures.failed("a")
    failures.failed("b")
    failures.failed("a")
    failures.failed("c")  # evicts "b"
    assert len(failures) == 2
    assert failures.spent("a", 2) and not failures.spent("b", 1) and failures.spent("c", 1)


def test_cross_replica_verification():
    clock = FakeClock(NOW)
    pod_a = DigestAuthenticator(NonceAuthority(SECRET, clock=clock), NonceCounts())
    pod_b = DigestAuthenticator(NonceAuthority(SECRET, clock=clock), NonceCounts())
    pod_c = DigestAuthenticator(NonceAuthority(b"a different secret of 32 bytes!!", clock=clock), NonceCounts())
    header = pod_a.challenges(REALM, ["SHA-256"])[0]
    credentials = _authorization(header, algorithm="SHA-256")
    assert pod_b.verify("REGISTER", credentials, REALM, ALICE).ok
    assert pod_c.verify("REGISTER", credentials, REALM, ALICE).reason == "invalid nonce"


def test_response_without_qop_is_refused_unless_allowed():
    _, strict = _setup()
    header = strict.challenges(REALM, ["MD5"])[0]
    outcome = strict.verify("REGISTER", _authorization(header, qop=None), REALM, ALICE)
    assert (outcome.status, outcome.reason) == (AuthStatus.FAILED, "missing qop")

    _, lenient = _setup(require_qop=False)
    header = lenient.challenges(REALM, ["MD5"])[0]
    assert lenient.verify("REGISTER", _authorization(header, qop=None), REALM, ALICE).ok
    assert lenient.verify("REGISTER", _authorization(header, "guess", qop=None), REALM, ALICE).reason == (
        "wrong password"
    )
    # MD5-sess without qop uses the cnonce (RFC 2617).
    assert lenient.verify("REGISTER", _authorization(header, qop=None, algorithm="MD5-sess"), REALM, ALICE).ok


def test_realm_mismatch_fails():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    credentials = _authorization(header, realm="other.example.test")
    outcome = authenticator.verify("REGISTER", credentials, REALM, ALICE)
    assert (outcome.status, outcome.reason) == (AuthStatus.FAILED, "realm mismatch")


def test_nonce_issued_for_another_realm_fails():
    _, authenticator = _setup()
    header = authenticator.challenges("other.example.test", ["MD5"])[0]
    outcome = authenticator.verify("REGISTER", _authorization(header), REALM, ALICE)
    assert outcome.reason == "invalid nonce"


def test_algorithm_not_offered_fails():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["SHA-256"])[0]
    md5 = _authorization(header, algorithm="MD5")
    outcome = authenticator.verify("REGISTER", md5, REALM, ALICE, offered_algorithms=("SHA-256",))
    assert (outcome.status, outcome.reason) == (AuthStatus.FAILED, "algorithm MD5 not offered")
    sess = _authorization(header, algorithm="SHA-256-sess")
    assert authenticator.verify("REGISTER", sess, REALM, ALICE, offered_algorithms=("SHA-256",)).ok


def test_upper_case_response_hex_is_accepted():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    credentials = _authorization(header)
    shouting = replace(credentials, response=credentials.response.upper())
    assert authenticator.verify("REGISTER", shouting, REALM, ALICE).ok


def test_non_ascii_username_hashes_as_utf8():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["SHA-256"])[0]
    credentials = _authorization(header, username="zoë", algorithm="SHA-256")
    assert authenticator.verify("REGISTER", credentials, REALM, {"SHA-256": ha1("SHA-256", "zoë", REALM, "secret")}).ok


def test_unencodable_text_fails_instead_of_raising():
    _, authenticator = _setup()
    header = authenticator.challenges(REALM, ["MD5"])[0]
    credentials = _authorization(header)
    lone_surrogate = replace(credentials, uri="sip:\ud800")
    outcome = authenticator.verify("REGISTER", lone_surrogate, REALM, ALICE)
    assert (outcome.status, outcome.reason) == (AuthStatus.FAILED, "malformed credentials")


def test_nonces_issued_in_one_second_stay_unique_across_random_pool_refills():
    authority = NonceAuthority(SECRET, clock=FakeClock(NOW))
    nonces = [authority.issue(REALM) for _ in range(2000)]  # several 4 KiB pools' worth
    assert len(set(nonces)) == len(nonces)
    assert all(authority.check(nonce, REALM) is NonceStatus.VALID for nonce in nonces[::97])
