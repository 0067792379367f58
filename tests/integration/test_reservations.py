"""The gRPC contract of reservations against the real server and database: CheckAndReserve places
them, Commit captures and Release voids them, each with its replays and its errors."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import assert_error, expect_error
from tests.ledger_checks import TABLE_NAMES, row_counts
from tests.support.calls import balance_of, commit, grant, place_reservation, release, reserve
from tests.support.database import make_overdue, reservation_status
from tests.support.messages import same

ACCOUNT = "acct-1"
MISSING_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


# --- CheckAndReserve -------------------------------------------------------------------------


async def test_check_and_reserve_places_an_active_reservation_with_the_default_ttl(stub):
    """A reservation is ACTIVE, carries its fields, expires 300 s after creation by default, and
    moves credits from available to reserved."""
    await grant(stub, ACCOUNT, 100)
    response = await reserve(stub, ACCOUNT, 30, metadata={"job": "j1"})

    reservation = response.reservation
    assert uuid.UUID(reservation.reservation_id)
    assert (reservation.account_id, reservation.amount, reservation.committed_amount) == (
        ACCOUNT, 30, 0)
    assert reservation.status == pb.RESERVATION_STATUS_ACTIVE
    assert dict(reservation.metadata) == {"job": "j1"}
    assert reservation.HasField("create_time") and not reservation.HasField("finish_time")
    assert (reservation.expire_time.ToDatetime() - reservation.create_time.ToDatetime()
            == timedelta(seconds=300))
    assert response.balance == pb.Balance(
        account_id=ACCOUNT, balance=100, reserved=30, available=70, active_reservation_count=1,
        lifetime_granted=100)
    assert same(await balance_of(stub, ACCOUNT), response.balance)


async def test_check_and_reserve_uses_the_given_ttl(stub):
    """expire_time is create_time plus the caller's ttl, to the millisecond."""
    await grant(stub, ACCOUNT, 100)
    reservation = (await reserve(stub, ACCOUNT, 1,
                                 ttl=Duration(seconds=90, nanos=250_000_000))).reservation
    assert (reservation.expire_time.ToDatetime() - reservation.create_time.ToDatetime()
            == timedelta(seconds=90, milliseconds=250))


async def test_check_and_reserve_may_take_all_of_available(stub):
    """A reservation of exactly the available credits succeeds; one more credit does not."""
    await grant(stub, ACCOUNT, 100)
    await reserve(stub, ACCOUNT, 60, key="r1")
    assert (await reserve(stub, ACCOUNT, 40, key="r2")).balance.available == 0
    error = await expect_error(reserve(stub, ACCOUNT, 1, key="r3"))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 available="0", requested="1")


async def test_insufficient_credits_is_declined_and_the_decline_is_replayed(stub, db):
    """Not enough available: FAILED_PRECONDITION with available/requested, no reservation; the
    same key replays the decline even after a grant that would cover it."""
    await grant(stub, ACCOUNT, 10, key="g1")
    counts = await row_counts(db)

    error = await expect_error(reserve(stub, ACCOUNT, 50, key="r1"))

    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 accountId=ACCOUNT, available="10", requested="50")
    after = await row_counts(db)
    assert after == {**counts, "idempotency_keys": counts["idempotency_keys"] + 1}
    assert (await balance_of(stub, ACCOUNT)).reserved == 0

    await grant(stub, ACCOUNT, 100, key="g2")
    replay = await expect_error(reserve(stub, ACCOUNT, 50, key="r1"))
    assert (replay.code, replay.reason, replay.metadata) == (
        error.code, error.reason, error.metadata)
    assert await db.fetchval("SELECT count(*) FROM reservations") == 0
    assert (await reserve(stub, ACCOUNT, 50, key="r2")).balance.available == 60


async def test_check_and_reserve_on_unknown_account_is_not_found(stub, db):
    """No such account (and no auto-creation): NOT_FOUND / ACCOUNT_NOT_FOUND, nothing written.
    The key succeeds once the account exists: tests/integration/test_accounts.py."""
    error = await expect_error(reserve(stub, "ghost", 5, key="r1"))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", accountId="ghost")
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0


