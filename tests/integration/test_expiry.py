"""Reservations expire (F6) through the sweeper on the database clock, and a late Commit or Release
never wins over expiry (F7)."""

from __future__ import annotations

import asyncio

import grpc

from credits.v1 import credits_pb2 as pb
from tests.conftest import SWEEP_INTERVAL_S
from tests.grpc_errors import expect_error
from tests.support.calls import balance_of, commit, grant, release, reserve
from tests.support.database import make_overdue, reservation_status


async def test_reservation_with_1s_ttl_expires_and_its_credits_return(stub, db):
    await grant(stub, "ttl", 50, key="g", grant_type=pb.GRANT_TYPE_PROMO)
    reservation = (await reserve(stub, "ttl", 30, key="r", ttl_s=1)).reservation
    assert (await balance_of(stub, "ttl")).available == 20

    # Within TTL + one sweep interval (+ slack for a loaded machine) it is EXPIRED.
    deadline = asyncio.get_running_loop().time() + 1 + SWEEP_INTERVAL_S + 1.0
    status = "ACTIVE"
    while status == "ACTIVE" and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        status = await reservation_status(db, reservation.reservation_id)
    assert status == "EXPIRED"
    balance = await balance_of(stub, "ttl")
    assert (balance.available, balance.reserved, balance.active_reservation_count) == (50, 0, 0)

    late = await expect_error(commit(stub, reservation.reservation_id))
    assert (late.code, late.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                        "RESERVATION_EXPIRED")
    late_release = await expect_error(release(stub, reservation.reservation_id))
    assert late_release.reason == "RESERVATION_EXPIRED"
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE entry_type = 'USAGE'") == 0


async def test_commit_after_expire_time_loses_even_before_the_sweeper_runs(app, stub, db):
    """The commit itself checks expire_time against now() and expires the reservation."""
    await grant(stub, "edge", 10, key="g", grant_type=pb.GRANT_TYPE_PROMO)
    reservation = (await reserve(stub, "edge", 10, key="r", ttl_s=60)).reservation
    # Move the reservation's clock back so it is due now; the sweeper may or may not have seen it.
    await make_overdue(db, reservation.reservation_id)
    failure = await expect_error(commit(stub, reservation.reservation_id))
    assert failure.reason == "RESERVATION_EXPIRED"
    assert (await balance_of(stub, "edge")).available == 10


async def test_commits_racing_expiry_never_both_commit_and_expire(stub, stubs, db):
    """F7: commits sent right at the TTL edge end either COMMITTED or EXPIRED, never both,
    and an expired reservation never has a USAGE entry."""
    await grant(stub, "edge2", 10_000, key="g", grant_type=pb.GRANT_TYPE_PROMO)
    reservations = [(await reserve(stub, "edge2", 5, key=f"r{i}", ttl_s=1)).reservation
                    for i in range(30)]
    start = asyncio.get_running_loop().time()

    async def commit_at_edge(i: int, reservation: pb.Reservation) -> str:
        # Spread the commits over 0.8 s .. 1.3 s after the reservations were placed.
        await asyncio.sleep(max(0.0, start + 0.8 + i * 0.5 / len(reservations)
                                - asyncio.get_running_loop().time()))
        try:
            await commit(stubs[i % len(stubs)], reservation.reservation_id)
            return "COMMITTED"
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
            return "EXPIRED"

    outcomes = await asyncio.gather(*(commit_at_edge(i, r) for i, r in enumerate(reservations)))
    for reservation, outcome in zip(reservations, outcomes, strict=True):
        status = await reservation_status(db, reservation.reservation_id)
        assert status == outcome
