"""A user is claimed by one SipConnection in etcd, with a compare: of several claiming it at once, one wins.

The operator checks in memory that two SipConnections do not define one user; two operators (a leader
and its successor, in a handover) could each pass that check. The claim key decides in etcd itself.
"""

from __future__ import annotations

import asyncio

import pytest

from registrar.store import layout
from registrar.store.etcd_session import EtcdSession, parse_endpoints
from tests.etcd_server import EtcdServer

pytestmark = pytest.mark.integration

CLAIM = layout.claim_key("sip.example.test", "alice")
RECORD = layout.connection_key("sip.example.test", "alice")


def test_of_eight_claims_at_once_one_wins_and_only_its_holder_releases_it(etcd: EtcdServer) -> None:
    async def story() -> None:
        session = EtcdSession(parse_endpoints(etcd.url))
        try:
            claimants = [layout.claimant("voip", f"alice-{index}") for index in range(8)]
            results = await asyncio.gather(
                *(session.write_claimed(CLAIM, claimant, {RECORD: claimant}) for claimant in claimants)
            )
            winners = [claimant for claimant, holder in zip(claimants, results) if holder is None]
            assert len(winners) == 1, results
            (winner,) = winners
            assert all(holder == winner for holder in results if holder is not None)  # each loser is told who
            assert etcd.value(RECORD) == winner  # and wrote nothing
            assert etcd.value(CLAIM) == winner

            assert await session.write_claimed(CLAIM, winner, {RECORD: b"updated"}) is None  # its own, again
            loser = next(claimant for claimant in claimants if claimant != winner)
            await session.release_claim(CLAIM, loser, [RECORD])  # not the holder: nothing goes
            assert etcd.value(RECORD) == b"updated" and etcd.value(CLAIM) == winner
            await session.release_claim(CLAIM, winner, [RECORD])
            assert etcd.value(RECORD) is None and etcd.value(CLAIM) is None
            assert await session.write_claimed(CLAIM, loser, {RECORD: loser}) is None  # free again

            # A record written before claims existed (no claim key): whoever releases it removes it.
            await session.release_claim(CLAIM, loser, [RECORD])
            await session.write({RECORD: b"from an older operator"})
            await session.release_claim(CLAIM, winner, [RECORD])
            assert etcd.value(RECORD) is None
        finally:
            await session.close()

    asyncio.run(story())