async def test_check_and_reserve_replay_returns_the_same_reservation_and_writes_nothing(stub, db):
    """Same key and request: the identical response (same reservation id), no second reservation."""
    await grant(stub, ACCOUNT, 100)
    first = await reserve(stub, ACCOUNT, 30, key="r1", ttl=Duration(seconds=60),
                          metadata={"m": "v"})
    counts = await row_counts(db)

    replay = await reserve(stub, ACCOUNT, 30, key="r1", ttl=Duration(seconds=60),
                           metadata={"m": "v"})

    assert same(replay, first)
    assert await row_counts(db) == counts
    assert (await balance_of(stub, ACCOUNT)).reserved == 30


@pytest.mark.parametrize("change", [
    {"amount": 31},
    {"ttl": Duration(seconds=61)},
    {"metadata": {"m": "w"}},
], ids=["amount", "ttl", "metadata"])
async def test_check_and_reserve_key_reused_for_another_request(stub, db, change):
    """Same key with another amount, ttl or metadata: ALREADY_EXISTS, nothing written."""
    await grant(stub, ACCOUNT, 100)
    await reserve(stub, ACCOUNT, 30, key="r1", ttl=Duration(seconds=60), metadata={"m": "v"})
    counts = await row_counts(db)
    request = {"amount": 30, "ttl": Duration(seconds=60), "metadata": {"m": "v"}, **change}

    error = await expect_error(reserve(stub, ACCOUNT, key="r1", **request))

    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                 idempotencyKey="r1")
    assert await row_counts(db) == counts


# --- Commit ----------------------------------------------------------------------------------


async def test_commit_without_amount_captures_the_held_amount(stub):
    """No amount: the held amount is used, one USAGE entry of -held is written."""
    await grant(stub, ACCOUNT, 100)
    reservation = (await reserve(stub, ACCOUNT, 30)).reservation

    response = await commit(stub, reservation.reservation_id, metadata={"tokens": "1234"})

    committed = response.reservation
    assert committed.reservation_id == reservation.reservation_id
    assert committed.status == pb.RESERVATION_STATUS_COMMITTED
    assert (committed.amount, committed.committed_amount) == (30, 30)
    assert committed.HasField("finish_time")
    assert same(committed.create_time, reservation.create_time)
    entry = response.entry
    assert entry.type == pb.ENTRY_TYPE_USAGE
    assert entry.grant_type == pb.GRANT_TYPE_UNSPECIFIED
    assert (entry.amount, entry.balance_after) == (-30, 70)
    assert entry.reservation_id == reservation.reservation_id
    assert dict(entry.metadata) == {"tokens": "1234"}
    assert entry.actor == "anonymous"
    assert entry.HasField("create_time")
    assert response.balance == pb.Balance(
        account_id=ACCOUNT, balance=70, reserved=0, available=70, active_reservation_count=0,
        lifetime_granted=100, lifetime_used=30)


async def test_commit_of_less_than_held_releases_the_rest(stub):
    """A smaller amount is captured and the rest of the reservation returns to available."""
    await grant(stub, ACCOUNT, 100)
    response = await commit(stub, await place_reservation(stub, ACCOUNT, 30), 10)
    assert (response.reservation.committed_amount, response.entry.amount) == (10, -10)
    balance = response.balance
    assert (balance.balance, balance.reserved, balance.available) == (90, 0, 90)
    assert balance.lifetime_used == 10


async def test_commit_of_more_than_held_takes_the_difference_from_available(stub):
    """A larger amount is captured when available covers the difference."""
    await grant(stub, ACCOUNT, 100)
    response = await commit(stub, await place_reservation(stub, ACCOUNT, 30), 80)
    assert (response.reservation.committed_amount, response.entry.amount) == (80, -80)
    assert (response.balance.balance, response.balance.available) == (20, 20)
    assert response.entry.balance_after == 20


