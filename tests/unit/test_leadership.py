"""Leader election's decision: what a replica does about the operator's Lease, by the clock."""

from __future__ import annotations

from sip_operator.leadership import CREATE, RENEW, TAKE, WAIT, lease_spec, next_step

NOW = 1_800_000_000.0


def lease(holder, renewed_ago, seconds=15):
    return {"spec": lease_spec(holder, NOW - renewed_ago, seconds, None, renewing=False)} if holder else {
        "spec": {"holderIdentity": None, "renewTime": None, "leaseDurationSeconds": seconds}}


def test_a_replica_creates_renews_waits_for_or_takes_the_lease():
    assert next_step(None, "b", NOW) == CREATE
    assert next_step(lease("b", 5), "b", NOW) == RENEW
    assert next_step(lease("a", 5), "b", NOW) == WAIT  # a renewed 5 s ago: it leads
    assert next_step(lease("a", 14.9), "b", NOW) == WAIT
    assert next_step(lease("a", 15.1), "b", NOW) == TAKE  # a stopped renewing a Lease ago
    assert next_step(lease(None, 0), "b", NOW) == TAKE  # handed back


def test_a_renewal_keeps_the_acquire_time_and_a_take_counts_a_transition():
    first = lease_spec("a", NOW, 15, None, renewing=False)
    renewed = lease_spec("a", NOW + 3, 15, first, renewing=True)
    taken = lease_spec("b", NOW + 30, 15, renewed, renewing=False)
    assert renewed["acquireTime"] == first["acquireTime"] and renewed["renewTime"] > first["renewTime"]
    assert (first["leaseTransitions"], renewed["leaseTransitions"], taken["leaseTransitions"]) == (1, 1, 2)
    assert taken["holderIdentity"] == "b" and taken["acquireTime"] == taken["renewTime"]
