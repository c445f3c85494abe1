"""SIP transactions (RFC 3261 section 17, RFC 6026): the four state machines as data, and the layer that keeps them.

Pure, like the grammar below it: no sockets, no event loop. Time is passed
in; what a transaction wants done comes back as effects (send these bytes
there, pass this response up, this one timed out), which the caller carries
out. The transport and the proxy above it are the only callers.

The machines are one table, `TRANSITIONS`, keyed by (kind, state, event): the
next state and the actions, exactly the figures of RFC 3261 17.1 and 17.2 with
RFC 6026's Accepted state. An event the table has no entry for is absorbed.
Timers A to M are events like any other; a timer is armed or disarmed by an
action, and fires when the caller's clock passes it (`TransactionLayer.advance`).

What a finished transaction still has to do (answer a retransmitted request
with the same bytes, ACK a retransmitted failure, pass a retransmitted 2xx up)
needs no live object: it is kept "retired", as a flat tuple of strings, bytes
and numbers, which the cyclic garbage collector leaves alone. Kept as objects,
30 s of calls made full collections last a second (measured).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from operator import itemgetter
from typing import Any, NamedTuple

from registrar.sip.headers import MAGIC_COOKIE, Via
from registrar.sip.message import Request, Response
from registrar.sip.source import Destination

T1 = 0.5  # the round-trip estimate
T2 = 4.0  # the longest interval between retransmissions of a non-INVITE request or a final response
T4 = 5.0  # how long a message may stay in the network
TIMEOUT = 64 * T1  # Timers B, F, H, J (unreliable), L, M: 32 s
# Beyond this many retired transactions the oldest are forgotten first: memory stays
# bounded however fast requests come (a forgotten one's retransmission is handled as new).
MAX_RETAINED = 200_000
EXPIRE_EVERY = 64  # retirements between two sweeps of what has expired
TICKS_PER_SECOND = 64  # timers fire at most 1/64 s late: a power of two, so that ticks are exact

DEFAULT_MAX_FORWARDS = 70  # RFC 3261 8.1.1.6

TransactionKey = tuple[str, ...]

# -- the machines -------------------------------------------------------------------------------

# Kinds.
INVITE_CLIENT = "INVITE client"
NON_INVITE_CLIENT = "non-INVITE client"
INVITE_SERVER = "INVITE server"
NON_INVITE_SERVER = "non-INVITE server"

# States.
CALLING = "Calling"
TRYING = "Trying"
PROCEEDING = "Proceeding"
COMPLETED = "Completed"
CONFIRMED = "Confirmed"
ACCEPTED = "Accepted"  # RFC 6026: after a 2xx, which the TU (not the transaction) repeats
TERMINATED = "Terminated"

# Events: what the TU hands down (server), what the network brings, and the timers.
REQUEST = "request"  # the request again (a retransmission)
ACK = "ACK"
SEND_1XX = "send 1xx"
SEND_2XX = "send 2xx"
SEND_FAILURE = "send 3xx-6xx"
GOT_1XX = "1xx"
GOT_2XX = "2xx"
GOT_FAILURE = "3xx-6xx"
TRANSPORT_ERROR = "transport error"
TIMER = {name: f"Timer {name}" for name in "ABDEFGHIJKLM"}

# Actions. Those on a timer are pairs: ("arm", "G").
SEND = "send"  # the message the TU handed down
RESEND_REQUEST = "resend the request"
RESEND_RESPONSE = "resend the last response"
SEND_ACK = "ACK the failure"  # hop by hop, built once (RFC 3261 17.1.1.3)
PASS_UP = "pass up"  # to the TU
TIMED_OUT = "tell the TU: timed out"
UNSENDABLE = "tell the TU: transport error"
ARM = "arm"  # a timer, its first interval
BACK_OFF = "back off"  # a retransmission timer again, at twice its interval (A: unbounded; E, G: at most T2)
EVERY_T2 = "every T2"  # Timer E again once the request is Proceeding (RFC 3261 17.1.2.2)
DISARM = "disarm"


def _arm(*timers: str) -> tuple[tuple[str, str], ...]:
    return tuple((ARM, timer) for timer in timers)


def _disarm(*timers: str) -> tuple[tuple[str, str], ...]:
    return tuple((DISARM, timer) for timer in timers)


_T = TIMER
TRANSITIONS: dict[tuple[str, str, str], tuple[str, tuple[Any, ...]]] = {
    # RFC 3261 17.1.1, figure 5, with RFC 6026 figure 3: the INVITE client transaction.
    (INVITE_CLIENT, CALLING, _T["A"]): (CALLING, (RESEND_REQUEST, (BACK_OFF, "A"))),
    (INVITE_CLIENT, CALLING, _T["B"]): (TERMINATED, (TIMED_OUT,)),
    (INVITE_CLIENT, CALLING, GOT_1XX): (PROCEEDING, (*_disarm("A", "B"), PASS_UP)),
    (INVITE_CLIENT, CALLING, GOT_2XX): (ACCEPTED, (*_disarm("A", "B"), PASS_UP, *_arm("M"))),
    (INVITE_CLIENT, CALLING, GOT_FAILURE): (COMPLETED, (*_disarm("A", "B"), SEND_ACK, PASS_UP, *_arm("D"))),
    (INVITE_CLIENT, CALLING, TRANSPORT_ERROR): (TERMINATED, (UNSENDABLE,)),
    (INVITE_CLIENT, PROCEEDING, GOT_1XX): (PROCEEDING, (PASS_UP,)),
    (INVITE_CLIENT, PROCEEDING, GOT_2XX): (ACCEPTED, (PASS_UP, *_arm("M"))),
    (INVITE_CLIENT, PROCEEDING, GOT_FAILURE): (COMPLETED, (SEND_ACK, PASS_UP, *_arm("D"))),
    (INVITE_CLIENT, PROCEEDING, TRANSPORT_ERROR): (TERMINATED, (UNSENDABLE,)),
    (INVITE_CLIENT, COMPLETED, GOT_FAILURE): (COMPLETED, (SEND_ACK,)),
    (INVITE_CLIENT, COMPLETED, _T["D"]): (TERMINATED, ()),
    (INVITE_CLIENT, ACCEPTED, GOT_2XX): (ACCEPTED, (PASS_UP,)),  # another fork's 2xx, or a retransmission
    (INVITE_CLIENT, ACCEPTED, _T["M"]): (TERMINATED, ()),
    # RFC 3261 17.1.2, figure 6: the non-INVITE client transaction.
    (NON_INVITE_CLIENT, TRYING, _T["E"]): (TRYING, (RESEND_REQUEST, (BACK_OFF, "E"))),
    (NON_INVITE_CLIENT, TRYING, _T["F"]): (TERMINATED, (TIMED_OUT,)),
    (NON_INVITE_CLIENT, TRYING, GOT_1XX): (PROCEEDING, (PASS_UP,)),
    (NON_INVITE_CLIENT, TRYING, GOT_2XX): (COMPLETED, (*_disarm("E", "F"), PASS_UP, *_arm("K"))),
    (NON_INVITE_CLIENT, TRYING, GOT_FAILURE): (COMPLETED, (*_disarm("E", "F"), PASS_UP, *_arm("K"))),
    (NON_INVITE_CLIENT, TRYING, TRANSPORT_ERROR): (TERMINATED, (UNSENDABLE,)),
    (NON_INVITE_CLIENT, PROCEEDING, _T["E"]): (PROCEEDING, (RESEND_REQUEST, (EVERY_T2, "E"))),
    (NON_INVITE_CLIENT, PROCEEDING, _T["F"]): (TERMINATED, (TIMED_OUT,)),
    (NON_INVITE_CLIENT, PROCEEDING, GOT_1XX): (PROCEEDING, (PASS_UP,)),
    (NON_INVITE_CLIENT, PROCEEDING, GOT_2XX): (COMPLETED, (*_disarm("E", "F"), PASS_UP, *_arm("K"))),
    (NON_INVITE_CLIENT, PROCEEDING, GOT_FAILURE): (COMPLETED, (*_disarm("E", "F"), PASS_UP, *_arm("K"))),
    (NON_INVITE_CLIENT, PROCEEDING, TRANSPORT_ERROR): (TERMINATED, (UNSENDABLE,)),
    (NON_INVITE_CLIENT, COMPLETED, _T["K"]): (TERMINATED, ()),
    # RFC 3261 17.2.1, figure 7, with RFC 6026 figure 5: the INVITE server transaction.
    (INVITE_SERVER, PROCEEDING, REQUEST): (PROCEEDING, (RESEND_RESPONSE,)),
    (INVITE_SERVER, PROCEEDING, SEND_1XX): (PROCEEDING, (SEND,)),
    (INVITE_SERVER, PROCEEDING, SEND_2XX): (ACCEPTED, (SEND, *_arm("L"))),
    (INVITE_SERVER, PROCEEDING, SEND_FAILURE): (COMPLETED, (SEND, *_arm("G", "H"))),
    (INVITE_SERVER, PROCEEDING, TRANSPORT_ERROR): (TERMINATED, (UNSENDABLE,)),
    (INVITE_SERVER, COMPLETED, REQUEST): (COMPLETED, (RESEND_RESPONSE,)),
    (INVITE_SERVER, COMPLETED, _T["G"]): (COMPLETED, (RESEND_RESPONSE, (BACK_OFF, "G"))),
    (INVITE_SERVER, COMPLETED, ACK): (CONFIRMED, (*_disarm("G", "H"), *_arm("I"))),
    (INVITE_SERVER, COMPLETED, _T["H"]): (TERMINATED, (TIMED_OUT,)),
    (INVITE_SERVER, COMPLETED, TRANSPORT_ERROR): (TERMINATED, (UNSENDABLE,)),
    (INVITE_SERVER, CONFIRMED, _T["I"]): (TERMINATED, ()),
    # RFC 6026 passes a retransmitted INVITE to the TU; every TU of ours answers it with the 2xx it sent.
    (INVITE_SERVER, ACCEPTED, REQUEST): (ACCEPTED, (RESEND_RESPONSE,)),
    (INVITE_SERVER, ACCEPTED, SEND_2XX): (ACCEPTED, (SEND,)),
    (INVITE_SERVER, ACCEPTED, _T["L"]): (TERMINATED, ()),
    # RFC 3261 17.2.2, figure 8: the non-INVITE server transaction.
    (NON_INVITE_SERVER, TRYING, SEND_1XX): (PROCEEDING, (SEND,)),
    (NON_INVITE_SERVER, TRYING, SEND_2XX): (COMPLETED, (SEND, *_arm("J"))),
    (NON_INVITE_SERVER, TRYING, SEND_FAILURE): (COMPLETED, (SEND, *_arm("J"))),
    (NON_INVITE_SERVER, PROCEEDING, REQUEST): (PROCEEDING, (RESEND_RESPONSE,)),
    (NON_INVITE_SERVER, PROCEEDING, SEND_1XX): (PROCEEDING, (SEND,)),
    (NON_INVITE_SERVER, PROCEEDING, SEND_2XX): (COMPLETED, (SEND, *_arm("J"))),
    (NON_INVITE_SERVER, PROCEEDING, SEND_FAILURE): (COMPLETED, (SEND, *_arm("J"))),
    (NON_INVITE_SERVER, PROCEEDING, TRANSPORT_ERROR): (TERMINATED, (UNSENDABLE,)),
    (NON_INVITE_SERVER, COMPLETED, REQUEST): (COMPLETED, (RESEND_RESPONSE,)),
    (NON_INVITE_SERVER, COMPLETED, _T["J"]): (TERMINATED, ()),
}

INITIAL_STATE = {INVITE_CLIENT: CALLING, NON_INVITE_CLIENT: TRYING, INVITE_SERVER: PROCEEDING,
                 NON_INVITE_SERVER: TRYING}
# A server transaction in these states has sent no final response: its request is in flight.
UNANSWERED = frozenset({TRYING, PROCEEDING})
# The timers a client arms when it first sends (RFC 3261 17.1.1.2, 17.1.2.2).
FIRST_TIMERS = {INVITE_CLIENT: ("A", "B"), NON_INVITE_CLIENT: ("E", "F")}
# Retransmission timers run on unreliable transports only.
RETRANSMISSION_TIMERS = frozenset("AEG")
_BACK_OFF_CAP = {"A": float("inf"), "E": T2, "G": T2}
# The other timers' durations: over UDP, and over TCP/TLS (where there is nothing to absorb: 0).
_DURATION = {"B": (TIMEOUT, TIMEOUT), "D": (32.0, 0.0), "F": (TIMEOUT, TIMEOUT), "H": (TIMEOUT, TIMEOUT),
             "I": (T4, 0.0), "J": (TIMEOUT, 0.0), "K": (T4, 0.0), "L": (TIMEOUT, TIMEOUT), "M": (TIMEOUT, TIMEOUT)}
# A transaction in one of these states, with no retransmission timer running, has only
# retransmissions left to absorb until its last timer: it is kept retired.
_RETIRABLE = frozenset({(NON_INVITE_SERVER, COMPLETED), (INVITE_SERVER, CONFIRMED), (INVITE_SERVER, ACCEPTED),
                        (INVITE_CLIENT, COMPLETED), (INVITE_CLIENT, ACCEPTED), (NON_INVITE_CLIENT, COMPLETED)})


def server_event(status: int) -> str:
    """The event of the TU handing a response of `status` down to a server transaction."""
    return SEND_1XX if status < 200 else SEND_2XX if status < 300 else SEND_FAILURE


def client_event(status: int) -> str:
    """The event of a response of `status` reaching a client transaction."""
    return GOT_1XX if status < 200 else GOT_2XX if status < 300 else GOT_FAILURE


# -- what the caller carries out ------------------------------------------------------------------


class Send(NamedTuple):
    destination: Destination
    data: bytes
    transaction: Transaction | None = None  # told when it cannot be sent (`TransactionLayer.unsendable`)


class PassUp(NamedTuple):
    """A response for the TU: `owner` is what the TU gave the client transaction (None once it retired:
    then only a 2xx comes, to go to `upstream`)."""

    owner: Any
    response: Response
    upstream: Destination | None


class TimedOut(NamedTuple):
    """A transaction gave up (Timers B, F, H, or a transport error), or a TU timer of `owner` fired."""

    owner: Any
    timer: str  # "B", "F", "H", "transport", or the TU's own timer's name


Effect = Send | PassUp | TimedOut


class Transaction:
    """One transaction, live: its machine's state, what it resends, its timers."""

    __slots__ = ("kind", "key", "state", "is_server", "destination", "upstream", "reliable", "request", "sent", "ack",
                 "owner", "interval", "due", "retire_at")

    def __init__(self, kind: str, key: TransactionKey, destination: Destination, owner: Any,
                 request: Request | None = None, sent: bytes | None = None, upstream: Destination | None = None):
        self.kind = kind
        self.key = key
        self.state = INITIAL_STATE[kind]
        self.is_server = kind is INVITE_SERVER or kind is NON_INVITE_SERVER
        self.destination = destination  # where it sends: the UA downstream (client), the peer upstream (server)
        self.upstream = upstream  # a proxy's client: where the 2xx it passes up go, kept after it retires
        self.reliable = destination.transport != "udp"
        self.request = request  # a client's request (its ACK is built from it)
        self.sent = sent  # what a retransmission resends: a client's request, a server's last response
        self.ack: bytes | None = None
        self.owner = owner  # the TU's, given back with what is passed up
        self.interval = T1  # the retransmission timer's current interval
        # Armed timers: when each fires. None until one is: a REGISTER's transaction never
        # needs one, and every container allocated brings the collector's next pass nearer.
        self.due: dict[str, float] | None = None
        self.retire_at: float | None = None  # the end of its last timer, which it waits out retired


