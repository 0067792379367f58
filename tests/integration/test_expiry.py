"""Holds expire (F6) through the sweeper on the database clock, and a late Commit or Release
never wins over expiry (F7)."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf.duration_pb2 import Duration

from credits.v1 import credits_pb2 as pb
from tests.conftest import SWEEP_INTERVAL_S
from tests.grpc_errors import expect_error


async def _hold(stub, account_id: str, amount: int, key: str, ttl_s: int) -> pb.Reservation:
    response = await stub.CheckAndReserve(
        pb.CheckAndReserveRequest(
            account_id=account_id, amount=amount, idempotency_key=key, ttl=Duration(seconds=ttl_s)
        )
    )
    return response.reservation


async def _balance(stub, account_id: str) -> pb.Balance:
    return (await stub.GetBalance(pb.GetBalanceRequest(account_id=account_id))).balance


async def test_hold_with_1s_ttl_expires_and_its_credits_return(stub, db):
    await stub.Grant(pb.GrantRequest(account_id="ttl", amount=50, type=pb.GRANT_TYPE_PROMO,
                                     idempotency_key="g"))
    reservation = await _hold(stub, "ttl", 30, "r", ttl_s=1)
    assert (await _balance(stub, "ttl")).available == 20

    # Within TTL + one sweep interval (+ slack for a loaded machine) it is EXPIRED.
    deadline = asyncio.get_running_loop().time() + 1 + SWEEP_INTERVAL_S + 1.0
    status = "ACTIVE"
    while status == "ACTIVE" and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        status = await db.fetchval(
            "SELECT status FROM reservations WHERE reservation_id = $1::uuid",
            reservation.reservation_id,
        )
    assert status == "EXPIRED"
    balance = await _balance(stub, "ttl")
    assert (balance.available, balance.reserved, balance.active_reservation_count) == (50, 0, 0)

    late = await expect_error(stub.Commit(pb.CommitRequest(
        reservation_id=reservation.reservation_id)))
    assert (late.code, late.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                        "RESERVATION_EXPIRED")
    late_release = await expect_error(stub.Release(pb.ReleaseRequest(
        reservation_id=reservation.reservation_id)))
    assert late_release.reason == "RESERVATION_EXPIRED"
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE entry_type = 'USAGE'") == 0


async def test_commit_after_expire_time_loses_even_before_the_sweeper_runs(app, stub, db):
    """The commit itself checks expire_time against now() and expires the hold."""
    await stub.Grant(pb.GrantRequest(account_id="edge", amount=10, type=pb.GRANT_TYPE_PROMO,
                                     idempotency_key="g"))
    reservation = await _hold(stub, "edge", 10, "r", ttl_s=60)
    # Move the hold's clock back so it is due now; the sweeper may or may not have seen it.
    await db.execute(
        "UPDATE reservations SET create_time = create_time - interval '2 minutes', "
        "expire_time = now() - interval '1 millisecond' WHERE reservation_id = $1::uuid",
        reservation.reservation_id,
    )
    failure = await expect_error(stub.Commit(pb.CommitRequest(
        reservation_id=reservation.reservation_id)))
    assert failure.reason == "RESERVATION_EXPIRED"
    assert (await _balance(stub, "edge")).available == 10


async def test_commits_racing_expiry_never_both_commit_and_expire(stub, stubs, db):
    """F7: commits sent right at the TTL edge end either COMMITTED or EXPIRED, never both,
    and an expired hold never has a USAGE entry."""
    await stub.Grant(pb.GrantRequest(account_id="edge2", amount=10_000, type=pb.GRANT_TYPE_PROMO,
                                     idempotency_key="g"))
    holds = [await _hold(stub, "edge2", 5, f"r{i}", ttl_s=1) for i in range(30)]
    start = asyncio.get_running_loop().time()

    async def commit_at_edge(i: int, reservation: pb.Reservation) -> str:
        # Spread the commits over 0.8 s .. 1.3 s after the holds were placed.
        await asyncio.sleep(max(0.0, start + 0.8 + i * 0.5 / len(holds)
                                - asyncio.get_running_loop().time()))
        try:
            await stubs[i % len(stubs)].Commit(pb.CommitRequest(
                reservation_id=reservation.reservation_id))
            return "COMMITTED"
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
            return "EXPIRED"

    outcomes = await asyncio.gather(*(commit_at_edge(i, r) for i, r in enumerate(holds)))
    for reservation, outcome in zip(holds, outcomes, strict=True):
        status = await db.fetchval(
            "SELECT status FROM reservations WHERE reservation_id = $1::uuid",
            reservation.reservation_id,
        )
        assert status == outcome
