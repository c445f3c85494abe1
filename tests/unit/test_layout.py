"""Unit tests for registrar.store.layout: etcd keys and record formats, and what a bad record gets."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registrar.model import (
    Binding,
    Connection,
    ConnectionLimits,
    Domain,
    KeepalivePolicy,
    LockoutPolicy,
    RegistrationPolicy,
    SecurityPolicy,
    SourceLimits,
)
from registrar.store import RegistrationFailure
from registrar.store import layout


def test_keys_are_versioned_and_split_back_whatever_the_user_part_holds() -> None:
    key = layout.bindings_key("a/b@c@sip.example.test")
    assert key == b"/sipreg/v1/bindings/sip.example.test/a/b@c"
    assert layout.aor_of(key) == "a/b@c@sip.example.test"
    assert layout.split_key(layout.CONNECTIONS, layout.connection_key("sip.example.test", "x/y")) == (
        "sip.example.test", "x/y",
    )
    assert layout.bindings_key("alice@sip.example.test").startswith(layout.bindings_domain_prefix("sip.example.test"))
    assert layout.prefix_end(b"/sipreg/v1/") == b"/sipreg/v10"


def test_a_registrar_holds_domains_nodes_and_connections_by_address_watches_the_others_and_never_a_binding() -> None:
    def within(ranges, key: bytes) -> bool:
        return any(start <= key < end for start, end in ranges)

    alice, pbx = layout.connection_keys("sip.example.test", "alice")
    for followed in (layout.served(frozenset({"sip.example.test"})), layout.served(None)):
        assert within(followed.held, pbx) and within(followed.watched, alice) and not within(followed.held, alice)
        assert within(followed.held, layout.domain_key("other.test"))
        assert within(followed.held, layout.node_key("pod-1"))
        for key in (layout.bindings_key("alice@sip.example.test"), layout.failure_key("sip.example.test", "alice"),
                    layout.claim_key("sip.example.test", "alice")):
            assert not within(followed.held + followed.watched, key)
            assert within(layout.EVERYTHING.held, key)  # the operator's mirror
    ours = layout.served(frozenset({"sip.example.test"}))
    for other in (*layout.connection_keys("sip.example.test.evil", "alice"), *layout.connection_keys("other.test", "a")):
        assert not within(ours.held + ours.watched, other)
    assert within(layout.served(None).watched, layout.connection_key("other.test", "alice"))


def test_a_connection_by_address_is_written_twice_and_one_by_credentials_once() -> None:
    by_address = Connection("sip.example.test", "pbx", "ip", {}, (ipaddress.ip_network("192.0.2.0/24"),), name="pbx")
    by_credentials = Connection("sip.example.test", "alice", ha1={"MD5": "a" * 32}, name="alice")
    records = layout.connection_records(by_address)
    assert list(records) == layout.connection_keys("sip.example.test", "pbx")
    assert set(records.values()) == {layout.encode_connection(by_address)}
    assert list(layout.connection_records(by_credentials)) == [layout.connection_key("sip.example.test", "alice")]


def test_domain_and_connection_records_round_trip_and_carry_no_password() -> None:
    domain = Domain("sip.example.test", RegistrationPolicy(True, 30, 300, 900), "redirect", "sip:gw.example.test",
                    ("SHA-256", "MD5"))
    assert layout.decode_domain(layout.encode_domain(domain)) == domain
    connection = Connection("sip.example.test", "pbx", "ip", {"MD5": "a" * 32},
                            (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")),
                            3, True, False, "pbx-office")
    record = layout.encode_connection(connection)
    assert layout.decode_connection(record) == connection
    assert json.loads(record)["allowedAddresses"] == ["192.0.2.0/24", "2001:db8::/32"]


def test_bindings_round_trip_and_expired_ones_are_dropped_on_read() -> None:
    aor = "alice@sip.example.test"
    live = Binding(aor, "sip:alice@192.0.2.1:5060", 2000.0, "call-1", 7, 0.5, "urn:uuid:1", 1, "tcp",
                   "192.0.2.1", 40000, "tcp:192.0.2.1:40000", "pod-a", "baresip", 1000.0)
    expired = live._replace(contact="sip:alice@192.0.2.2:5060", expires_at=1500.0, q=None, instance=None,
                            reg_id=None, flow=None)
    ipv6 = live._replace(contact="sip:alice@[2001:db8::1]:5060", transport="udp", source_host="2001:db8::1",
                         source_port=5060, flow=None)
    unknown = live._replace(contact="sip:alice@192.0.2.3:5060", source_host="", source_port=0)
    value = layout.encode_bindings((live, expired, ipv6, unknown))
    assert layout.decode_bindings(aor, value) == (live, expired, ipv6, unknown)
    assert layout.decode_bindings(aor, value, now=1600.0) == (live, ipv6, unknown)
    assert "aor" not in value.decode()  # the key says it
    sources = [item["source"] for item in json.loads(value)["bindings"]]
    assert sources == ["tcp:192.0.2.1:40000", "tcp:192.0.2.1:40000", "udp:[2001:db8::1]:5060", ""]


# A record as the registrars before the typed source wrote it (and as this one writes it still).
_WRITTEN_BEFORE = (
    b'{"bindings":[{"contact":"sip:alice@192.168.1.20:5060","expiresAt":1795494305.3231015,"callId":"c@1",'
    b'"cseq":2,"q":null,"instance":null,"regId":null,"transport":"udp","source":"udp:[2001:db8::9]:40000",'
    b'"flow":null,"node":"pod-a","userAgent":"Zoiper","registeredAt":1795490905.3231015}]}'
)


def test_a_record_written_before_the_typed_source_reads_into_its_fields_and_is_written_back_byte_for_byte() -> None:
    (binding,) = layout.decode_bindings("alice@sip.example.test", _WRITTEN_BEFORE)
    assert (binding.transport, binding.source_host, binding.source_port) == ("udp", "2001:db8::9", 40000)
    assert binding.received_uri() == "sip:[2001:db8::9]:40000"
    # Older registrars and operators read what this one writes: the record is the same.
    assert layout.encode_bindings((binding,)) == _WRITTEN_BEFORE


def test_a_path_is_written_only_when_there_is_one_and_read_back_in_order() -> None:
    (plain,) = layout.decode_bindings("alice@sip.example.test", _WRITTEN_BEFORE)
    assert plain.path == ()  # a record without "path": every record written before it
    routed = plain._replace(path=("<sip:edge@198.51.100.1;lr>", "<sip:sbc.example.test;lr>"))
    value = layout.encode_bindings((routed,))
    assert json.loads(value)["bindings"][0]["path"] == list(routed.path)
    assert layout.decode_bindings("alice@sip.example.test", value) == (routed,)
    with pytest.raises(layout.BadRecord):
        layout.decode_bindings("alice@sip.example.test", value.replace(b'"path":[', b'"path":[1,'))


def _as_json_dumps_writes_it(bindings: tuple[Binding, ...]) -> bytes:
    """The bindings record as json.dumps writes it: what encode_bindings must match byte for byte."""
    record = {"bindings": [layout._binding_record(binding) for binding in bindings]}
    return json.dumps(record, separators=(",", ":")).encode()


_ANY_NUMBER = st.one_of(st.floats(), st.integers(), st.booleans())
_ANY_VALUE = st.one_of(st.none(), st.text(), _ANY_NUMBER)


@given(
    st.lists(
        st.builds(
            Binding,
            aor=st.just("alice@sip.example.test"),
            contact=st.text(),
            expires_at=st.one_of(st.floats(), st.integers()),
            call_id=st.text(),
            cseq=st.one_of(st.integers(min_value=0, max_value=2**31), st.booleans()),
            q=st.one_of(st.none(), _ANY_NUMBER, st.text()),
            instance=_ANY_VALUE,
            reg_id=_ANY_VALUE,
            transport=st.sampled_from(["udp", "tcp", "tls"]),
            source_host=st.text(),
            source_port=st.integers(min_value=0, max_value=65535),
            flow=_ANY_VALUE,
            node=st.text(),
            user_agent=st.text(),
            registered_at=st.one_of(st.floats(), st.integers()),
        ),
        max_size=3,
    )
)
def test_a_bindings_record_is_what_json_dumps_writes_whatever_the_values(bindings: list[Binding]) -> None:
    assert layout.encode_bindings(tuple(bindings)) == _as_json_dumps_writes_it(tuple(bindings))


def test_the_bindings_the_registrar_makes_are_written_without_json_dumps() -> None:
    aor = "alice@sip.example.test"
    usual = Binding(aor, "sip:alice@192.0.2.1:5060;transport=tcp", 1795494305.3231015, "c@1", 2, 1.0,
                    "urn:uuid:00000000-0000-0000-0000-000000000001", 1, "tcp", "192.0.2.1", 40000,
                    "tcp:192.0.2.1:40000", "pod-a", 'Zoiper "5" \u00e9\u2603', 1795490905.3231015)
    bare = usual._replace(q=None, instance=None, reg_id=None, flow=None, user_agent="")
    for binding in (usual, bare):
        assert layout.encode_bindings((binding,)) == _as_json_dumps_writes_it((binding,))
        layout._binding_json(binding)  # the direct way, not the fallback


@pytest.mark.parametrize(
    "value, decode",
    [
        (b"not json", lambda v: layout.decode_bindings("a@b", v)),
        (b"[1, 2]", lambda v: layout.decode_bindings("a@b", v)),
        (b'{"bindings": [{"contact": "sip:a@b"}]}', lambda v: layout.decode_bindings("a@b", v)),
        (b'{"bindings": [{"contact": "sip:a@b", "expiresAt": "soon", "callId": "c", "cseq": 1, "q": null, '
         b'"instance": null, "regId": null, "transport": "udp", "source": "", "flow": null, "node": "", '
         b'"userAgent": "", "registeredAt": 0}]}', lambda v: layout.decode_bindings("a@b", v)),
        (b'{"bindings": [{"contact": "sip:a@b", "expiresAt": 1, "callId": "c", "cseq": 1, "q": null, '
         b'"instance": null, "regId": null, "transport": "udp", "source": "192.0.2.1", "flow": null, "node": "", '
         b'"userAgent": "", "registeredAt": 0}]}', lambda v: layout.decode_bindings("a@b", v)),
        (b'{"bindings": [{"contact": "sip:a@b", "expiresAt": 1, "callId": "c", "cseq": 1, "q": null, '
         b'"instance": null, "regId": null, "transport": "udp", "source": 5060, "flow": null, "node": "", '
         b'"userAgent": "", "registeredAt": 0}]}', lambda v: layout.decode_bindings("a@b", v)),
        (b'{"domain": "x"}', layout.decode_domain),
        (b'{"domain": "x", "username": "u", "authentication": "credentials", "ha1": {}, '
         b'"allowedAddresses": ["not a network"], "maxContacts": 1, "inbound": true, "outbound": true}',
         layout.decode_connection),
        (b'{"time": 1}', lambda v: layout.decode_failure("d", "u", v)),
        (b'{"node": "n"}', layout.decode_node),
    ],
)
def test_a_record_this_version_cannot_read_is_a_bad_record_not_a_crash(value, decode) -> None:
    with pytest.raises(layout.BadRecord):
        decode(value)


def test_failure_and_node_records_round_trip() -> None:
    failure = RegistrationFailure("sip.example.test", "alice", 1234.5, "wrong password", "udp:192.0.2.9:5060")
    assert layout.decode_failure("sip.example.test", "alice", layout.encode_failure(failure)) == failure
    node = layout.decode_node(layout.encode_node("pod-a", "10.0.0.5", 5060, 99.0))
    assert node == {"node": "pod-a", "address": "10.0.0.5", "sipPort": 5060, "started": 99.0}


def test_a_failure_names_its_node_and_request_and_a_node_its_api_and_domains_for_traces() -> None:
    failure = RegistrationFailure("sip.example.test", "alice", 1234.5, "wrong password", "udp:192.0.2.9:5060",
                                  node="pod-a", request="REGISTER sip:sip.example.test (CSeq 2 REGISTER, Call-ID c1)")
    assert layout.decode_failure("sip.example.test", "alice", layout.encode_failure(failure)) == failure
    node = layout.decode_node(layout.encode_node("pod-a", "10.0.0.5", 5060, 99.0, 8080, frozenset({"b.test", "a.test"})))
    assert node == {"node": "pod-a", "address": "10.0.0.5", "sipPort": 5060, "started": 99.0, "httpPort": 8080,
                    "domains": ["a.test", "b.test"]}


def test_a_domain_keeps_its_security_policy_through_etcd() -> None:
    security = SecurityPolicy(
        trusted_networks=(ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")),
        sources=SourceLimits(requests_per_second=7.0, burst=9, ban_after=3, ban_seconds=5, max_ban_seconds=50),
        lockout=LockoutPolicy(failures_per_source=2, failures_per_user=4, window_seconds=6, lockout_seconds=8,
                              max_lockout_seconds=80, failures_per_nonce=1),
        connections=ConnectionLimits(per_source=3, total=30, message_seconds=2.0, handshake_seconds=4.0),
        max_transactions=11,
    )
    domain = Domain("sip.example.test", security=security)
    assert layout.decode_domain(layout.encode_domain(domain)) == domain


def test_a_domain_keeps_its_keepalive_policy_and_a_failure_its_kind_through_etcd() -> None:
    domain = Domain("sip.example.test", keepalive=KeepalivePolicy(ping_interval=0, ping_failures=7,
                                                                  flow_timer_udp=15, flow_timer_stream=300))
    assert layout.decode_domain(layout.encode_domain(domain)) == domain
    failure = RegistrationFailure("sip.example.test", "bob", 1.5, "pings unanswered", "udp:192.0.2.9:4000",
                                  "unreachable")
    assert layout.decode_failure("sip.example.test", "bob", layout.encode_failure(failure)) == failure


def test_a_domain_written_before_security_existed_gets_the_defaults() -> None:
    record = json.loads(layout.encode_domain(Domain("sip.example.test")))
    del record["security"]
    assert layout.decode_domain(json.dumps(record).encode()).security == SecurityPolicy()
