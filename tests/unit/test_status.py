"""SipConnection and SipDomain status from bindings and failures, and the patch-on-change rule."""

from __future__ import annotations

from registrar.model import Binding
from registrar.store import RegistrationFailure
from registrar.times import rfc3339
from sip_operator.status import Event, EventBudget, connection_events, connection_status, domain_status, needs_patch

NOW = 1_800_000_000.0


def binding(contact="sip:alice@192.0.2.10:5060", registered_at=NOW - 10, expires=600, source_port=40000):
    return Binding(
        "alice@sip.example.test", contact, registered_at + expires, "call-1", 1, transport="udp",
        source_host="203.0.113.5", source_port=source_port, node="pod-a", user_agent="baresip",
        registered_at=registered_at,
    )


def status(bindings=(), failure=None, problem=None, previous=None, now=NOW, enabled=True):
    return connection_status(
        bindings=bindings, failure=failure, generation=3, problem=problem,
        registration_enabled=enabled, previous=previous, now=now,
    )


def conditions(result):
    return {c["type"]: c for c in result["conditions"]}


def test_a_registered_connection_shows_its_contacts():
    result = status([binding()])
    assert result["registered"] is True
    assert result["contacts"] == [
        {
            "uri": "sip:alice@192.0.2.10:5060",
            "transport": "udp",
            "source": "udp:203.0.113.5:40000",
            "expires": 600,
            "expiresAt": rfc3339(NOW + 590),
            "userAgent": "baresip",
            "node": "pod-a",
        }
    ]
    assert result["lastRegistered"] == rfc3339(NOW - 10)
    assert result["observedGeneration"] == 3
    ready, registered = conditions(result)["Ready"], conditions(result)["Registered"]
    assert (ready["status"], registered["status"], registered["reason"]) == ("True", "True", "Registered")
    assert registered["message"] == "1 contact registered"


def test_expired_bindings_do_not_count():
    result = status([binding(registered_at=NOW - 700)])
    assert result["registered"] is False and result["contacts"] == []
    assert conditions(result)["Registered"]["reason"] == "NotRegistered"


def test_a_failure_after_the_last_registration_says_why_and_where_its_trace_is():
    request = "REGISTER sip:sip.example.test (CSeq 2 REGISTER, Call-ID c1@198.51.100.7)"
    failure = RegistrationFailure("sip.example.test", "alice", NOW - 5, "wrong password", "udp:198.51.100.7:5060",
                                  node="registrar-1", request=request)
    result = status(failure=failure)
    assert result["lastFailure"] == {
        "time": rfc3339(NOW - 5), "reason": "wrong password", "source": "udp:198.51.100.7:5060", "kind": "register",
        "node": "registrar-1", "request": request, "trace": "sipreg trace alice@sip.example.test",
    }
    registered = conditions(result)["Registered"]
    assert registered["reason"] == "RegistrationFailed"
    assert "wrong password" in registered["message"] and "198.51.100.7" in registered["message"]
    assert registered["message"].endswith("its messages: sipreg trace alice@sip.example.test")


def test_a_failure_record_of_an_older_registrar_has_no_node_or_request():
    failure = RegistrationFailure("sip.example.test", "alice", NOW - 5, "wrong password", "udp:198.51.100.7:5060")
    assert status(failure=failure)["lastFailure"]["trace"] == "sipreg trace alice@sip.example.test"
    assert not {"node", "request"} & status(failure=failure)["lastFailure"].keys()


def test_a_contact_removed_for_not_answering_pings_says_so():
    reason = "contact sip:alice@10.0.0.7:5060 removed: 3 keepalive pings in a row unanswered"
    failure = RegistrationFailure("sip.example.test", "alice", NOW - 5, reason, "udp:198.51.100.7:40000", "unreachable")
    result = status(failure=failure)
    assert result["lastFailure"]["kind"] == "unreachable" and result["registered"] is False
    registered = conditions(result)["Registered"]
    assert (registered["status"], registered["reason"]) == ("False", "ContactUnreachable")
    assert registered["message"] == f"{reason} (at udp:198.51.100.7:40000)"


def test_a_lockout_shows_as_the_last_failure_and_in_the_registered_condition():
    # The registrar writes lockouts as failure records (registrar.authentication); nothing here parses them.
    reason = "locked out for 60 s after 5 failed authentications from udp:203.0.113.66:5060"
    failure = RegistrationFailure("sip.example.test", "alice", NOW - 5, reason, "udp:203.0.113.66:5060")
    result = status(failure=failure)
    assert result["lastFailure"]["reason"] == reason
    registered = conditions(result)["Registered"]
    assert registered["reason"] == "RegistrationFailed"
    assert registered["message"] == (
        f"last REGISTER failed: {reason} (from udp:203.0.113.66:5060); its messages: sipreg trace alice@sip.example.test"
    )


def test_a_problem_makes_the_connection_not_ready():
    result = status(problem=("SecretNotFound", "spec.authentication.passwordSecretRef.name: Secret voip/x not found"))
    ready = conditions(result)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    assert "Secret voip/x not found" in ready["message"]


