"""Server transactions (RFC 3261 section 17.2): retransmitted requests get the answer already given.

Pure state, no timers of its own: the caller passes the time in. Over UDP a UA
retransmits a request until it hears a final response; a retransmission that
arrives while we are still working on the original must be absorbed, and one
that arrives after we answered must get the very same response bytes back,
never a second processing (a second REGISTER would see its own CSeq as stale).
Over TCP/TLS the UA does not retransmit, but looking up costs little and keeps
one code path.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from registrar.sip.headers import Via
from registrar.sip.message import Request

# RFC 3261 17.2.2: a non-INVITE server transaction stays Completed for Timer J =
# 64*T1 = 32 s over UDP, to answer retransmissions. INVITE's Timer H is the same.
T1 = 0.5
T2 = 4.0  # the longest interval between retransmissions of a non-INVITE request or a final response
COMPLETED_LIFETIME = 64 * T1
# Bounds memory under a flood: beyond this many live transactions the oldest are
# forgotten first (a forgotten one just gets processed again if retransmitted).
MAX_TRANSACTIONS = 200_000

MAGIC_COOKIE = "z9hG4bK"

TransactionKey = tuple[str, ...]
Lookup = Literal["new", "in-progress"] | bytes


def transaction_key(request: Request, via: Via | None = None) -> TransactionKey:
    """The key that matches a request to its transaction (RFC 3261 17.2.3).

    `via` is the request's parsed top Via, when the caller has it already.
    ACK matches the INVITE transaction it acknowledges; CANCEL has its own.
    Requests from RFC 2543 peers (no magic cookie) fall back to the older
    Call-ID/CSeq/From-tag/Via matching. Raises SipError for a malformed Via.
    """
    if via is None:
        via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    sent_by = f"{via.host}:{via.port or ''}"
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return (branch, sent_by, method)
    cseq_number = (request.get("CSeq") or "").split(" ", 1)[0]
    from_tag = request.name_addr("From").tag or ""
    return (request.call_id, cseq_number, from_tag, str(via), request.uri, method)


class ServerTransactions:
    """Remembers requests being processed and the responses sent, for a while."""

    def __init__(self, completed_lifetime: float = COMPLETED_LIFETIME, max_size: int = MAX_TRANSACTIONS):
        self._lifetime = completed_lifetime
        self._max = max_size
        # key -> (expires_at, response bytes or None while in progress). Insertion
        # order is expiry order, because every entry lives the same time.
        self._entries: OrderedDict[TransactionKey, tuple[float, bytes | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: TransactionKey, now: float) -> Lookup:
        """"new" for a request never seen; "in-progress" to absorb; else the bytes to resend."""
        self.expire(now)
        entry = self._entries.get(key)
        if entry is None:
            return "new"
        return entry[1] if entry[1] is not None else "in-progress"

    def begin(self, key: TransactionKey, now: float) -> None:
        self._store(key, now, None)

    def complete(self, key: TransactionKey, response: bytes, now: float) -> None:
        """Record the final response, to be resent to retransmissions."""
        self._store(key, now, response)

    def expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (expires_at, _) = next(iter(entries.items()))
            if expires_at > now:
                break
            del entries[key]

    def _store(self, key: TransactionKey, now: float, response: bytes | None) -> None:
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (now + self._lifetime, response)
        while len(entries) > self._max:
            entries.popitem(last=False)
