"""A SipConnection's and a SipDomain's status, computed from bindings and failures, and when it is worth a patch.

Pure functions over registrar.model values: the etcd follower feeds them, the
handlers patch what they return. Times are Unix seconds in, RFC 3339 out.

Patch on change, not on every refresh. A UA refreshes its registration every
few minutes, which moves only its contacts' `expiresAt` and the connection's
`lastRegistered`; patching each refresh would cost the API server one write
per UA per refresh interval. So those two fields are "refresh-only": a status
that differs from the last patched one only in them is not patched, until a
contact's shown `expiresAt` has passed (otherwise `kubectl get -o yaml` would
show a live contact as expired). Everything else (registered or not, the
contact set, a transport, a source address after NAT rebinding, a new
failure, a condition) is patched at once. A steady UA thus costs one patch per
registration lifetime, not one per refresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from registrar.model import Binding
from registrar.store import CONTACT_UNREACHABLE, RegistrationFailure
from registrar.times import rfc3339, unix_seconds

# Condition reasons a user reads in `kubectl describe`.
REGISTERED = "Registered"
NOT_REGISTERED = "NotRegistered"
REGISTRATION_FAILED = "RegistrationFailed"
REGISTRATION_DISABLED = "RegistrationDisabled"
CONTACT_UNREACHABLE_REASON = "ContactUnreachable"
PUBLISHED = "Published"


def contact_status(binding: Binding) -> dict[str, Any]:
    return {
        "uri": binding.contact,
        "transport": binding.transport,
        "source": binding.source,
        "expires": max(0, round(binding.expires_at - binding.registered_at)),
        "expiresAt": rfc3339(binding.expires_at),
        "userAgent": binding.user_agent,
        "node": binding.node,
    }


def condition(
    type_: str, status: bool, reason: str, message: str, generation: int, previous: Sequence[dict[str, Any]], now: float
) -> dict[str, Any]:
    """A Kubernetes-style condition; lastTransitionTime moves only when status flips."""
    value = "True" if status else "False"
    since = rfc3339(now)
    for old in previous:
        if old.get("type") == type_ and old.get("status") == value and old.get("lastTransitionTime"):
            since = old["lastTransitionTime"]
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def trace_command(failure: RegistrationFailure) -> str:
    return f"sipreg trace {failure.username}@{failure.domain}"


def failure_trace(failure: RegistrationFailure) -> dict[str, str]:
    """Where a failure's request can be read again: the replica, the request, and the command that prints it."""
    found = {"node": failure.node, "request": failure.request}
    return {**{name: value for name, value in found.items() if value}, "trace": trace_command(failure)}