async def test_commit_of_more_than_available_covers_fails_and_leaves_the_reservation(stub, db):
    """Extra not covered: INSUFFICIENT_CREDITS (requested = the extra), the reservation stays ACTIVE
    with its amount and can still be committed."""
    await grant(stub, ACCOUNT, 100)
    first = await place_reservation(stub, ACCOUNT, 30, key="r1")
    await reserve(stub, ACCOUNT, 50, key="r2")
    before = await balance_of(stub, ACCOUNT)
    counts = await row_counts(db)

    error = await expect_error(commit(stub, first, 61))

    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 accountId=ACCOUNT, available="20", requested="31")
    assert same(await balance_of(stub, ACCOUNT), before)
    assert await reservation_status(db, first) == "ACTIVE"
    assert await db.fetchval("SELECT amount FROM reservations WHERE reservation_id = $1::uuid",
                             first) == 30
    assert await row_counts(db) == counts

    response = await commit(stub, first, 50)
    assert response.reservation.committed_amount == 50
    assert (response.balance.balance, response.balance.available) == (50, 0)


async def test_commit_repeated_with_the_same_amount_returns_the_same_result(stub, db):
    """A repeated Commit with the same amount returns the same reservation and entry and
    writes nothing; without an amount it matches the held amount."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 30)
    first = await commit(stub, reservation_id)
    counts = await row_counts(db)

    for amount in (None, 30):
        again = await commit(stub, reservation_id, amount)
        assert same(again.reservation, first.reservation)
        assert same(again.entry, first.entry)
        assert same(again.balance, first.balance)
    assert await row_counts(db) == counts


async def test_commit_repeat_returns_the_current_balance(stub):
    """A repeated Commit returns the same entry but the balance as of the response."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 30)
    first = await commit(stub, reservation_id, 20)
    await grant(stub, ACCOUNT, 5, key="g2")
    again = await commit(stub, reservation_id, 20)
    assert again.entry.entry_id == first.entry.entry_id
    assert again.balance.balance == 85


@pytest.mark.parametrize("amount", [29, 31, 1], ids=["less", "more", "one"])
async def test_commit_repeated_with_another_amount_is_already_committed(stub, db, amount):
    """A committed reservation committed again for another amount: RESERVATION_ALREADY_COMMITTED,
    nothing written."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 30)
    await commit(stub, reservation_id)
    counts = await row_counts(db)

    error = await expect_error(commit(stub, reservation_id, amount))

    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED",
                 reservationId=reservation_id, committedAmount="30")
    assert await row_counts(db) == counts


async def test_commit_without_amount_after_a_partial_commit_is_already_committed(stub):
    """No amount means the held amount, which differs from a smaller committed amount."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 30)
    await commit(stub, reservation_id, 10)
    error = await expect_error(commit(stub, reservation_id))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED",
                 committedAmount="10")


async def test_commit_of_a_released_reservation_is_declined(stub, db):
    """Commit after Release: FAILED_PRECONDITION / RESERVATION_RELEASED, no entry."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 30)
    await release(stub, reservation_id)
    error = await expect_error(commit(stub, reservation_id))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED",
                 reservationId=reservation_id)
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE entry_type = 'USAGE'") == 0


@pytest.mark.parametrize("method", ["Commit", "Release"])
async def test_unknown_reservation_is_not_found(stub, db, method):
    """A well-formed id of no reservation: NOT_FOUND / RESERVATION_NOT_FOUND."""
    call = getattr(stub, method)
    request = getattr(pb, f"{method}Request")(reservation_id=MISSING_ID)
    error = await expect_error(call(request))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND",
                 reservationId=MISSING_ID)
    assert await row_counts(db) == dict.fromkeys(TABLE_NAMES, 0)


@pytest.mark.parametrize("method", ["Commit", "Release"])
async def test_reservation_past_its_expire_time_is_expired(stub, db, method):
    """Commit or Release after expire_time: RESERVATION_EXPIRED, the reservation ends EXPIRED and
    its credits return; asking again gives the same answer."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 30)
    await make_overdue(db, reservation_id)
    call = getattr(stub, method)
    request = getattr(pb, f"{method}Request")(reservation_id=reservation_id)

    for _ in range(2):
        error = await expect_error(call(request))
        assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED",
                     reservationId=reservation_id)

    assert await reservation_status(db, reservation_id) == "EXPIRED"
    balance = await balance_of(stub, ACCOUNT)
    assert (balance.balance, balance.reserved, balance.available) == (100, 0, 100)
    assert balance.active_reservation_count == 0
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE entry_type = 'USAGE'") == 0


