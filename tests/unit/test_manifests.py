"""The manifest loader: the shipped manifests/ load into the expected Catalog, and
malformed manifests fail with a message naming the file, the object and the field."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import textwrap
from pathlib import Path

import pytest

from registrar.manifests import Catalog, ManifestError, load_catalog
from registrar import manifests
from registrar.model import (
    Connection,
    ConnectionLimits,
    Domain,
    KeepalivePolicy,
    LockoutPolicy,
    RegistrationPolicy,
    SecurityPolicy,
    SourceLimits,
)
from tests.helpers import MANIFESTS

SIP = "sip.example.test"
SIPHV = "siphv.example.test"
# The passwords in manifests/connections.yaml, by (domain, username).
SHIPPED_PASSWORDS = {
    (SIP, "alice"): "alice-secret-1",
    (SIP, "bob"): "bob-secret-2",
    (SIP, "carol"): "carol-secret-3",
    (SIPHV, "trunk1"): "trunk1-secret-4",
}


def expected_ha1(username: str, realm: str, password: str) -> dict[str, str]:
    """HA1 = H(username:realm:password), RFC 7616 section 3.4.2, computed independently."""
    a1 = f"{username}:{realm}:{password}".encode()
    return {"MD5": hashlib.md5(a1).hexdigest(), "SHA-256": hashlib.sha256(a1).hexdigest()}


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog(MANIFESTS)


# --- The shipped manifests -----------------------------------------------------


def test_shipped_domains(shipped: Catalog) -> None:
    assert set(shipped.domains) == {SIP, SIPHV}
    sip = shipped.domains[SIP]
    assert sip.name == SIP
    assert sip.registration == RegistrationPolicy(enabled=True, min_expires=60, default_expires=600, max_expires=3600)
    assert sip.mode == "proxy"
    assert sip.outbound_gateway == "sip:gw.example.test:5060"
    assert sip.digest_algorithms == ("MD5",)


def test_shipped_siphv_refuses_registration(shipped: Catalog) -> None:
    siphv = shipped.domains[SIPHV]
    assert siphv.registration.enabled is False
    assert siphv.outbound_gateway == "sip:gw.example.test:5060"


def test_shipped_connections(shipped: Catalog) -> None:
    assert set(shipped.connections) == {
        (SIP, "alice"),
        (SIP, "bob"),
        (SIP, "carol"),
        (SIP, "pbx-office"),
        (SIPHV, "trunk1"),
    }
    for (domain, username), connection in shipped.connections.items():
        assert (connection.domain, connection.username, connection.name) == (domain, username, username)
        assert (connection.max_contacts, connection.inbound, connection.outbound) == (5, True, True)


@pytest.mark.parametrize("key", sorted(SHIPPED_PASSWORDS))
def test_shipped_ha1_is_digest_of_the_secret_password(shipped: Catalog, key: tuple[str, str]) -> None:
    domain, username = key
    connection = shipped.connections[key]
    assert connection.authentication == "credentials"
    assert connection.ha1 == expected_ha1(username, domain, SHIPPED_PASSWORDS[key])
    assert connection.allowed_networks == ()
    assert connection.allows_address("203.0.113.9")


def test_shipped_ip_connection(shipped: Catalog) -> None:
    pbx = shipped.connections[(SIP, "pbx-office")]
    assert pbx.authentication == "ip"
    assert pbx.ha1 == {}
    assert pbx.allowed_networks == (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("192.0.2.0/24"))
    assert pbx.allows_address("127.0.0.2")
    assert pbx.allows_address("192.0.2.200")
    assert not pbx.allows_address("127.0.0.1")


def test_passwords_never_reach_the_catalog(shipped: Catalog) -> None:
    text = repr(shipped)
    for password in SHIPPED_PASSWORDS.values():
        assert password not in text


def test_single_file_path_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "one.yaml", DOMAIN)
    catalog = load_catalog(path)
    assert set(catalog.domains) == {SIP}
    assert catalog.connections == {}


# --- Loader behaviour on hand-written manifests ---------------------------------

DOMAIN = """
apiVersion: sipreg.io/v1alpha1
kind: SipDomain
metadata: {name: sip-example-test, namespace: voip}
spec:
  domain: sip.example.test
  registration: {enabled: true, minExpires: 60, defaultExpires: 600, maxExpires: 3600}
