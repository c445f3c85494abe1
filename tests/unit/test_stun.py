"""STUN Binding on the SIP port (RFC 5389): RFC 5769's test vectors, and what is dropped."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from registrar import stun
from registrar.stun import Verdict

# RFC 5769 2.1, "Sample request": SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY, FINGERPRINT.
RFC5769_REQUEST = bytes.fromhex("""
    0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
    8022 0010 5354554e 20746573 7420636c 69656e74
    0024 0004 6e0001ff
    8029 0008 932ff9b1 51263b36
    0006 0009 6576746a 3a683676 59202020
    0008 0014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
    8028 0004 e57a3bcf
""")
TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
# RFC 5769 2.2 and 2.3: XOR-MAPPED-ADDRESS values for 192.0.2.1:32853 and [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RFC5769_XOR_IPV4 = bytes.fromhex("0001a147e112a643")
RFC5769_XOR_IPV6 = bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")


def binding_request(transaction_id: bytes = TRANSACTION_ID, *, attributes: bytes = b"", fingerprint: bool = False,
                    kind: int = 0x0001) -> bytes:
    """A request as a UA's keep-alive sends it, built here byte by byte (not with the module under test)."""
    if not fingerprint:
        return struct.pack("!HHI12s", kind, len(attributes), 0x2112A442, transaction_id) + attributes
    head = struct.pack("!HHI12s", kind, len(attributes) + 8, 0x2112A442, transaction_id) + attributes
    return head + struct.pack("!HHI", 0x8028, 4, zlib.crc32(head) ^ 0x5354554E)


def test_the_rfc_5769_vectors_xor_the_address_with_the_cookie_and_transaction_id() -> None:
    assert stun.xor_mapped_address("192.0.2.1", 32853, TRANSACTION_ID) == RFC5769_XOR_IPV4
    assert stun.xor_mapped_address("2001:db8:1234:5678:11:2233:4455:6677", 32853, TRANSACTION_ID) == RFC5769_XOR_IPV6
    # An IPv4 peer seen through a dual-stack socket is answered as IPv4.
    assert stun.xor_mapped_address("::ffff:192.0.2.1", 32853, TRANSACTION_ID) == RFC5769_XOR_IPV4


def test_a_keepalive_gets_its_address_back_with_the_same_transaction_id() -> None:
    verdict, answer = stun.answer(binding_request(), "192.0.2.1", 32853)
    assert verdict is Verdict.ANSWERED
    assert answer == struct.pack("!HHI12s", 0x0101, 12, 0x2112A442, TRANSACTION_ID) + bytes.fromhex("00200008") \
        + RFC5769_XOR_IPV4


def test_a_fingerprinted_request_gets_a_fingerprinted_answer() -> None:
    verdict, answer = stun.answer(binding_request(fingerprint=True), "2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert verdict is Verdict.ANSWERED and answer is not None
    assert answer[:4] == struct.pack("!HH", 0x0101, 24 + 8)  # XOR-MAPPED-ADDRESS (IPv6), FINGERPRINT
    assert answer[24:44] == RFC5769_XOR_IPV6
    assert answer[-8:-4] == bytes.fromhex("80280004")
    assert struct.unpack("!I", answer[-4:])[0] == zlib.crc32(answer[:-8]) ^ 0x5354554E


def test_the_rfc_5769_request_is_valid_and_its_ice_priority_gets_420_unknown_attribute() -> None:
    # PRIORITY (0x0024) is comprehension-required and ICE's, not RFC 5389's: a server that is not an ICE
    # agent answers 420 naming it (RFC 5389 7.3.1). ICE-CONTROLLED (0x8029) is optional: ignored.
    verdict, answer = stun.answer(RFC5769_REQUEST, "192.0.2.1", 32853)
    assert verdict is Verdict.UNKNOWN_ATTRIBUTE and answer is not None
    kind, length, cookie, transaction_id = struct.unpack_from("!HHI12s", answer)
    assert (kind, cookie, transaction_id, length) == (0x0111, 0x2112A442, TRANSACTION_ID, len(answer) - 20)
    assert answer[20:24] == bytes.fromhex("00090015") and answer[26:28] == bytes([4, 20])  # ERROR-CODE 420
    assert answer[28:45] == b"Unknown Attribute"
    assert answer[48:54] == bytes.fromhex("000a00020024")  # UNKNOWN-ATTRIBUTES: PRIORITY
    assert struct.unpack("!I", answer[-4:])[0] == zlib.crc32(answer[:-8]) ^ 0x5354554E


def test_a_binding_indication_needs_no_answer() -> None:
    assert stun.answer(binding_request(kind=0x0011), "192.0.2.1", 5060) == (Verdict.INDICATION, None)


@pytest.mark.parametrize("datagram", [
    binding_request()[:19],  # shorter than a header: not even taken for STUN
    struct.pack("!HHI12s", 0x0001, 4, 0x2112A442, TRANSACTION_ID),  # says 4 bytes of attributes, has none
    struct.pack("!HHI12s", 0x0001, 2, 0x2112A442, TRANSACTION_ID) + b"\0\0",  # length not a multiple of 4
    binding_request(attributes=bytes.fromhex("80220008") + b"abcd"),  # an attribute running past the end
    binding_request(fingerprint=True)[:-1] + b"\0",  # a wrong FINGERPRINT
    binding_request(kind=0x0101),  # a response: nothing we asked
    binding_request(kind=0x0002),  # another method
], ids=["truncated", "length-past-end", "length-not-aligned", "attribute-past-end", "bad-fingerprint", "a-response",
        "another-method"])
def test_what_is_not_a_valid_binding_request_is_dropped(datagram: bytes) -> None:
    if len(datagram) < 20:
        assert not stun.looks_like_stun(datagram)
        return
    assert stun.answer(datagram, "192.0.2.1", 5060) == (Verdict.MALFORMED, None)


def test_stun_and_sip_are_told_apart_by_the_first_byte_and_the_cookie() -> None:
    assert stun.looks_like_stun(binding_request())
    assert not stun.looks_like_stun(b"REGISTER sip:sip.example.test SIP/2.0\r\n" + b"x" * 20)
    assert not stun.looks_like_stun(b"\r\n\r\n")
    assert not stun.looks_like_stun(b"\0" * 20)  # no magic cookie: RFC 3489 or noise


def test_random_bytes_behind_a_stun_header_never_raise() -> None:
    generator = random.Random(5389)
    for _ in range(3000):
        body = generator.randbytes(generator.choice([0, 4, 8, 12, 16, 24, 32, 64]))
        if generator.random() < 0.5 and len(body) >= 4:  # plausible attribute headers, lying lengths
            body = struct.pack("!HH", generator.choice([0x0020, 0x8028, 0x0006, 0x7FFF]),
                               generator.randrange(0, 80)) + body[4:]
        datagram = struct.pack("!HHI12s", 0x0001, len(body), 0x2112A442, generator.randbytes(12)) + body
        verdict, answer = stun.answer(datagram, "192.0.2.1", 5060)
        assert (answer is None) == (verdict in (Verdict.MALFORMED, Verdict.INDICATION))