async def test_commit_accepts_the_reservation_id_in_upper_case(stub):
    """A reservation id is a UUID: its upper-case spelling names the same reservation."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 30)
    response = await commit(stub, reservation_id.upper())
    assert response.reservation.reservation_id == reservation_id
    assert response.entry.reservation_id == reservation_id


# --- Release ---------------------------------------------------------------------------------


async def test_release_voids_the_reservation_and_returns_its_credits(stub, db):
    """Release: RELEASED with finish_time, available restored, count decremented, no entry."""
    await grant(stub, ACCOUNT, 100)
    await reserve(stub, ACCOUNT, 10, key="r0")
    reservation = (await reserve(stub, ACCOUNT, 30, key="r1")).reservation

    response = await release(stub, reservation.reservation_id, reason="job cancelled")

    released = response.reservation
    assert released.reservation_id == reservation.reservation_id
    assert released.status == pb.RESERVATION_STATUS_RELEASED
    assert (released.amount, released.committed_amount) == (30, 0)
    assert released.HasField("finish_time")
    assert same(released.expire_time, reservation.expire_time)
    assert response.balance == pb.Balance(
        account_id=ACCOUNT, balance=100, reserved=10, available=90, active_reservation_count=1,
        lifetime_granted=100)
    assert await db.fetchval(
        "SELECT release_reason FROM reservations WHERE reservation_id = $1::uuid",
        reservation.reservation_id) == "job cancelled"
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == 1


async def test_release_repeated_returns_the_same_result(stub, db):
    """A second Release returns the same reservation and balance and changes nothing."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 30)
    first = await release(stub, reservation_id)
    counts = await row_counts(db)
    again = await release(stub, reservation_id)
    assert same(again, first)
    assert await row_counts(db) == counts
    assert (await balance_of(stub, ACCOUNT)).available == 100


async def test_release_of_a_committed_reservation_is_declined(stub, db):
    """Release after Commit: FAILED_PRECONDITION / RESERVATION_ALREADY_COMMITTED."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 30)
    await commit(stub, reservation_id, 25)
    error = await expect_error(release(stub, reservation_id))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED",
                 reservationId=reservation_id, committedAmount="25")
    assert await reservation_status(db, reservation_id) == "COMMITTED"
    assert (await balance_of(stub, ACCOUNT)).balance == 75


async def test_a_usage_entry_carries_the_hold_s_metadata_under_the_commit_s(stub, db):
    """Decided by a group (the held amount) and alone (a larger one): the USAGE entry's
    metadata is the hold's, with the Commit's keys over it."""
    await grant(stub, "meta", 100)
    entries = []
    for amount in (10, 12):
        held = await stub.CheckAndReserve(pb.CheckAndReserveRequest(
            account_id="meta", amount=10, idempotency_key=f"meta-{amount}",
            metadata={"model": "m1", "job": "render"}))
        used = await stub.Commit(pb.CommitRequest(
            reservation_id=held.reservation.reservation_id, amount=amount,
            metadata={"job": "render-4k", "tokens": "1850"}))
        entries.append(used.entry)
    stored = await db.fetch("SELECT metadata::text AS m FROM ledger_entries "
                            "WHERE account_id = 'meta' AND entry_type = 'USAGE' ORDER BY entry_id")
    for entry, row in zip(entries, stored, strict=True):
        expected = {"model": "m1", "job": "render-4k", "tokens": "1850"}
        assert dict(entry.metadata) == expected
        assert json.loads(row["m"]) == expected