def test_registration_disabled_is_said_so():
    assert conditions(status(enabled=False))["Registered"]["reason"] == "RegistrationDisabled"


def test_transition_times_move_only_when_a_condition_flips():
    first = status([binding()], now=NOW)
    later = status([binding(registered_at=NOW + 50)], previous=first, now=NOW + 60)
    assert conditions(later)["Registered"]["lastTransitionTime"] == rfc3339(NOW)
    gone = status([], previous=later, now=NOW + 1000)
    assert conditions(gone)["Registered"]["lastTransitionTime"] == rfc3339(NOW + 1000)
    assert gone["lastRegistered"] == later["lastRegistered"]  # kept after the contacts went


def test_a_refresh_is_not_worth_a_patch_until_the_shown_expiry_passes():
    patched = status([binding(registered_at=NOW)], now=NOW)
    refreshed = status([binding(registered_at=NOW + 300)], previous=patched, now=NOW + 300)
    assert refreshed != patched
    assert not needs_patch(patched, refreshed, NOW + 300)
    assert needs_patch(patched, refreshed, NOW + 601)  # the shown expiresAt has passed


def test_real_changes_are_patched_at_once():
    patched = status([binding()], now=NOW)
    assert needs_patch(None, patched, NOW)
    assert needs_patch(patched, status([], previous=patched, now=NOW + 1), NOW + 1)
    moved = status([binding(source_port=40001)], previous=patched, now=NOW + 1)
    assert needs_patch(patched, moved, NOW + 1)
    two = status([binding(), binding(contact="sip:alice@192.0.2.11")], previous=patched, now=NOW + 1)
    assert needs_patch(patched, two, NOW + 1)
    failure = RegistrationFailure("sip.example.test", "alice", NOW, "wrong password", "udp:198.51.100.7:5060")
    assert needs_patch(patched, status([binding()], failure=failure, previous=patched, now=NOW + 1), NOW + 1)
    assert not needs_patch(patched, status([binding()], previous=patched, now=NOW + 1), NOW + 1)


def test_domain_status_counts_and_readiness():
    result = domain_status(
        replicas=2, ready_replicas=1, bindings=7, connections=3, registered_connections=2,
        generation=4, problem=None, previous=None, now=NOW,
    )
    assert {k: result[k] for k in ("replicas", "readyReplicas", "bindings", "connections", "registeredConnections")} == {
        "replicas": 2, "readyReplicas": 1, "bindings": 7, "connections": 3, "registeredConnections": 2,
    }
    (ready,) = result["conditions"]
    assert (ready["status"], ready["message"]) == ("True", "1 of 2 registrar pods ready")
    down = domain_status(
        replicas=2, ready_replicas=0, bindings=0, connections=0, registered_connections=0,
        generation=4, problem=None, previous=result, now=NOW + 5,
    )
    assert down["conditions"][0]["reason"] == "NoReadyReplicas"


# -- Events ---------------------------------------------------------------------------------------


def test_events_tell_registration_failures_lockouts_expiry_and_unregistration():
    unregistered = status()
    registered = status([binding()], previous=unregistered)
    assert connection_events(None, registered, NOW) == []  # a restarted operator repeats nothing
    assert connection_events(unregistered, registered, NOW) == [
        Event("Normal", "Registered", "registered sip:alice@192.0.2.10:5060 from udp:203.0.113.5:40000")
    ]
    assert connection_events(registered, status([binding()], previous=registered), NOW) == []  # a refresh

    wrong = RegistrationFailure("sip.example.test", "alice", NOW, "wrong password", "udp:198.51.100.7:5060")
    failed = status([binding()], failure=wrong, previous=registered)
    assert connection_events(registered, failed, NOW) == [
        Event("Warning", "RegistrationFailed", "wrong password (from udp:198.51.100.7:5060)")
    ]
    locked = RegistrationFailure("sip.example.test", "alice", NOW + 1, "locked out for 60 s after 5 failed "
                                 "authentications from udp:198.51.100.7:5060", "udp:198.51.100.7:5060")
    assert connection_events(failed, status([binding()], failure=locked, previous=failed), NOW + 1) == [
        Event("Warning", "LockedOut", locked.reason)
    ]

    # Past its expiry the contact is gone: ContactExpired, and nothing more.
    later = NOW + 700
    expired = status([], previous=registered, now=later)
    assert connection_events(registered, expired, later) == [
        Event("Normal", "ContactExpired", "sip:alice@192.0.2.10:5060 expired at " + rfc3339(NOW + 590))
    ]
    # Gone before its expiry (Expires: 0): Unregistered.
    assert connection_events(registered, status([], previous=registered), NOW) == [
        Event("Normal", "Unregistered", "no contact registered")
    ]


def test_the_event_budget_holds_per_object_and_in_all():
    budget = EventBudget(per_object=2, window=60, rate=1, burst=3)
    assert [budget.allow("a", NOW) for _ in range(3)] == [True, True, False]  # a's 2 a minute
    assert budget.allow("b", NOW) is True
    assert budget.allow("c", NOW) is False  # the burst of 3 is spent
    assert budget.allow("c", NOW + 1) is True  # a token a second
    assert budget.allow("a", NOW + 61) is True  # a's window moved on