def connection_status(
    *,
    bindings: Sequence[Binding],
    failure: RegistrationFailure | None,
    generation: int,
    problem: tuple[str, str] | None,
    registration_enabled: bool,
    previous: dict[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """The status of one SipConnection.

    `problem` is (reason, message) when the connection could not be published
    (unknown domain, missing Secret or key, invalid spec); `previous` is the
    status last patched, whose transition times carry over.
    """
    previous_conditions = (previous or {}).get("conditions") or []
    live = sorted((b for b in bindings if b.expires_at > now), key=lambda b: (b.contact, b.instance or ""))
    status: dict[str, Any] = {
        "registered": bool(live),
        "contacts": [contact_status(b) for b in live],
        "observedGeneration": generation,
    }
    if live:
        status["lastRegistered"] = rfc3339(max(b.registered_at for b in live))
    elif previous and previous.get("lastRegistered"):
        status["lastRegistered"] = previous["lastRegistered"]
    if failure is not None:
        status["lastFailure"] = {"time": rfc3339(failure.time), "reason": failure.reason, "source": failure.source,
                                 "kind": failure.kind, **failure_trace(failure)}

    if problem is not None:
        ready = condition("Ready", False, problem[0], problem[1], generation, previous_conditions, now)
    else:
        ready = condition("Ready", True, PUBLISHED, "published to the registrars", generation, previous_conditions, now)
    if live:
        count = f"{len(live)} contact{'s' if len(live) != 1 else ''}"
        registered = condition(
            "Registered", True, REGISTERED, f"{count} registered", generation, previous_conditions, now
        )
    elif not registration_enabled:
        registered = condition(
            "Registered", False, REGISTRATION_DISABLED, "the domain does not accept REGISTER",
            generation, previous_conditions, now,
        )
    elif failure is not None and failure.time >= _timestamp(status.get("lastRegistered")):
        if failure.kind == CONTACT_UNREACHABLE:
            reason, message = CONTACT_UNREACHABLE_REASON, f"{failure.reason} (at {failure.source})"
        else:
            reason, message = REGISTRATION_FAILED, (
                f"last REGISTER failed: {failure.reason} (from {failure.source}); its messages: "
                f"{trace_command(failure)}"
            )
        registered = condition("Registered", False, reason, message, generation, previous_conditions, now)
    else:
        registered = condition(
            "Registered", False, NOT_REGISTERED, "no contact registered", generation, previous_conditions, now
        )
    status["conditions"] = [ready, registered]
    return status


_REFRESH_ONLY = ("lastRegistered",)
_CONTACT_REFRESH_ONLY = ("expiresAt",)


def _without_refresh(status: dict[str, Any]) -> dict[str, Any]:
    kept = {key: value for key, value in status.items() if key not in _REFRESH_ONLY}
    kept["contacts"] = [
        {key: value for key, value in contact.items() if key not in _CONTACT_REFRESH_ONLY}
        for contact in status.get("contacts") or []
    ]
    return kept


def needs_patch(patched: dict[str, Any] | None, new: dict[str, Any], now: float) -> bool:
    """Whether `new` is worth a patch over `patched` (the status last written), by the rule in the module docstring."""
    if patched is None:
        return True
    if _without_refresh(patched) != _without_refresh(new):
        return True
    shown = [contact.get("expiresAt") for contact in patched.get("contacts") or []]
    return any(_timestamp(text) <= now for text in shown) and patched != new


def _timestamp(text: str | None) -> float:
    """Unix seconds of an RFC 3339 time; 0 for none."""
    return unix_seconds(text) if text else 0.0


def domain_status(
    *,
    replicas: int,
    ready_replicas: int,
    bindings: int,
    connections: int,
    registered_connections: int,
    generation: int,
    problem: tuple[str, str] | None,
    previous: dict[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    previous_conditions = (previous or {}).get("conditions") or []
    if problem is not None:
        ready = condition("Ready", False, problem[0], problem[1], generation, previous_conditions, now)
    elif ready_replicas < 1:
        ready = condition(
            "Ready", False, "NoReadyReplicas", f"0 of {replicas} registrar pods ready", generation,
            previous_conditions, now,
        )
    else:
        ready = condition(
            "Ready", True, "ReplicasReady", f"{ready_replicas} of {replicas} registrar pods ready", generation,
            previous_conditions, now,
        )
    return {
        "replicas": replicas,
        "readyReplicas": ready_replicas,
        "bindings": bindings,
        "connections": connections,
        "registeredConnections": registered_connections,
        "observedGeneration": generation,
        "conditions": [ready],
    }


# -- Events: what `kubectl describe sipconnection` lists under Events -------------------------------


class Event(NamedTuple):
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


LOCKED_OUT = "LockedOut"


def connection_events(previous: dict[str, Any] | None, new: dict[str, Any], now: float) -> list[Event]:
    """The Events a SipConnection's status change from `previous` (last patched) to `new` is worth.

    None before (the operator just started, or the object is new): nothing, so that a restart does
    not repeat every connection's story. A new failure is a Warning (a lockout as LockedOut); a
    connection that starts to be registered, Registered; a contact gone past its expiry,
    ContactExpired (one that went otherwise was unregistered or replaced by its UA: said only when it
    was the last, as Unregistered).
    """
    if previous is None:
        return []
    events = []
    failure, before = new.get("lastFailure"), previous.get("lastFailure")
    if failure and failure != before:
        if failure.get("kind") == CONTACT_UNREACHABLE:
            events.append(Event("Warning", CONTACT_UNREACHABLE_REASON, f"{failure['reason']} (at {failure['source']})"))
        elif str(failure.get("reason", "")).startswith("locked out"):
            events.append(Event("Warning", LOCKED_OUT, f"{failure['reason']}"))
        else:
            events.append(Event("Warning", REGISTRATION_FAILED, f"{failure['reason']} (from {failure['source']})"))
    contacts = {contact["uri"]: contact for contact in new.get("contacts") or []}
    if new.get("registered") and not previous.get("registered"):
        shown = ", ".join(f"{uri} from {contact['source']}" for uri, contact in contacts.items())
        events.append(Event("Normal", REGISTERED, f"registered {shown}"))
    gone = [contact for contact in previous.get("contacts") or [] if contact["uri"] not in contacts]
    expired = [contact for contact in gone if _timestamp(contact.get("expiresAt")) <= now]
    for contact in expired:
        events.append(Event("Normal", "ContactExpired", f"{contact['uri']} expired at {contact['expiresAt']}"))
    unreachable = failure and failure != before and failure.get("kind") == CONTACT_UNREACHABLE
    if previous.get("registered") and not new.get("registered") and len(expired) < len(gone) and not unreachable:
        events.append(Event("Normal", "Unregistered", "no contact registered"))
    return events


class EventBudget:
    """How many Events may be posted: `per_object` per `window` s for one object, and `rate` a second with
    `burst` in all (10,000 contacts expiring in one outage are not 10,000 API writes at once).
    Past either, Events are dropped: the status still says it all."""

    def __init__(self, per_object: int = 6, window: float = 60.0, rate: float = 10.0, burst: float = 100.0):
        self.per_object, self.window, self.rate, self.burst = per_object, window, rate, burst
        self._recent: dict[Any, list[float]] = {}
        self._tokens = burst
        self._last: float | None = None

    def allow(self, key: Any, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        recent = [when for when in self._recent.get(key, ()) if when > now - self.window]
        if len(recent) >= self.per_object or self._tokens < 1:
            self._recent[key] = recent
            return False
        self._tokens -= 1
        recent.append(now)
        self._recent[key] = recent
        return True

    def forget(self, key: Any) -> None:
        self._recent.pop(key, None)
