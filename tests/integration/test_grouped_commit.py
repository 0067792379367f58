"""Concurrent Commits share transactions (group commit), and so do concurrent Releases: each
call still gets exactly what it alone would have got, whether the group decides it (a plain
commit or release) or leaves it to a transaction of its own (a replay, a larger amount, an
expired, committed or released reservation, a give-back to an expired lot, a reservation named
twice)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import unpack
from tests.support.calls import (
    balance_of,
    commit_request,
    grant,
    place_reservation,
    release,
    release_request,
)
from tests.support.database import service_now
from tests.support.messages import later

ACCOUNT = "group-a"
EXPIRING = "group-b"
BLOCKER = "group-block"


# Each Commit and Release names its reservation in its metadata or reason, so that a response can be
# told from the others of its group.
def _commit(reservation_id: str, amount: int | None = None) -> pb.CommitRequest:
    return commit_request(reservation_id, amount, metadata={"job": reservation_id})


def _groups_larger_than(app, size: int, method: str = "Commit") -> float:
    registry = app.metrics.registry
    labels = {"method": method}
    count = registry.get_sample_value("credits_group_size_count", labels) or 0.0
    at_most = registry.get_sample_value("credits_group_size_bucket", {**labels, "le": f"{size}.0"})
    return count - (at_most or 0.0)


def _release(reservation_id: str) -> pb.ReleaseRequest:
    return release_request(reservation_id, f"done with {reservation_id}")


async def _fund(stub, db, clock) -> None:
    """ACCOUNT 100 credits, BLOCKER 10, and EXPIRING 10 in a lot that expires in a minute."""
    await grant(stub, ACCOUNT, 100)
    await grant(stub, BLOCKER, 10)
    await grant(stub, EXPIRING, 10, expire_time=later(await service_now(db, clock), 60))


async def _behind_a_blocked_group(
    db, db_pool, stubs, method: str, blocked: Any, requests: list[Any]
) -> tuple[Any, list[Any]]:
    """Send `blocked` (a call on BLOCKER's reservation), whose group then waits on a lock this
    test holds on BLOCKER's account, then every request, so that they queue behind it and the
    next group takes them all; release the lock. Returns the first call's response and the
    others' responses or errors, in order."""
    async with db_pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE", BLOCKER)
        first = asyncio.ensure_future(getattr(stubs[0], method)(blocked))
        await _wait_for_lock_waiter(db)
        calls = [
            asyncio.ensure_future(getattr(stubs[i % len(stubs)], method)(request))
            for i, request in enumerate(requests)
        ]
        await asyncio.sleep(0.5)
    results = await asyncio.gather(*calls, return_exceptions=True)
    return await first, results


async def _wait_for_lock_waiter(db) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'credits-service' "
            "AND wait_event_type = 'Lock'"
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the first call never waited for the blocked account")


async def test_commits_decided_together_get_what_each_would_alone(
    app, stubs, stub, db, db_pool, clock
):
    await _fund(stub, db, clock)

    full = [await place_reservation(stub, ACCOUNT, 5) for _ in range(4)]
    smaller = await place_reservation(stub, ACCOUNT, 5)
    twice = await place_reservation(stub, ACCOUNT, 5)
    larger = await place_reservation(stub, ACCOUNT, 5)
    released = await place_reservation(stub, ACCOUNT, 5)
    due = await place_reservation(stub, ACCOUNT, 5, ttl_s=30)
    committed_before = await place_reservation(stub, ACCOUNT, 5)
    given_back = await place_reservation(stub, EXPIRING, 6)
    blocked = await place_reservation(stub, BLOCKER, 4)
    await release(stub, released)
    await stub.Commit(_commit(committed_before))
    # `due` is past its expiry, and EXPIRING's lot has expired under its reservation.
    clock.advance(120)
    # ACCOUNT: 100 granted, 5 committed; 45 held by 9 active reservations (one of them due).

    groups_before = _groups_larger_than(app, 8)
    requests = [
        *(_commit(rid) for rid in full),
        _commit(smaller, 2),
        _commit(twice, 5),
        _commit(twice, 5),
        _commit(larger, 9),
        _commit(released),
        _commit(due),
        _commit(committed_before),
        _commit(str(uuid.uuid4())),
        _commit(given_back, 1),
    ]
    first, results = await _behind_a_blocked_group(
        db, db_pool, stubs, "Commit", _commit(blocked), requests)
    assert first.reservation.committed_amount == 4
    assert _groups_larger_than(app, 8) > groups_before, "the commits were not decided together"

    ok = [r for r in results if not isinstance(r, Exception)]
    by_id = {r.reservation.reservation_id: r for r in ok}
    for rid in full:
        response = by_id[rid]
        assert response.reservation.status == pb.RESERVATION_STATUS_COMMITTED
        assert response.reservation.committed_amount == 5
        assert [(d.held, d.consumed) for d in response.reservation.draws] == [(5, 5)]
        assert response.entry.amount == -5 and response.entry.metadata == {"job": rid}
    assert by_id[smaller].reservation.committed_amount == 2
    assert [(d.held, d.consumed) for d in by_id[smaller].reservation.draws] == [(5, 2)]
    assert by_id[larger].reservation.committed_amount == 9
    twice_results = [r for r, q in zip(results, requests, strict=True)
                     if q.reservation_id == twice]
    # One commits, the other replays it (with the balance as of its own response).
    assert [(r.reservation, r.entry) for r in twice_results] == [
        (twice_results[0].reservation, twice_results[0].entry)] * 2
    assert by_id[committed_before].reservation.committed_amount == 5
    assert by_id[given_back].reservation.committed_amount == 1
    assert [(d.held, d.consumed) for d in by_id[given_back].reservation.draws] == [(6, 1)]

    errors = {q.reservation_id: r for r, q in zip(results, requests, strict=True)
              if isinstance(r, Exception)}
    assert set(errors) == {released, due, requests[-2].reservation_id}
    got = {rid: (unpack(error).code, unpack(error).reason) for rid, error in errors.items()}
    assert got == {
        released: (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED"),
        due: (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED"),
        requests[-2].reservation_id: (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND"),
    }

    # Entries of one account follow one another: each balance_after is the one before less the
    # amount, in the order the ledger wrote them.
    rows = await db.fetch(
        "SELECT amount, balance_after FROM ledger_entries WHERE account_id = $1 "
        "ORDER BY entry_id", ACCOUNT)
    running = 0
    for row in rows:
        running += row["amount"]
        assert row["balance_after"] == running
    balance = await balance_of(stub, ACCOUNT)
    # Used: 5 before, 4 x 5, 2, 5, 9 = 41; nothing held any more (the due reservation expired).
    assert (balance.balance, balance.reserved, balance.lifetime_used) == (59, 0, 41)
    expired_balance = await balance_of(stub, EXPIRING)
    # 1 consumed; the 5 given back and the 4 never held went to the expired lot: written off.
    assert (expired_balance.balance, expired_balance.lifetime_expired) == (0, 9)


async def test_releases_decided_together_get_what_each_would_alone(
    app, stubs, stub, db, db_pool, clock
):
    await _fund(stub, db, clock)

    plain = [await place_reservation(stub, ACCOUNT, 5) for _ in range(4)]
    twice = await place_reservation(stub, ACCOUNT, 5)
    released_before = await place_reservation(stub, ACCOUNT, 5)
    committed_before = await place_reservation(stub, ACCOUNT, 5)
    due = await place_reservation(stub, ACCOUNT, 5, ttl_s=30)
    given_back = await place_reservation(stub, EXPIRING, 6)
    blocked = await place_reservation(stub, BLOCKER, 4)
    await stub.Release(_release(released_before))
    await stub.Commit(_commit(committed_before))
    # `due` is past its expiry, and EXPIRING's lot has expired under its reservation.
    clock.advance(120)
    # ACCOUNT: 100 granted, 5 committed; 30 held by 6 active reservations (one of them due).

    groups_before = _groups_larger_than(app, 8, "Release")
    requests = [
        *(_release(rid) for rid in plain),
        _release(twice),
        _release(twice),
        _release(released_before),
        _release(committed_before),
        _release(due),
        _release(str(uuid.uuid4())),
        _release(given_back),
    ]
    first, results = await _behind_a_blocked_group(
        db, db_pool, stubs, "Release", _release(blocked), requests)
    assert first.reservation.status == pb.RESERVATION_STATUS_RELEASED
    assert _groups_larger_than(app, 8, "Release") > groups_before, (
        "the releases were not decided together")

    ok = [r for r in results if not isinstance(r, Exception)]
    by_id = {r.reservation.reservation_id: r for r in ok}
    for rid in [*plain, twice, released_before, given_back]:
        response = by_id[rid]
        assert response.reservation.status == pb.RESERVATION_STATUS_RELEASED
        assert response.reservation.release_reason == f"done with {rid}"
        assert response.reservation.HasField("finish_time")
        assert [(d.held, d.consumed) for d in response.reservation.draws] == [
            (5 if rid != given_back else 6, 0)]
    # The plain four were decided in one transaction (one finish_time: the transaction's
    # clock), and each answers with the balance as after its own release, as one by one would:
    # 5 held less each time. The first leaves 25 held, or 20 if the sweeper expired `due` first.
    assert len({by_id[rid].reservation.finish_time.ToDatetime() for rid in plain}) == 1
    reserved = sorted(by_id[rid].balance.reserved for rid in plain)
    assert [r - reserved[0] for r in reserved] == [0, 5, 10, 15] and reserved[-1] in (20, 25)
    twice_results = [r for r, q in zip(results, requests, strict=True)
                     if q.reservation_id == twice]
    assert [r.reservation for r in twice_results] == [twice_results[0].reservation] * 2

    errors = {q.reservation_id: r for r, q in zip(results, requests, strict=True)
              if isinstance(r, Exception)}
    got = {rid: (unpack(error).code, unpack(error).reason) for rid, error in errors.items()}
    assert got == {
        committed_before: (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED"),
        due: (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED"),
        requests[-2].reservation_id: (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND"),
    }

    balance = await balance_of(stub, ACCOUNT)
    # 5 used before; every reservation released or expired, nothing held.
    assert (balance.balance, balance.reserved, balance.active_reservation_count,
            balance.lifetime_used) == (95, 0, 0, 5)
    expired_balance = await balance_of(stub, EXPIRING)
    # The 6 given back went to the expired lot: written off, as the 4 never held were.
    assert (expired_balance.balance, expired_balance.reserved,
            expired_balance.lifetime_expired) == (0, 0, 10)