class TransactionLayer:
    """Every transaction of a node, server and client, live and retired; timers on the caller's clock.

    Server transactions are found by the key of RFC 3261 17.2.3 (`transaction_key`),
    client ones by (branch, method) of the response (17.1.3).
    """

    def __init__(self, max_retained: int = MAX_RETAINED):
        self.servers: dict[TransactionKey, Transaction] = {}
        self.clients: dict[TransactionKey, Transaction] = {}
        # Retired: (expires at, kind, state, bytes to resend (server) or the ACK (client),
        # destination's 4 fields, and a client's upstream's 4 fields). Insertion order is
        # nearly expiry order (lifetimes are 5 s or 32 s); lookups check the expiry.
        self.answered: OrderedDict[TransactionKey, tuple] = OrderedDict()
        self.finished: OrderedDict[TransactionKey, tuple] = OrderedDict()
        self._max_retained = max_retained
        self._retired = 0  # transactions retired so far
        self._timers = TimerWheel()

    # -- server side ------------------------------------------------------------------------
    def receive_request(self, key: TransactionKey, method: str, now: float) -> list[Effect] | None:
        """A request matching a transaction: its effects (often none: absorbed). None: it matches none."""
        event = ACK if method == "ACK" else REQUEST
        transaction = self.servers.get(key)
        if transaction is not None:
            return self._handle(transaction, event, now)
        retired = self.answered.get(key)
        if retired is None or retired[0] <= now:
            return None
        expires_at, kind, state, sent, transport, host, port, flow = retired
        _, actions = TRANSITIONS.get((kind, state, event), (state, ()))
        if RESEND_RESPONSE in actions:
            return [Send(Destination(transport, host, port, flow), sent)]
        return []  # absorbed; PASS_UP of an ACK to a 2xx needs no TU once it is over

    def begin_server(self, key: TransactionKey, method: str, upstream: Destination, owner: Any = None) -> Transaction:
        """A server transaction for a new request from `upstream`."""
        transaction = Transaction(INVITE_SERVER if method == "INVITE" else NON_INVITE_SERVER, key, upstream, owner)
        self.servers[key] = transaction
        return transaction

    def respond(self, transaction: Transaction, status: int, data: bytes, now: float) -> list[Effect]:
        """The TU answers: what to send, and the machine moves on."""
        return self._handle(transaction, server_event(status), now, data)

    def unanswered(self) -> int:
        """Server transactions with no final response yet: the requests in flight."""
        return sum(1 for transaction in self.servers.values() if transaction.state in UNANSWERED)

    def state_of(self, key: TransactionKey, now: float) -> str | None:
        """The state of the INVITE server transaction `key`, live or retired; None when there is none."""
        transaction = self.servers.get(key)
        if transaction is not None:
            return transaction.state
        retired = self.answered.get(key)
        return retired[2] if retired is not None and retired[0] > now else None

    # -- client side ------------------------------------------------------------------------
    def begin_client(self, key: TransactionKey, request: Request, destination: Destination, owner: Any, now: float,
                     upstream: Destination | None = None) -> tuple[Transaction, list[Effect]]:
        """A client transaction sending `request` to `destination`: the transaction, and its first send."""
        kind = INVITE_CLIENT if request.method == "INVITE" else NON_INVITE_CLIENT
        data = request.to_bytes()
        transaction = Transaction(kind, key, destination, owner, request, data, upstream)
        self.clients[key] = transaction
        for timer in FIRST_TIMERS[kind]:
            self._timer_action(transaction, (ARM, timer), now)
        return transaction, [Send(destination, data, transaction)]

    def receive_response(self, key: TransactionKey, response: Response, now: float) -> list[Effect] | None:
        """A response for client transaction `key`: its effects; None when it matches none."""
        event = client_event(response.status)
        transaction = self.clients.get(key)
        if transaction is not None:
            return self._handle(transaction, event, now, response=response)
        retired = self.finished.get(key)
        if retired is None or retired[0] <= now:
            return None
        kind, state, ack = retired[1:4]
        _, actions = TRANSITIONS.get((kind, state, event), (state, ()))
        effects: list[Effect] = []
        if SEND_ACK in actions and ack is not None:
            effects.append(Send(Destination(*retired[4:8]), ack))  # the callee missed our ACK: once more
        if PASS_UP in actions and retired[8] is not None:
            effects.append(PassUp(None, response, Destination(*retired[8:12])))
        return effects

    def unsendable(self, transaction: Transaction, now: float) -> list[Effect]:
        """The transport could not send for `transaction` (RFC 3261 17.1.4, 17.2.4)."""
        return self._handle(transaction, TRANSPORT_ERROR, now)

    # -- both ---------------------------------------------------------------------------------
    def set_timer(self, transaction: Transaction, name: str, when: float) -> None:
        """A timer of the TU's own (a proxy's Timer C) on `transaction`: TimedOut(owner, name) at `when`."""
        due = transaction.due
        if due is None:
            due = transaction.due = {}
        elif name in due:
            self._timers.discard(transaction, name, due[name])
        due[name] = when
        self._timers.add(transaction, name, when)

    def clear_timer(self, transaction: Transaction, name: str) -> None:
        due = transaction.due
        if due:
            when = due.pop(name, None)
            if when is not None:
                self._timers.discard(transaction, name, when)

    def forget(self, transaction: Transaction) -> None:
        """Drop a transaction without a trace (its request answered statelessly, or its TU gone)."""
        table = self.servers if transaction.is_server else self.clients
        if table.get(transaction.key) is transaction:
            del table[transaction.key]
        if transaction.due:
            for name, when in transaction.due.items():
                self._timers.discard(transaction, name, when)
        transaction.due = None
        transaction.owner = None

    def next_deadline(self) -> float | None:
        """When `advance` has something to do next: within a tick (1/TICKS_PER_SECOND) after the earliest timer."""
        return self._timers.next_deadline()

    def advance(self, now: float) -> list[Effect]:
        """Fire every timer due by `now`."""
        effects: list[Effect] = []
        for transaction, name, when in self._timers.due(now):
            due = transaction.due
            if due is None or due.get(name) != when:
                continue  # disarmed by a timer fired just before it
            del due[name]
            if name in _T:
                effects += self._handle(transaction, _T[name], now)
            else:
                effects.append(TimedOut(transaction.owner, name))
        self._expire(now)
        return effects

    # -- the machine ------------------------------------------------------------------------
    def _handle(self, transaction: Transaction, event: str, now: float, data: bytes | None = None,
                response: Response | None = None) -> list[Effect]:
        transition = TRANSITIONS.get((transaction.kind, transaction.state, event))
        if transition is None:
            return []  # absorbed
        transaction.state, actions = transition
        effects: list[Effect] = []
        for action in actions:
            if action.__class__ is tuple:
                self._timer_action(transaction, action, now)
            elif action == SEND:
                assert data is not None
                transaction.sent = data
                effects.append(Send(transaction.destination, data, transaction))
            elif action == RESEND_REQUEST or action == RESEND_RESPONSE:
                if transaction.sent is not None:
                    effects.append(Send(transaction.destination, transaction.sent, transaction))
            elif action == SEND_ACK:
                assert response is not None and transaction.request is not None
                if transaction.ack is None:
                    transaction.ack = ack_for(transaction.request, response).to_bytes()
                effects.append(Send(transaction.destination, transaction.ack, transaction))
            elif action == PASS_UP:
                assert response is not None
                effects.append(PassUp(transaction.owner, response, transaction.upstream))
            elif action == TIMED_OUT or action == UNSENDABLE:
                effects.append(TimedOut(transaction.owner, event[-1] if action == TIMED_OUT else "transport"))
        self._settle(transaction, now)
        return effects

    def _timer_action(self, transaction: Transaction, action: tuple[str, str], now: float) -> None:
        verb, timer = action
        if verb == DISARM:
            self.clear_timer(transaction, timer)
            return
        if timer in RETRANSMISSION_TIMERS:
            if transaction.reliable:
                return
            if verb == ARM:
                transaction.interval = T1
            elif verb == BACK_OFF:
                transaction.interval = min(transaction.interval * 2, _BACK_OFF_CAP[timer])
            else:  # EVERY_T2
                transaction.interval = T2
            self.set_timer(transaction, timer, now + transaction.interval)
            return
        duration = _DURATION[timer][transaction.reliable]
        if (transaction.kind, transaction.state) in _RETIRABLE:
            transaction.retire_at = now + duration  # no event-loop timer: the retired entry's expiry
        else:
            self.set_timer(transaction, timer, now + duration)

    def _settle(self, transaction: Transaction, now: float) -> None:
        """After a transition: a transaction Terminated goes; one with only absorbing left retires."""
        state = transaction.state
        if state != TERMINATED:
            due = transaction.due
            if (transaction.kind, state) not in _RETIRABLE or (due and not RETRANSMISSION_TIMERS.isdisjoint(due)):
                return
            # Its last timer is its lifetime; zero (TCP, TLS): nothing to absorb, so nothing kept.
            if transaction.retire_at is not None and transaction.retire_at > now:
                self._retire(transaction, transaction.retire_at, now)
        self.forget(transaction)

    def _retire(self, transaction: Transaction, expires_at: float, now: float) -> None:
        destination = transaction.destination
        key = transaction.key
        if transaction.is_server:
            table = self.answered
            if key in table:
                del table[key]  # retired before (a further 2xx through an Accepted one): moved to the end
            table[key] = (expires_at, transaction.kind, transaction.state, transaction.sent, *destination)
        else:
            upstream = transaction.upstream
            table = self.finished
            table[key] = (expires_at, transaction.kind, transaction.state, transaction.ack,
                                      *destination, *(upstream if upstream is not None else (None,) * 4))
        if len(table) > self._max_retained:
            table.popitem(last=False)  # the oldest, expired or not: memory stays bounded
        # What expired goes every EXPIRE_EVERY retirements, not on each: lookups check the expiry themselves.
        self._retired += 1
        if self._retired % EXPIRE_EVERY == 0:
            self._expire(now)

    def _expire(self, now: float) -> None:
        for table in (self.answered, self.finished):
            while table and next(iter(table.values()))[0] <= now:
                table.popitem(last=False)