"""

SECRET = """
apiVersion: v1
kind: Secret
metadata: {name: alice-sip, namespace: voip}
stringData: {password: alice-secret-1}
"""

ALICE = """
apiVersion: sipreg.io/v1alpha1
kind: SipConnection
metadata: {name: alice, namespace: voip}
spec:
  domain: sip.example.test
  username: alice
  authentication:
    type: credentials
    passwordSecretRef: {name: alice-sip, key: password}
"""


def write(directory: Path, name: str, *documents: str) -> Path:
    path = directory / name
    path.write_text("---\n".join(textwrap.dedent(d).lstrip("\n") for d in documents))
    return path


def test_objects_may_come_in_any_order_and_other_kinds_are_ignored(tmp_path: Path) -> None:
    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: voip}\n"
    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: voip}\ndata: {a: b}\n"
    write(tmp_path, "a.yaml", ALICE, namespace)
    write(tmp_path, "b.yml", config_map, SECRET, "")
    write(tmp_path, "c.yaml", DOMAIN)
    (tmp_path / "notes.txt").write_text("not a manifest: [")  # not a manifest suffix: skipped
    catalog = load_catalog(tmp_path)
    assert set(catalog.connections) == {(SIP, "alice")}
    assert catalog.connections[(SIP, "alice")].ha1 == expected_ha1("alice", SIP, "alice-secret-1")


def test_a_certificate_secret_missing_from_the_manifests_is_noted_once_per_secret(tmp_path: Path) -> None:
    tls = DOMAIN + "  transports: {udp: 5060, tls: {port: 5061, certificateSecret: sip-tls}, " \
        "wss: {port: 7443, certificateSecret: sip-tls}}\n"
    notes: list[str] = []
    catalog = load_catalog(write(tmp_path, "d.yaml", tls), notes)
    assert set(catalog.domains) == {SIP}  # served all the same
    assert notes == [
        f"{tmp_path / 'd.yaml'}: SipDomain voip/sip-example-test: spec.transports.tls.certificateSecret, "
        "spec.transports.wss.certificateSecret: Secret voip/sip-tls is not in the manifests (in a cluster the "
        "registrar pods mount it); `sipreg serve` serves TLS and wss with --tls-cert (--wss-cert), else a "
        "self-signed certificate"
    ]
    certificate = "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {name: sip-tls, namespace: voip}\n" \
        "stringData: {tls.crt: PEM, tls.key: KEY}\n"
    notes.clear()
    load_catalog(write(tmp_path, "d.yaml", tls, certificate), notes)
    assert notes == []


def test_secret_data_is_base64_and_string_data_wins_per_key(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"from-data").decode()
    secrets = f"""
    apiVersion: v1
    kind: Secret
    metadata: {{name: alice-sip, namespace: voip}}
    data: {{password: {encoded}, other: {encoded}}}
    stringData: {{password: from-string-data}}
    ---
    apiVersion: v1
    kind: Secret
    metadata: {{name: bob-sip, namespace: voip}}
    data: {{password: {encoded}}}
    """
    bob = ALICE.replace("alice", "bob")
    write(tmp_path, "m.yaml", DOMAIN, secrets, ALICE, bob)
    catalog = load_catalog(tmp_path)
    assert catalog.connections[(SIP, "alice")].ha1 == expected_ha1("alice", SIP, "from-string-data")
    assert catalog.connections[(SIP, "bob")].ha1 == expected_ha1("bob", SIP, "from-data")


def test_defaults_and_absent_registration_means_disabled(tmp_path: Path) -> None:
    domain = "apiVersion: sipreg.io/v1alpha1\nkind: SipDomain\nmetadata: {name: d}\nspec: {domain: Sip.Example.TEST}\n"
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: pw}\n"
    connection = (
        "apiVersion: sipreg.io/v1alpha1\nkind: SipConnection\nmetadata: {name: c}\n"
        "spec: {domain: sip.example.TEST, username: Alice, authentication: {passwordSecretRef: {name: s}}}\n"
    )
    write(tmp_path, "m.yaml", domain, secret, connection)
    catalog = load_catalog(tmp_path)
    domain_value = catalog.domains[SIP]  # domain names are lower-cased
    assert domain_value.registration == RegistrationPolicy(enabled=False)
    assert (domain_value.mode, domain_value.outbound_gateway, domain_value.digest_algorithms) == ("proxy", None, ("MD5",))
    alice = catalog.connections[(SIP, "Alice")]  # usernames keep their case
    assert (alice.authentication, alice.max_contacts, alice.inbound, alice.outbound) == ("credentials", 5, True, True)
    assert alice.ha1 == expected_ha1("Alice", SIP, "pw")  # the realm is the lower-case domain


def test_registration_present_but_empty_is_enabled_with_default_bounds(tmp_path: Path) -> None:
    write(tmp_path, "m.yaml", DOMAIN.replace("{enabled: true, minExpires: 60, defaultExpires: 600, maxExpires: 3600}", "{}"))
    assert load_catalog(tmp_path).domains[SIP].registration == RegistrationPolicy(enabled=True)


def test_domain_options(tmp_path: Path) -> None:
    options = """
      mode: redirect
      authentication: {algorithms: [SHA-256, MD5]}
      outbound: {gateway: "sips:gw.example.test;transport=tcp"}
    """
    write(tmp_path, "m.yaml", DOMAIN.rstrip("\n") + textwrap.dedent(options).replace("\n", "\n  ").rstrip() + "\n")
    domain = load_catalog(tmp_path).domains[SIP]
    assert domain.mode == "redirect"
    assert domain.digest_algorithms == ("SHA-256", "MD5")
    assert domain.outbound_gateway == "sips:gw.example.test;transport=tcp"


def test_usernames_differing_in_case_are_different_connections(tmp_path: Path) -> None:
    upper = ALICE.replace("{name: alice,", "{name: alice2,").replace("username: alice", "username: Alice")
    write(tmp_path, "m.yaml", DOMAIN, SECRET, ALICE, upper)
    assert set(load_catalog(tmp_path).connections) == {(SIP, "alice"), (SIP, "Alice")}


# --- Errors: each names file, object and field -----------------------------------

ALICE_LABEL = "SipConnection voip/alice"
DOMAIN_LABEL = "SipDomain voip/sip-example-test"


def load_error(tmp_path: Path, *documents: str, name: str = "users.yaml") -> tuple[str, str]:
    path = write(tmp_path, name, *documents)
    with pytest.raises(ManifestError) as caught:
        load_catalog(tmp_path)
    return str(path), str(caught.value)


@pytest.mark.parametrize(
    ("documents", "label", "field", "detail"),
    [
        pytest.param(
            [DOMAIN.replace("  domain: sip.example.test\n", "")],
            DOMAIN_LABEL, "spec.domain", "required", id="domain-missing",
        ),
        pytest.param(
            [DOMAIN, SECRET, ALICE.replace("  domain: sip.example.test\n", "")],
            ALICE_LABEL, "spec.domain", "required", id="connection-domain-missing",
        ),
        pytest.param(
            [SECRET, ALICE], ALICE_LABEL, "spec.domain", "no SipDomain defines 'sip.example.test'",
            id="connection-domain-unknown",
        ),
        pytest.param(
            [DOMAIN.replace("minExpires: 60", "minExpires: sixty")],
            DOMAIN_LABEL, "spec.registration.minExpires", "expected an integer, got 'sixty'", id="bad-int",
        ),
        pytest.param(
            [DOMAIN.replace("minExpires: 60", "minExpires: true")],
            DOMAIN_LABEL, "spec.registration.minExpires", "expected an integer, got True", id="bool-is-not-int",
        ),
        pytest.param(
            [DOMAIN.replace("minExpires: 60", "minExpires: 4000")],
            DOMAIN_LABEL, "spec.registration.minExpires", "4000 is greater than maxExpires (3600)", id="min-above-max",
        ),
        pytest.param(
            [DOMAIN.replace("defaultExpires: 600", "defaultExpires: 30")],
            DOMAIN_LABEL, "spec.registration.minExpires", "60 is greater than defaultExpires (30)",
            id="default-below-min",
        ),
        pytest.param(
            [DOMAIN.replace("minExpires: 60", "minExpires: 0")],
            DOMAIN_LABEL, "spec.registration.minExpires", "must be at least 1, got 0", id="min-zero",
        ),
        pytest.param(
            [DOMAIN, ALICE], ALICE_LABEL, "spec.authentication.passwordSecretRef.name",
            "Secret voip/alice-sip not found", id="secret-unknown",
        ),
        pytest.param(
            [DOMAIN, SECRET.replace("namespace: voip", "namespace: other"), ALICE],
            ALICE_LABEL, "spec.authentication.passwordSecretRef.name", "Secret voip/alice-sip not found",
            id="secret-in-another-namespace",
        ),
        pytest.param(
            [DOMAIN, SECRET.replace("password:", "passwd:"), ALICE],
            ALICE_LABEL, "spec.authentication.passwordSecretRef.key",
            "Secret voip/alice-sip has no key 'password' (it has: 'passwd')", id="secret-key-missing",
        ),
        pytest.param(
            [DOMAIN, SECRET.replace("stringData: {password: alice-secret-1}", "data: {password: 'not base64!'}"), ALICE],
            "Secret voip/alice-sip", "data.password", "not valid base64", id="secret-bad-base64",
        ),
        pytest.param(
            [DOMAIN, ALICE.replace("type: credentials", "type: ip\n    allowedAddresses: [192.0.2.0/24, 10.0.0.300/8]")
             .replace("    passwordSecretRef: {name: alice-sip, key: password}\n", "")],
            ALICE_LABEL, "spec.authentication.allowedAddresses[1]",
            "expected a CIDR or an IP address, got '10.0.0.300/8'", id="bad-cidr",
        ),
        pytest.param(
            [DOMAIN, SECRET, ALICE.replace("type: credentials", "type: credentials\n    allowedAddresses: [192.0.2.1/24]")],
            ALICE_LABEL, "spec.authentication.allowedAddresses[0]", "'192.0.2.1/24' has host bits set",
            id="cidr-host-bits",
        ),
        pytest.param(
            [DOMAIN + "  mode: stateful\n"],
            DOMAIN_LABEL, "spec.mode", "expected one of 'proxy', 'redirect', got 'stateful'", id="bad-mode",
        ),
        pytest.param(
            [DOMAIN, SECRET, ALICE.replace("type: credentials", "type: password")],
            ALICE_LABEL, "spec.authentication.type", "expected one of 'credentials', 'ip', got 'password'",
            id="bad-auth-type",
        ),
        pytest.param(
            [DOMAIN + "  authentication: {algorithms: [SHA-512]}\n"],
            DOMAIN_LABEL, "spec.authentication.algorithms[0]", "expected one of 'SHA-256', 'MD5', got 'SHA-512'",
            id="bad-algorithm",
        ),
        pytest.param(
            [DOMAIN + "  authentication: {algorithms: []}\n"],
            DOMAIN_LABEL, "spec.authentication.algorithms", "must not be empty", id="no-algorithms",
        ),
        pytest.param(
            [DOMAIN, ALICE.replace("    passwordSecretRef: {name: alice-sip, key: password}\n", "")],
            ALICE_LABEL, "spec.authentication.passwordSecretRef", "required when type is credentials",
            id="credentials-without-secret",
        ),
        pytest.param(
            [DOMAIN, ALICE.replace("type: credentials", "type: ip")
             .replace("    passwordSecretRef: {name: alice-sip, key: password}\n", "")],
            ALICE_LABEL, "spec.authentication.allowedAddresses", "must list at least one address when type is ip",
            id="ip-without-addresses",
        ),
        pytest.param(
            [DOMAIN, SECRET, ALICE.replace("username: alice", "username: alice@sip.example.test")],
            ALICE_LABEL, "spec.username", "expected a SIP username", id="bad-username",
        ),
        pytest.param(
            [DOMAIN, SECRET, ALICE + "  maxContacts: 0\n"],
            ALICE_LABEL, "spec.maxContacts", "must be at least 1, got 0", id="max-contacts-zero",
        ),
        pytest.param(
            [DOMAIN, SECRET, ALICE + "  inbound: 'no'\n"],
            ALICE_LABEL, "spec.inbound", "expected true or false, got 'no'", id="bad-bool",
        ),
        pytest.param(
            [DOMAIN.replace("minExpires:", "minExpire:")],
            DOMAIN_LABEL, "spec.registration.minExpire", "unknown field", id="unknown-field",
        ),
        pytest.param(
            [DOMAIN + "  transports: {udp: 70000}\n"],
            DOMAIN_LABEL, "spec.transports.udp", "must be at most 65535, got 70000", id="bad-port",
        ),
        pytest.param(
            [DOMAIN + "  transports: {tls: {port: 5061}}\n"],
            DOMAIN_LABEL, "spec.transports.tls.certificateSecret", "required", id="tls-without-certificate",
        ),
        pytest.param(
            [DOMAIN + "  outbound: {gateway: 'http://gw.example.test'}\n"],
            DOMAIN_LABEL, "spec.outbound.gateway", "expected a sip: or sips: URI, got 'http://gw.example.test'",
            id="bad-gateway",
        ),
        pytest.param(
            [DOMAIN + "  replicas: 0\n"], DOMAIN_LABEL, "spec.replicas", "must be at least 1, got 0", id="replicas-zero",
        ),
        pytest.param(
            [DOMAIN.replace("domain: sip.example.test", "domain: sip_example..test")],
            DOMAIN_LABEL, "spec.domain", "expected a fully qualified domain name", id="bad-domain-name",
        ),
        pytest.param(
            [DOMAIN.replace("spec:\n", "nospec:\n")], DOMAIN_LABEL, "spec", "required", id="spec-missing",
        ),
    ],
)
def test_field_errors_name_file_object_and_field(
    tmp_path: Path, documents: list[str], label: str, field: str, detail: str
) -> None:
    path, message = load_error(tmp_path, *documents)
    assert message.startswith(f"{path}: {label}: {field}: "), message
    assert detail in message.split(f"{field}: ", 1)[1], message


def test_duplicate_domain(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", DOMAIN)
    other = DOMAIN.replace("name: sip-example-test", "name: again").replace("sip.example.test", "SIP.example.test")
    path, message = load_error(tmp_path, other, name="b.yaml")
    assert message == (
        f"{path}: SipDomain voip/again: spec.domain: 'sip.example.test' is already defined by "
        f"{DOMAIN_LABEL} in {tmp_path / 'a.yaml'}"
    )


def test_duplicate_connection(tmp_path: Path) -> None:
    second = ALICE.replace("{name: alice,", "{name: alice-again,")
    path, message = load_error(tmp_path, DOMAIN, SECRET, ALICE, second)
    assert message == (
        f"{path}: SipConnection voip/alice-again: spec.username: alice@sip.example.test is already defined by "
        f"{ALICE_LABEL} in {path}"
    )


def test_duplicate_object_identity(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, DOMAIN, SECRET, SECRET.replace("alice-secret-1", "other"), ALICE)
    assert message == f"{path}: Secret voip/alice-sip: metadata.name: duplicate of the Secret voip/alice-sip in {path}"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, DOMAIN, "apiVersion: v1\nkind: Secret\nmetadata: {name: x\nstringData: {}\n")
    line = DOMAIN.lstrip("\n").count("\n") + 1 + 4  # the "---" line, then the 4th line of the broken document
    assert message.startswith(f"{path}:{line}: YAML syntax error: "), message


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    secret = SECRET.replace("stringData: {password: alice-secret-1}", "stringData:\n  password: a\n  password: b")
    path, message = load_error(tmp_path, secret)
    assert message.startswith(f"{path}:6: YAML syntax error: "), message
    assert "duplicate key 'password'" in message


def test_other_sipreg_versions_are_refused(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, DOMAIN.replace("sipreg.io/v1alpha1", "sipreg.io/v2"))
    assert message == f"{path}: SipDomain in document 1: apiVersion: 'sipreg.io/v2' is not supported (expected 'sipreg.io/v1alpha1')"


def test_an_unknown_kind_of_ours_is_an_error_naming_the_file_and_the_kind(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, DOMAIN.replace("kind: SipDomain", "kind: SIPDomain"))
    assert message == f"{path}: document 1: kind: 'SIPDomain' is not a sipreg.io kind (did you mean 'SipDomain'?)"
    path, message = load_error(tmp_path, DOMAIN.replace("kind: SipDomain", "kind: SipTrunk"))
    assert message == f"{path}: document 1: kind: 'SipTrunk' is not a sipreg.io kind (there are 'SipConnection', 'SipDomain')"


def test_missing_metadata_name(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, DOMAIN.replace("name: sip-example-test, ", ""))
    assert message == f"{path}: SipDomain in document 1: metadata.name: required"


def test_document_that_is_not_an_object(tmp_path: Path) -> None:
    path, message = load_error(tmp_path, DOMAIN, "- just\n- a list\n")
    assert message == f"{path}: document 2: expected a Kubernetes object (a mapping), got ['just', 'a list']"


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file or directory"):
        load_catalog(tmp_path / "nope")
    with pytest.raises(ManifestError, match=r"no manifest files"):
        load_catalog(tmp_path)


def test_v1_list_items_are_read(tmp_path: Path) -> None:
    items = "".join("- " + textwrap.dedent(d).strip("\n").replace("\n", "\n  ") + "\n" for d in (DOMAIN, SECRET, ALICE))
    write(tmp_path, "list.yaml", "apiVersion: v1\nkind: List\nitems:\n" + items)
    assert set(load_catalog(tmp_path).connections) == {(SIP, "alice")}


def test_security_defaults_are_the_models_and_every_knob_is_read() -> None:
    assert manifests.domain_from_spec({"domain": "sip.example.test"}).security == SecurityPolicy()
    domain = manifests.domain_from_spec(
        {
            "domain": "sip.example.test",
            "security": {
                "trustedNetworks": ["192.0.2.0/24"],
                "rateLimit": {"requestsPerSecond": 7, "burst": 9, "banAfter": 3, "banSeconds": 5, "maxBanSeconds": 50},
                "lockout": {"failuresPerSource": 2, "failuresPerUser": 4, "windowSeconds": 6, "lockoutSeconds": 8,
                            "maxLockoutSeconds": 80, "failuresPerNonce": 1},
                "connections": {"perSource": 3, "total": 30, "messageSeconds": 2, "handshakeSeconds": 4},
                "maxTransactions": 11,
            },
        }
    )
    assert domain.security == SecurityPolicy(
        trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),),
        sources=SourceLimits(requests_per_second=7.0, burst=9, ban_after=3, ban_seconds=5, max_ban_seconds=50),
        lockout=LockoutPolicy(failures_per_source=2, failures_per_user=4, window_seconds=6, lockout_seconds=8,
                              max_lockout_seconds=80, failures_per_nonce=1),
        connections=ConnectionLimits(per_source=3, total=30, message_seconds=2.0, handshake_seconds=4.0),
        max_transactions=11,
    )


def test_a_bad_security_knob_is_named() -> None:
    with pytest.raises(manifests.SpecError, match=r"spec\.security\.rateLimit\.burst"):
        manifests.domain_from_spec({"domain": "sip.example.test", "security": {"rateLimit": {"burst": 0}}})


def test_keepalive_defaults_are_the_models_and_every_knob_is_read() -> None:
    assert manifests.domain_from_spec({"domain": "sip.example.test"}).keepalive == KeepalivePolicy()
    domain = manifests.domain_from_spec({"domain": "sip.example.test", "keepalive": {
        "pingIntervalSeconds": 0, "pingFailures": 5, "flowTimerUdpSeconds": 20, "flowTimerStreamSeconds": 90}})
    assert domain.keepalive == KeepalivePolicy(ping_interval=0, ping_failures=5, flow_timer_udp=20,
                                               flow_timer_stream=90)
    with pytest.raises(manifests.SpecError, match=r"spec\.keepalive\.flowTimerUdpSeconds: must be at least 10"):
        manifests.domain_from_spec({"domain": "sip.example.test", "keepalive": {"flowTimerUdpSeconds": 5}})


def test_one_process_serving_several_domains_takes_the_most_generous_limits_and_all_trusted_networks() -> None:
    strict = Domain("a.test", security=SecurityPolicy(trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),),
                                                      sources=SourceLimits(burst=10), max_transactions=10))
    lax = Domain("b.test", security=SecurityPolicy(sources=SourceLimits(burst=1000, ban_seconds=5)))
    trunk = Connection("a.test", "pbx", authentication="ip", allowed_networks=(ipaddress.ip_network("198.51.100.7/32"),))
    policy = Catalog(domains={"a.test": strict, "b.test": lax}, connections={("a.test", "pbx"): trunk}).security
    assert policy.sources.burst == 1000 and policy.sources.ban_seconds == 60
    assert policy.max_transactions == SecurityPolicy().max_transactions
    assert policy.trusted_networks == (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.7/32"))
