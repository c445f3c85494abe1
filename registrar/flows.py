"""Flow references and the signed route tokens that carry them (RFC 5626 section 5.2 flow tokens).

A `FlowRef` says how to reach one UA: the registrar node holding its
connection, the transport, the address the UA's packets came from, and, on
TCP/TLS/WS/WSS, the connection's id on that node. A binding yields one (`of_binding`).

The proxy writes refs into the user part of its Record-Route (both parties of
a dialog) and of the Route it pushes when it hands a request to another node
(the one flow to send it down). Tokens are signed with the cluster's shared
secret: a token is how a node knows a Route is one of ours, and nobody else can
make one that sends a request down somebody's connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import NamedTuple

from registrar.model import Binding
from registrar.sip.source import STREAM_TRANSPORTS

_MAC_BYTES = 9
DIALOG = "d"  # a Record-Route token: caller and callee
HOP = "h"  # a hop between nodes: the one flow to use


class FlowRef(NamedTuple):
    node: str
    transport: str
    host: str
    port: int
    flow: str = ""  # the connection's id on `node` (TCP/TLS); "" on UDP

    @property
    def stream(self) -> bool:
        return self.transport in STREAM_TRANSPORTS


def of_binding(binding: Binding) -> FlowRef | None:
    """How to reach the UA of a binding: the packet source it registered from, and its flow; None for no source."""
    if not binding.source_host:
        return None
    return FlowRef(binding.node, binding.transport, binding.source_host, binding.source_port, binding.flow or "")


class RouteToken(NamedTuple):
    kind: str  # DIALOG or HOP
    refs: tuple[FlowRef | None, ...]  # DIALOG: (caller, callee); HOP: (flow,). None: route by Request-URI


class TokenSigner:
    """Signs and reads route tokens with the secret the cluster's nodes share."""

    def __init__(self, secret: bytes):
        self._key = hashlib.sha256(b"sipreg route token\0" + secret).digest()

    def token(self, kind: str, refs: tuple[FlowRef | None, ...]) -> str:
        payload = "~".join([kind, *(_ref_text(ref) for ref in refs)]).encode("utf-8")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def read(self, text: str | None) -> RouteToken | None:
        """The token in a Route's user part; None when there is none or it is not ours."""
        if not text or "." not in text:
            return None
        payload_text, _, mac_text = text.partition(".")
        try:
            payload = _unb64(payload_text)
            mac = _unb64(mac_text)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        kind, *ref_texts = payload.decode("utf-8", "replace").split("~")
        try:
            refs = tuple(_ref(text) for text in ref_texts)
        except ValueError:
            return None
        if (kind, len(refs)) not in ((DIALOG, 2), (HOP, 1)):
            return None
        return RouteToken(kind, refs)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _ref_text(ref: FlowRef | None) -> str:
    if ref is None:
        return ""
    return "|".join([ref.node, ref.transport, ref.host, str(ref.port), ref.flow])


def _ref(text: str) -> FlowRef | None:
    if not text:
        return None
    node, transport, host, port, flow = text.split("|")
    return FlowRef(node, transport, host, int(port), flow)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