class TimerWheel:
    """Armed timers in buckets of 1/TICKS_PER_SECOND: arming and disarming cost a dict operation each.

    Most timers never fire (a 100 Trying stops Timer A, a final answer Timers
    B and C), and a call through the proxy arms five: a heap would pay a push
    for each and keep the disarmed ones until they come up. Buckets also bound
    the event loop's wake-ups to one per tick however many timers there are, as
    Kamailio's timer ticks do.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, dict[tuple[Transaction, str], float]] = {}
        self._ticks: list[int] = []  # a heap of the buckets' numbers, each once

    def add(self, transaction: Transaction, name: str, when: float) -> None:
        tick = int(when * TICKS_PER_SECOND)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
        bucket[(transaction, name)] = when

    def discard(self, transaction: Transaction, name: str, when: float) -> None:
        bucket = self._buckets.get(int(when * TICKS_PER_SECOND))
        if bucket is not None:
            bucket.pop((transaction, name), None)

    def next_deadline(self) -> float | None:
        """The end of the earliest bucket that has a timer left."""
        ticks, buckets = self._ticks, self._buckets
        while ticks and not buckets[ticks[0]]:
            del buckets[heapq.heappop(ticks)]  # every timer in it was disarmed: no wake-up for it
        return (ticks[0] + 1) / TICKS_PER_SECOND if ticks else None

    def due(self, now: float) -> list[tuple[Transaction, str, float]]:
        """Take out the timers due by `now`, earliest first."""
        ticks, buckets = self._ticks, self._buckets
        current = int(now * TICKS_PER_SECOND)
        fired: list[tuple[Transaction, str, float]] = []
        while ticks and ticks[0] <= current:
            bucket = buckets[ticks[0]]
            if ticks[0] < current:
                del buckets[heapq.heappop(ticks)]
                fired += [(transaction, name, when) for (transaction, name), when in bucket.items()]
                continue
            for (transaction, name), when in list(bucket.items()):  # the current tick: only what is due
                if when <= now:
                    del bucket[(transaction, name)]
                    fired.append((transaction, name, when))
            break
        fired.sort(key=itemgetter(2))
        return fired


# -- matching and the ACK -----------------------------------------------------------------------


def transaction_key(request: Request, via: Via | None = None) -> TransactionKey:
    """The key that matches a request to its server transaction (RFC 3261 17.2.3).

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


def ack_for(request: Request, response: Response) -> Request:
    """The ACK a client transaction sends for a failure to its INVITE (RFC 3261 17.1.1.3): the response's To."""
    return in_its_transaction(request, "ACK", response.get("To") or request.get("To") or "")


def in_its_transaction(request: Request, method: str, to: str) -> Request:
    """An ACK or CANCEL of a sent INVITE: its Request-URI, top Via, Route, From, Call-ID and CSeq number."""
    number, _ = request.cseq
    headers = [("Via", request.get_all("Via")[0])]
    headers += [(name, value) for name, value in request.headers if name in ("Route", "From", "Call-ID")]
    headers += [("To", to), ("CSeq", f"{number} {method}"), ("Max-Forwards", str(DEFAULT_MAX_FORWARDS))]
    return Request(headers=headers, method=method, uri=request.uri)
