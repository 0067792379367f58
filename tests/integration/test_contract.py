"""The gRPC contract of credits.v1.CreditsService, RPC by RPC and error by error, against the
real in-process server and database."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import RpcError, expect_error

DOMAIN = "credits.v1"
ACCOUNT = "acct-1"
TABLES = ("accounts", "ledger_entries", "reservations", "idempotency_keys", "credit_lots",
          "reservation_lots")
MISSING_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


# --- helpers ---------------------------------------------------------------------------------


async def _grant(stub, amount: int = 100, key: str = "g1", account: str = ACCOUNT,
                 grant_type: int = pb.GRANT_TYPE_PURCHASE, **fields) -> pb.GrantResponse:
    return await stub.Grant(pb.GrantRequest(account_id=account, amount=amount, type=grant_type,
                                            idempotency_key=key, **fields))


async def _reserve(stub, amount: int, key: str = "r1", account: str = ACCOUNT,
                   **fields) -> pb.CheckAndReserveResponse:
    return await stub.CheckAndReserve(pb.CheckAndReserveRequest(
        account_id=account, amount=amount, idempotency_key=key, **fields))


async def _hold_id(stub, amount: int, key: str = "r1", account: str = ACCOUNT) -> str:
    return (await _reserve(stub, amount, key, account)).reservation.reservation_id


async def _commit(stub, reservation_id: str, amount: int | None = None,
                  **fields) -> pb.CommitResponse:
    request = pb.CommitRequest(reservation_id=reservation_id, **fields)
    if amount is not None:
        request.amount = amount
    return await stub.Commit(request)


async def _release(stub, reservation_id: str, reason: str = "") -> pb.ReleaseResponse:
    return await stub.Release(pb.ReleaseRequest(reservation_id=reservation_id, reason=reason))


async def _balance(stub, account: str = ACCOUNT) -> pb.Balance:
    return (await stub.GetBalance(pb.GetBalanceRequest(account_id=account))).balance


async def _row_counts(db) -> dict[str, int]:
    return {table: await db.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}


async def _status_in_db(db, reservation_id: str) -> str:
    return await db.fetchval(
        "SELECT status FROM reservations WHERE reservation_id = $1::uuid", reservation_id)


async def _make_overdue(db, reservation_id: str) -> None:
    await db.execute(
        "UPDATE reservations SET create_time = create_time - interval '1 hour', "
        "expire_time = now() - interval '1 second' WHERE reservation_id = $1::uuid",
        reservation_id,
    )


def _same(a, b) -> bool:
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def _assert_error(error: RpcError, code: grpc.StatusCode, reason: str, **metadata: str) -> None:
    assert (error.code, error.reason, error.domain) == (code, reason, DOMAIN), error
    for key, value in metadata.items():
        assert error.metadata.get(key) == value, (key, error.metadata)


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _page_token(after: object, real_token: str) -> str:
    """`real_token` with its position edited, keeping its signature: a forgery."""
    body, _, signature = real_token.rpartition(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["after"] = after
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + signature


# --- Grant -----------------------------------------------------------------------------------


async def test_grant_creates_the_account_and_returns_the_entry_and_balance(stub, db):
    """A first grant writes a GRANT entry with every field set and creates the account."""
    before = time.time()
    response = await _grant(stub, 100, grant_type=pb.GRANT_TYPE_SIGNUP, reason="welcome",
                            metadata={"campaign": "spring", "src": "web"})

    entry = response.entry
    assert entry.entry_id
    assert entry.account_id == ACCOUNT
    assert entry.type == pb.ENTRY_TYPE_GRANT
    assert entry.grant_type == pb.GRANT_TYPE_SIGNUP
    assert (entry.amount, entry.balance_after) == (100, 100)
    assert entry.reservation_id == ""
    assert entry.reason == "welcome"
    assert dict(entry.metadata) == {"campaign": "spring", "src": "web"}
    assert entry.actor == "anonymous"
    assert entry.HasField("create_time")
    assert before - 60 < _seconds(entry.create_time) < time.time() + 60
    assert response.balance == pb.Balance(
        account_id=ACCOUNT, balance=100, reserved=0, available=100, active_reservation_count=0,
        lifetime_granted=100, lifetime_used=0)
    assert await db.fetchval("SELECT balance FROM accounts WHERE account_id = $1", ACCOUNT) == 100


async def test_second_grant_adds_to_the_balance(stub):
    """A second grant on the account adds its amount to balance and lifetime_granted."""
    await _grant(stub, 100, key="g1")
    response = await _grant(stub, 50, key="g2")
    assert response.entry.balance_after == 150
    assert (response.balance.balance, response.balance.lifetime_granted) == (150, 150)
    assert (await _balance(stub)).available == 150


async def test_grant_replay_returns_the_identical_response_and_writes_nothing(stub, db):
    """Same key and request: the original response byte for byte, no new rows."""
    first = await _grant(stub, 100, key="g1", reason="r", metadata={"a": "1", "b": "2"})
    await _grant(stub, 5, key="g2")
    counts = await _row_counts(db)

    replay = await _grant(stub, 100, key="g1", reason="r", metadata={"b": "2", "a": "1"})

    assert _same(replay, first)
    assert replay.balance.balance == 100
    assert await _row_counts(db) == counts


@pytest.mark.parametrize("change", [
    {"amount": 101},
    {"account": "acct-2"},
    {"grant_type": pb.GRANT_TYPE_PROMO},
    {"reason": "other"},
    {"metadata": {"a": "2"}},
], ids=["amount", "account", "type", "reason", "metadata"])
async def test_grant_key_reused_for_another_request_is_already_exists(stub, db, change):
    """Same key with any field changed: ALREADY_EXISTS / IDEMPOTENCY_KEY_REUSED, no rows."""
    await _grant(stub, 100, key="g1", reason="r", metadata={"a": "1"})
    counts = await _row_counts(db)
    request = {"amount": 100, "reason": "r", "metadata": {"a": "1"}, **change}

    error = await expect_error(_grant(stub, key="g1", **request))

    _assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                  idempotencyKey="g1")
    assert await _row_counts(db) == counts


async def test_key_used_by_grant_is_reused_when_sent_to_check_and_reserve(stub, db):
    """Keys are shared across methods: a Grant key sent to CheckAndReserve is reused."""
    await _grant(stub, 100, key="shared")
    counts = await _row_counts(db)
    error = await expect_error(_reserve(stub, 10, key="shared"))
    _assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert await _row_counts(db) == counts


@pytest.mark.parametrize("grant_type", [v for v in pb.GrantType.values() if v],
                         ids=[n for n in pb.GrantType.keys() if n != "GRANT_TYPE_UNSPECIFIED"])
async def test_every_grant_type_is_accepted_and_stored(stub, grant_type):
    """Each GrantType other than UNSPECIFIED is accepted and comes back in History."""
    response = await _grant(stub, 7, grant_type=grant_type)
    assert response.entry.grant_type == grant_type
    history = await stub.History(pb.HistoryRequest(account_id=ACCOUNT))
    assert [e.grant_type for e in history.entries] == [grant_type]


async def test_grant_past_the_balance_cap_is_declined_and_the_decline_replayed(stub, db):
    """A grant taking the balance past 10^15 is BALANCE_LIMIT_EXCEEDED, writes no entry, and
    its key replays the decline even once the grant would fit."""
    cap = 10**15
    await _grant(stub, 10, key="seed")
    await db.execute(
        "UPDATE ledger_entries SET amount = $1, balance_after = $1 WHERE account_id = $2",
        cap - 5, ACCOUNT)
    await db.execute(
        "UPDATE accounts SET balance = $1, lifetime_granted = $1 WHERE account_id = $2",
        cap - 5, ACCOUNT)
    await db.execute(
        "UPDATE credit_lots SET amount = $1, remaining = $1 WHERE account_id = $2",
        cap - 5, ACCOUNT)
    entries = await db.fetchval("SELECT count(*) FROM ledger_entries")

    error = await expect_error(_grant(stub, 10, key="over"))

    _assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "BALANCE_LIMIT_EXCEEDED",
                  accountId=ACCOUNT, balance=str(cap - 5), requested="10",
                  balanceMax=str(cap))
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == entries
    assert (await _grant(stub, 5, key="fits")).balance.balance == cap

    await _commit(stub, await _hold_id(stub, 100))
    replay = await expect_error(_grant(stub, 10, key="over"))
    assert (replay.reason, replay.metadata) == (error.reason, error.metadata)
    assert (await _balance(stub)).balance == cap - 100


# --- CheckAndReserve -------------------------------------------------------------------------


async def test_check_and_reserve_places_an_active_hold_with_the_default_ttl(stub):
    """A hold is ACTIVE, carries its fields, expires 300 s after creation by default, and moves
    credits from available to reserved."""
    await _grant(stub, 100)
    response = await _reserve(stub, 30, metadata={"job": "j1"})

    hold = response.reservation
    assert uuid.UUID(hold.reservation_id)
    assert (hold.account_id, hold.amount, hold.committed_amount) == (ACCOUNT, 30, 0)
    assert hold.status == pb.RESERVATION_STATUS_ACTIVE
    assert dict(hold.metadata) == {"job": "j1"}
    assert hold.HasField("create_time") and not hold.HasField("finish_time")
    assert (hold.expire_time.ToDatetime() - hold.create_time.ToDatetime()
            == timedelta(seconds=300))
    assert response.balance == pb.Balance(
        account_id=ACCOUNT, balance=100, reserved=30, available=70, active_reservation_count=1,
        lifetime_granted=100)
    assert _same(await _balance(stub), response.balance)


async def test_check_and_reserve_uses_the_given_ttl(stub):
    """expire_time is create_time plus the caller's ttl, to the millisecond."""
    await _grant(stub, 100)
    hold = (await _reserve(stub, 1, ttl=Duration(seconds=90, nanos=250_000_000))).reservation
    assert (hold.expire_time.ToDatetime() - hold.create_time.ToDatetime()
            == timedelta(seconds=90, milliseconds=250))


async def test_check_and_reserve_may_take_all_of_available(stub):
    """A hold of exactly the available credits succeeds; one more credit does not."""
    await _grant(stub, 100)
    await _reserve(stub, 60, key="r1")
    assert (await _reserve(stub, 40, key="r2")).balance.available == 0
    error = await expect_error(_reserve(stub, 1, key="r3"))
    _assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                  available="0", requested="1")


async def test_insufficient_credits_is_declined_and_the_decline_is_replayed(stub, db):
    """Not enough available: FAILED_PRECONDITION with available/requested, no hold; the same key
    replays the decline even after a grant that would cover it."""
    await _grant(stub, 10, key="g1")
    counts = await _row_counts(db)

    error = await expect_error(_reserve(stub, 50, key="r1"))

    _assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                  accountId=ACCOUNT, available="10", requested="50")
    after = await _row_counts(db)
    assert after == {**counts, "idempotency_keys": counts["idempotency_keys"] + 1}
    assert (await _balance(stub)).reserved == 0

    await _grant(stub, 100, key="g2")
    replay = await expect_error(_reserve(stub, 50, key="r1"))
    assert (replay.code, replay.reason, replay.metadata) == (
        error.code, error.reason, error.metadata)
    assert await db.fetchval("SELECT count(*) FROM reservations") == 0
    assert (await _reserve(stub, 50, key="r2")).balance.available == 60


async def test_check_and_reserve_on_unknown_account_is_not_found_and_replayed(stub, db):
    """No such account: NOT_FOUND / ACCOUNT_NOT_FOUND, and the key replays it after the account
    is created."""
    error = await expect_error(_reserve(stub, 5, key="r1", account="ghost"))
    _assert_error(error, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", accountId="ghost")
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0

    await _grant(stub, 100, account="ghost")
    replay = await expect_error(_reserve(stub, 5, key="r1", account="ghost"))
    assert (replay.code, replay.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_check_and_reserve_replay_returns_the_same_hold_and_writes_nothing(stub, db):
    """Same key and request: the identical response (same reservation id), no second hold."""
    await _grant(stub, 100)
    first = await _reserve(stub, 30, key="r1", ttl=Duration(seconds=60), metadata={"m": "v"})
    counts = await _row_counts(db)

    replay = await _reserve(stub, 30, key="r1", ttl=Duration(seconds=60), metadata={"m": "v"})

    assert _same(replay, first)
    assert await _row_counts(db) == counts
    assert (await _balance(stub)).reserved == 30


@pytest.mark.parametrize("change", [
    {"amount": 31},
    {"ttl": Duration(seconds=61)},
    {"metadata": {"m": "w"}},
], ids=["amount", "ttl", "metadata"])
async def test_check_and_reserve_key_reused_for_another_request(stub, db, change):
    """Same key with another amount, ttl or metadata: ALREADY_EXISTS, nothing written."""
    await _grant(stub, 100)
    await _reserve(stub, 30, key="r1", ttl=Duration(seconds=60), metadata={"m": "v"})
    counts = await _row_counts(db)
    request = {"amount": 30, "ttl": Duration(seconds=60), "metadata": {"m": "v"}, **change}

    error = await expect_error(_reserve(stub, key="r1", **request))

    _assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                  idempotencyKey="r1")
    assert await _row_counts(db) == counts


# --- Commit ----------------------------------------------------------------------------------


async def test_commit_without_amount_captures_the_held_amount(stub):
    """No amount: the held amount is used, one USAGE entry of -held is written."""
    await _grant(stub, 100)
    hold = (await _reserve(stub, 30)).reservation

    response = await _commit(stub, hold.reservation_id, metadata={"tokens": "1234"})

    committed = response.reservation
    assert committed.reservation_id == hold.reservation_id
    assert committed.status == pb.RESERVATION_STATUS_COMMITTED
    assert (committed.amount, committed.committed_amount) == (30, 30)
    assert committed.HasField("finish_time")
    assert _same(committed.create_time, hold.create_time)
    entry = response.entry
    assert entry.type == pb.ENTRY_TYPE_USAGE
    assert entry.grant_type == pb.GRANT_TYPE_UNSPECIFIED
    assert (entry.amount, entry.balance_after) == (-30, 70)
    assert entry.reservation_id == hold.reservation_id
    assert dict(entry.metadata) == {"tokens": "1234"}
    assert entry.actor == "anonymous"
    assert entry.HasField("create_time")
    assert response.balance == pb.Balance(
        account_id=ACCOUNT, balance=70, reserved=0, available=70, active_reservation_count=0,
        lifetime_granted=100, lifetime_used=30)


async def test_commit_of_less_than_held_releases_the_rest(stub):
    """A smaller amount is captured and the rest of the hold returns to available."""
    await _grant(stub, 100)
    response = await _commit(stub, await _hold_id(stub, 30), 10)
    assert (response.reservation.committed_amount, response.entry.amount) == (10, -10)
    balance = response.balance
    assert (balance.balance, balance.reserved, balance.available) == (90, 0, 90)
    assert balance.lifetime_used == 10


async def test_commit_of_more_than_held_takes_the_difference_from_available(stub):
    """A larger amount is captured when available covers the difference."""
    await _grant(stub, 100)
    response = await _commit(stub, await _hold_id(stub, 30), 80)
    assert (response.reservation.committed_amount, response.entry.amount) == (80, -80)
    assert (response.balance.balance, response.balance.available) == (20, 20)
    assert response.entry.balance_after == 20


async def test_commit_of_more_than_available_covers_fails_and_leaves_the_hold(stub, db):
    """Extra not covered: INSUFFICIENT_CREDITS (requested = the extra), the hold stays ACTIVE
    with its amount and can still be committed."""
    await _grant(stub, 100)
    first = await _hold_id(stub, 30, key="r1")
    await _reserve(stub, 50, key="r2")
    before = await _balance(stub)
    counts = await _row_counts(db)

    error = await expect_error(_commit(stub, first, 61))

    _assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                  accountId=ACCOUNT, available="20", requested="31")
    assert _same(await _balance(stub), before)
    assert await _status_in_db(db, first) == "ACTIVE"
    assert await db.fetchval("SELECT amount FROM reservations WHERE reservation_id = $1::uuid",
                             first) == 30
    assert await _row_counts(db) == counts

    response = await _commit(stub, first, 50)
    assert response.reservation.committed_amount == 50
    assert (response.balance.balance, response.balance.available) == (50, 0)


async def test_commit_repeated_with_the_same_amount_returns_the_same_result(stub, db):
    """A repeated Commit with the same amount returns the same reservation and entry and
    writes nothing; without an amount it matches the held amount."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 30)
    first = await _commit(stub, hold_id)
    counts = await _row_counts(db)

    for amount in (None, 30):
        again = await _commit(stub, hold_id, amount)
        assert _same(again.reservation, first.reservation)
        assert _same(again.entry, first.entry)
        assert _same(again.balance, first.balance)
    assert await _row_counts(db) == counts


async def test_commit_repeat_returns_the_current_balance(stub):
    """A repeated Commit returns the same entry but the balance as of the response."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 30)
    first = await _commit(stub, hold_id, 20)
    await _grant(stub, 5, key="g2")
    again = await _commit(stub, hold_id, 20)
    assert again.entry.entry_id == first.entry.entry_id
    assert again.balance.balance == 85


@pytest.mark.parametrize("amount", [29, 31, 1], ids=["less", "more", "one"])
async def test_commit_repeated_with_another_amount_is_already_committed(stub, db, amount):
    """A committed hold committed again for another amount: RESERVATION_ALREADY_COMMITTED,
    nothing written."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 30)
    await _commit(stub, hold_id)
    counts = await _row_counts(db)

    error = await expect_error(_commit(stub, hold_id, amount))

    _assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED",
                  reservationId=hold_id, committedAmount="30")
    assert await _row_counts(db) == counts


async def test_commit_without_amount_after_a_partial_commit_is_already_committed(stub):
    """No amount means the held amount, which differs from a smaller committed amount."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 30)
    await _commit(stub, hold_id, 10)
    error = await expect_error(_commit(stub, hold_id))
    _assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED",
                  committedAmount="10")


async def test_commit_of_a_released_hold_is_declined(stub, db):
    """Commit after Release: FAILED_PRECONDITION / RESERVATION_RELEASED, no entry."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 30)
    await _release(stub, hold_id)
    error = await expect_error(_commit(stub, hold_id))
    _assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED",
                  reservationId=hold_id)
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE entry_type = 'USAGE'") == 0


@pytest.mark.parametrize("method", ["Commit", "Release"])
async def test_unknown_reservation_is_not_found(stub, db, method):
    """A well-formed id of no hold: NOT_FOUND / RESERVATION_NOT_FOUND."""
    call = getattr(stub, method)
    request = getattr(pb, f"{method}Request")(reservation_id=MISSING_ID)
    error = await expect_error(call(request))
    _assert_error(error, grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND",
                  reservationId=MISSING_ID)
    assert await _row_counts(db) == dict.fromkeys(TABLES, 0)


@pytest.mark.parametrize("method", ["Commit", "Release"])
async def test_hold_past_its_expire_time_is_expired(stub, db, method):
    """Commit or Release after expire_time: RESERVATION_EXPIRED, the hold ends EXPIRED and its
    credits return; asking again gives the same answer."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 30)
    await _make_overdue(db, hold_id)
    call = getattr(stub, method)
    request = getattr(pb, f"{method}Request")(reservation_id=hold_id)

    for _ in range(2):
        error = await expect_error(call(request))
        _assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED",
                      reservationId=hold_id)

    assert await _status_in_db(db, hold_id) == "EXPIRED"
    balance = await _balance(stub)
    assert (balance.balance, balance.reserved, balance.available) == (100, 0, 100)
    assert balance.active_reservation_count == 0
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE entry_type = 'USAGE'") == 0


async def test_commit_accepts_the_reservation_id_in_upper_case(stub):
    """A reservation id is a UUID: its upper-case spelling names the same hold."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 30)
    response = await _commit(stub, hold_id.upper())
    assert response.reservation.reservation_id == hold_id
    assert response.entry.reservation_id == hold_id


# --- Release ---------------------------------------------------------------------------------


async def test_release_voids_the_hold_and_returns_its_credits(stub, db):
    """Release: RELEASED with finish_time, available restored, count decremented, no entry."""
    await _grant(stub, 100)
    await _reserve(stub, 10, key="r0")
    hold = (await _reserve(stub, 30, key="r1")).reservation

    response = await _release(stub, hold.reservation_id, reason="job cancelled")

    released = response.reservation
    assert released.reservation_id == hold.reservation_id
    assert released.status == pb.RESERVATION_STATUS_RELEASED
    assert (released.amount, released.committed_amount) == (30, 0)
    assert released.HasField("finish_time")
    assert _same(released.expire_time, hold.expire_time)
    assert response.balance == pb.Balance(
        account_id=ACCOUNT, balance=100, reserved=10, available=90, active_reservation_count=1,
        lifetime_granted=100)
    assert await db.fetchval(
        "SELECT release_reason FROM reservations WHERE reservation_id = $1::uuid",
        hold.reservation_id) == "job cancelled"
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == 1


async def test_release_repeated_returns_the_same_result(stub, db):
    """A second Release returns the same reservation and balance and changes nothing."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 30)
    first = await _release(stub, hold_id)
    counts = await _row_counts(db)
    again = await _release(stub, hold_id)
    assert _same(again, first)
    assert await _row_counts(db) == counts
    assert (await _balance(stub)).available == 100


async def test_release_of_a_committed_hold_is_declined(stub, db):
    """Release after Commit: FAILED_PRECONDITION / RESERVATION_ALREADY_COMMITTED."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 30)
    await _commit(stub, hold_id, 25)
    error = await expect_error(_release(stub, hold_id))
    _assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED",
                  reservationId=hold_id, committedAmount="25")
    assert await _status_in_db(db, hold_id) == "COMMITTED"
    assert (await _balance(stub)).balance == 75


# --- GetBalance ------------------------------------------------------------------------------


async def test_get_balance_reports_every_field(stub):
    """GetBalance: balance, reserved, available, active holds and lifetime totals."""
    await _grant(stub, 100, key="g1")
    await _grant(stub, 50, key="g2")
    await _reserve(stub, 30, key="r1")
    await _commit(stub, await _hold_id(stub, 20, key="r2"))
    await _release(stub, await _hold_id(stub, 5, key="r3"))

    assert await _balance(stub) == pb.Balance(
        account_id=ACCOUNT, balance=130, reserved=30, available=100, active_reservation_count=1,
        lifetime_granted=150, lifetime_used=20)


async def test_get_balance_of_unknown_account_is_not_found(stub):
    """No such account: NOT_FOUND / ACCOUNT_NOT_FOUND."""
    error = await expect_error(stub.GetBalance(pb.GetBalanceRequest(account_id="ghost")))
    _assert_error(error, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", accountId="ghost")


# --- History ---------------------------------------------------------------------------------


async def _mixed_ledger(stub) -> list[str]:
    """Grant 100, commit 30, grant 50, commit 20 (newest last); returns the hold ids."""
    await _grant(stub, 100, key="g1", grant_type=pb.GRANT_TYPE_SIGNUP)
    first = await _hold_id(stub, 30, key="r1")
    await _commit(stub, first, metadata={"job": "1"})
    await _grant(stub, 50, key="g2", grant_type=pb.GRANT_TYPE_PROMO, reason="promo")
    second = await _hold_id(stub, 20, key="r2")
    await _commit(stub, second)
    return [first, second]


async def test_history_lists_entries_newest_first_with_their_fields(stub):
    """History is newest first; USAGE entries name their hold, GRANT entries their type."""
    first, second = await _mixed_ledger(stub)
    page = await stub.History(pb.HistoryRequest(account_id=ACCOUNT))

    assert page.next_page_token == ""
    summary = [(e.type, e.grant_type, e.amount, e.balance_after, e.reservation_id)
               for e in page.entries]
    assert summary == [
        (pb.ENTRY_TYPE_USAGE, 0, -20, 100, second),
        (pb.ENTRY_TYPE_GRANT, pb.GRANT_TYPE_PROMO, 50, 120, ""),
        (pb.ENTRY_TYPE_USAGE, 0, -30, 70, first),
        (pb.ENTRY_TYPE_GRANT, pb.GRANT_TYPE_SIGNUP, 100, 100, ""),
    ]
    ids = [int(e.entry_id) for e in page.entries]
    assert ids == sorted(ids, reverse=True)
    assert page.entries[1].reason == "promo"
    assert dict(page.entries[2].metadata) == {"job": "1"}
    assert all(e.account_id == ACCOUNT and e.actor == "anonymous" for e in page.entries)
    times = [_seconds(e.create_time) for e in page.entries]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(("types", "expected"), [
    ([pb.ENTRY_TYPE_GRANT], [50, 100]),
    ([pb.ENTRY_TYPE_USAGE], [-20, -30]),
    ([pb.ENTRY_TYPE_GRANT, pb.ENTRY_TYPE_USAGE], [-20, 50, -30, 100]),
], ids=["grant", "usage", "both"])
async def test_history_filters_by_entry_type(stub, types, expected):
    """types keeps only entries of those types."""
    await _mixed_ledger(stub)
    page = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, types=types))
    assert [e.amount for e in page.entries] == expected


async def test_history_filters_by_time_start_inclusive_end_exclusive(stub):
    """start_time keeps entries at or after it, end_time entries strictly before it."""
    for i in range(5):
        await _grant(stub, i + 1, key=f"g{i}")
    entries = list(reversed((await stub.History(pb.HistoryRequest(account_id=ACCOUNT))).entries))
    assert len({_seconds(e.create_time) for e in entries}) == 5

    page = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, start_time=entries[1].create_time, end_time=entries[3].create_time))
    assert [e.amount for e in page.entries] == [3, 2]

    only_start = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, start_time=entries[3].create_time))
    assert [e.amount for e in only_start.entries] == [5, 4]
    only_end = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, end_time=entries[1].create_time))
    assert [e.amount for e in only_end.entries] == [1]


async def test_history_accepts_the_widest_time_range(stub):
    """start_time at year 1 and end_time at the end of year 9999 keep every entry."""
    await _grant(stub, 10)
    page = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, start_time=Timestamp(seconds=-62135596800),
        end_time=Timestamp(seconds=253402300799, nanos=999_999_000)))
    assert [e.amount for e in page.entries] == [10]


async def test_history_of_an_existing_account_with_nothing_matching_is_empty(stub):
    """Filters that match nothing on an existing account give an empty page, not NOT_FOUND."""
    await _grant(stub, 10)
    page = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, types=[pb.ENTRY_TYPE_USAGE]))
    assert (list(page.entries), page.next_page_token) == ([], "")


async def test_history_page_size_defaults_to_50_and_is_capped_at_500(stubs, stub):
    """page_size 0 gives 50 entries, 10000 gives 500; the token continues to the rest."""
    async def grant(i: int) -> None:
        await _grant(stubs[i % len(stubs)], 1, key=f"g{i}")

    for batch in range(0, 510, 170):
        await asyncio.gather(*(grant(i) for i in range(batch, batch + 170)))

    default = await stub.History(pb.HistoryRequest(account_id=ACCOUNT))
    assert len(default.entries) == 50 and default.next_page_token

    capped = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=10000))
    assert len(capped.entries) == 500 and capped.next_page_token
    rest = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, page_size=10000, page_token=capped.next_page_token))
    assert (len(rest.entries), rest.next_page_token) == (10, "")
    ids = [int(e.entry_id) for e in [*capped.entries, *rest.entries]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 510


async def test_history_pages_follow_with_any_page_size(stub):
    """A token continues after the last entry of its page, whatever page size comes next."""
    for i in range(5):
        await _grant(stub, i + 1, key=f"g{i}")
    first = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=2))
    second = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, page_size=3, page_token=first.next_page_token))
    assert [e.amount for e in first.entries] == [5, 4]
    assert [e.amount for e in second.entries] == [3, 2, 1]
    assert second.next_page_token == ""


@pytest.mark.parametrize("token", [
    "not-a-token",
    "!!!!",
    base64.urlsafe_b64encode(b"[1,2,3]").decode(),
    base64.urlsafe_b64encode(b'{"v":2,"after":1,"f":"x"}').decode(),
    base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
], ids=["text", "symbols", "json-list", "wrong-version", "binary"])
async def test_history_malformed_page_token_is_invalid_page_token(stub, token):
    """A token the server never made: INVALID_ARGUMENT / INVALID_PAGE_TOKEN."""
    await _grant(stub, 10)
    error = await expect_error(stub.History(pb.HistoryRequest(account_id=ACCOUNT,
                                                              page_token=token)))
    _assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN",
                  field="page_token")




async def _tampered_history(stub, after: object) -> RpcError:
    for i in range(3):
        await _grant(stub, 1, key=f"g{i}")
    real = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=1))
    return await expect_error(stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, page_size=1, page_token=_page_token(after, real.next_page_token))))


@pytest.mark.parametrize("after", [0, -1, "5", 1.5, None], ids=str)
async def test_history_tampered_page_token_is_invalid_page_token(stub, after):
    """A real token whose position was edited to a non-id: INVALID_PAGE_TOKEN."""
    error = await _tampered_history(stub, after)
    _assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_history_page_token_with_position_past_int64_is_invalid_page_token(stub):
    """A token whose position is no 64-bit entry id is INVALID_PAGE_TOKEN, not INTERNAL."""
    error = await _tampered_history(stub, 2**63)
    _assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_history_page_token_with_boolean_position_is_invalid_page_token(stub):
    """A token whose position is a boolean is malformed: INVALID_PAGE_TOKEN."""
    error = await _tampered_history(stub, True)
    _assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


@pytest.mark.parametrize("other", [
    {"types": [pb.ENTRY_TYPE_GRANT]},
    {"account_id": "acct-2"},
    {"start_time": Timestamp(seconds=1)},
    {"end_time": Timestamp(seconds=4_000_000_000)},
], ids=["types", "account", "start", "end"])
async def test_history_token_used_with_other_filters_is_invalid_page_token(stub, other):
    """A token is bound to its account and filters: reused with others it is rejected."""
    for i in range(3):
        await _grant(stub, 1, key=f"g{i}")
        await _grant(stub, 1, key=f"h{i}", account="acct-2")
    first = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=1))
    assert first.next_page_token
    request = pb.HistoryRequest(account_id=ACCOUNT, page_size=1,
                                page_token=first.next_page_token)
    for name, value in other.items():
        if name == "types":
            request.types.extend(value)
        elif name == "account_id":
            request.account_id = value
        else:
            getattr(request, name).CopyFrom(value)

    error = await expect_error(stub.History(request))
    _assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_history_of_unknown_account_is_not_found(stub):
    """No such account: NOT_FOUND / ACCOUNT_NOT_FOUND."""
    error = await expect_error(stub.History(pb.HistoryRequest(account_id="ghost")))
    _assert_error(error, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", accountId="ghost")


# --- validation ------------------------------------------------------------------------------


def _grant_request(**fields) -> pb.GrantRequest:
    return pb.GrantRequest(**{"account_id": "fresh", "amount": 5, "type": pb.GRANT_TYPE_PROMO,
                              "idempotency_key": "v1", **fields})


def _reserve_request(**fields) -> pb.CheckAndReserveRequest:
    return pb.CheckAndReserveRequest(**{"account_id": ACCOUNT, "amount": 1,
                                        "idempotency_key": "v2", **fields})


def _commit_request(**fields) -> pb.CommitRequest:
    return pb.CommitRequest(**{"reservation_id": "{hold}", **fields})


def _release_request(**fields) -> pb.ReleaseRequest:
    return pb.ReleaseRequest(**{"reservation_id": "{hold}", **fields})


def _history_request(**fields) -> pb.HistoryRequest:
    return pb.HistoryRequest(**{"account_id": ACCOUNT, **fields})


SEVENTEEN_PAIRS = {f"k{i}": "v" for i in range(17)}
BAD_REQUESTS = [
    # Grant
    ("Grant", _grant_request(account_id=""), "account_id"),
    ("Grant", _grant_request(account_id="a" * 129), "account_id"),
    ("Grant", _grant_request(account_id="bad id"), "account_id"),
    ("Grant", _grant_request(account_id="bad/id"), "account_id"),
    ("Grant", _grant_request(account_id="café"), "account_id"),
    ("Grant", _grant_request(idempotency_key=""), "idempotency_key"),
    ("Grant", _grant_request(idempotency_key="k" * 129), "idempotency_key"),
    ("Grant", _grant_request(idempotency_key="key#1"), "idempotency_key"),
    ("Grant", _grant_request(amount=0), "amount"),
    ("Grant", _grant_request(amount=-1), "amount"),
    ("Grant", _grant_request(amount=10**12 + 1), "amount"),
    ("Grant", _grant_request(type=pb.GRANT_TYPE_UNSPECIFIED), "type"),
    ("Grant", _grant_request(type=99), "type"),
    ("Grant", _grant_request(reason="a\x00b"), "reason"),
    ("Grant", _grant_request(reason="r" * 257), "reason"),
    ("Grant", _grant_request(metadata=SEVENTEEN_PAIRS), "metadata"),
    ("Grant", _grant_request(metadata={"bad key": "v"}), "metadata['bad key']"),
    ("Grant", _grant_request(metadata={"": "v"}), "metadata['']"),
    ("Grant", _grant_request(metadata={"k" * 65: "v"}), f"metadata[{'k' * 64!r}]"),
    ("Grant", _grant_request(metadata={"k": "v" * 257}), "metadata['k']"),
    ("Grant", _grant_request(metadata={"k": "v\x07"}), "metadata['k']"),
    # CheckAndReserve
    ("CheckAndReserve", _reserve_request(account_id=""), "account_id"),
    ("CheckAndReserve", _reserve_request(account_id="x" * 129), "account_id"),
    ("CheckAndReserve", _reserve_request(idempotency_key=""), "idempotency_key"),
    ("CheckAndReserve", _reserve_request(idempotency_key="a,b"), "idempotency_key"),
    ("CheckAndReserve", _reserve_request(amount=0), "amount"),
    ("CheckAndReserve", _reserve_request(amount=-1), "amount"),
    ("CheckAndReserve", _reserve_request(amount=10**12 + 1), "amount"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(nanos=500_000_000)), "ttl"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(seconds=0)), "ttl"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(seconds=-1)), "ttl"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(seconds=86401)), "ttl"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(seconds=86400, nanos=1_000_000)), "ttl"),
    ("CheckAndReserve", _reserve_request(metadata=SEVENTEEN_PAIRS), "metadata"),
    ("CheckAndReserve", _reserve_request(metadata={"a/b": "v"}), "metadata['a/b']"),
    ("CheckAndReserve", _reserve_request(metadata={"k": "v" * 257}), "metadata['k']"),
    # Commit
    ("Commit", _commit_request(reservation_id=""), "reservation_id"),
    ("Commit", _commit_request(reservation_id="not-a-uuid"), "reservation_id"),
    ("Commit", _commit_request(reservation_id=MISSING_ID[:-1]), "reservation_id"),
    ("Commit", _commit_request(reservation_id=MISSING_ID + "0"), "reservation_id"),
    ("Commit", _commit_request(reservation_id=MISSING_ID.replace("0", "g")), "reservation_id"),
    ("Commit", _commit_request(amount=0), "amount"),
    ("Commit", _commit_request(amount=-1), "amount"),
    ("Commit", _commit_request(amount=10**12 + 1), "amount"),
    ("Commit", _commit_request(metadata=SEVENTEEN_PAIRS), "metadata"),
    ("Commit", _commit_request(metadata={"k!": "v"}), "metadata['k!']"),
    # Release
    ("Release", _release_request(reservation_id=""), "reservation_id"),
    ("Release", _release_request(reservation_id="12345"), "reservation_id"),
    ("Release", _release_request(reason="\x00"), "reason"),
    ("Release", _release_request(reason="r" * 257), "reason"),
    # GetBalance
    ("GetBalance", pb.GetBalanceRequest(account_id=""), "account_id"),
    ("GetBalance", pb.GetBalanceRequest(account_id="a" * 129), "account_id"),
    ("GetBalance", pb.GetBalanceRequest(account_id="a\nb"), "account_id"),
    # History
    ("History", _history_request(account_id=""), "account_id"),
    ("History", _history_request(account_id="a b"), "account_id"),
    ("History", _history_request(page_size=-1), "page_size"),
    ("History", _history_request(types=[pb.ENTRY_TYPE_UNSPECIFIED]), "types"),
    ("History", _history_request(types=[pb.ENTRY_TYPE_GRANT, 99]), "types"),
    ("History", _history_request(page_token="t" * 513), "page_token"),
    ("History", _history_request(start_time=Timestamp(seconds=100),
                                 end_time=Timestamp(seconds=100)), "end_time"),
    ("History", _history_request(start_time=Timestamp(seconds=200),
                                 end_time=Timestamp(seconds=100)), "end_time"),
]


@pytest.mark.parametrize(("method", "request_message", "field"), BAD_REQUESTS,
                         ids=[f"{i}-{m}-{f}" for i, (m, _, f) in enumerate(BAD_REQUESTS)])
async def test_invalid_request_is_rejected_naming_the_field_and_writes_nothing(
        stub, db, method, request_message, field):
    """Each broken field rule: INVALID_ARGUMENT naming the field, no row in any table."""
    await _grant(stub, 100)
    hold_id = await _hold_id(stub, 10)
    request = type(request_message)()
    request.CopyFrom(request_message)
    if getattr(request, "reservation_id", None) == "{hold}":
        request.reservation_id = hold_id
    counts = await _row_counts(db)

    error = await expect_error(getattr(stub, method)(request))

    _assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", field=field)
    assert field in [name for name, _ in error.field_violations]
    assert await _row_counts(db) == counts
    assert await _status_in_db(db, hold_id) == "ACTIVE"


async def test_every_violation_of_a_request_is_reported_at_once(stub, db):
    """A request breaking several rules lists each field in BadRequest."""
    error = await expect_error(stub.Grant(pb.GrantRequest(
        account_id="", amount=0, type=pb.GRANT_TYPE_UNSPECIFIED, idempotency_key="",
        reason="r" * 257)))
    _assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert {name for name, _ in error.field_violations} == {
        "account_id", "amount", "type", "idempotency_key", "reason"}
    assert all(description for _, description in error.field_violations)
    assert await _row_counts(db) == dict.fromkeys(TABLES, 0)


async def test_values_at_the_limits_are_accepted(stub):
    """128-char ids, amount 10^12, 256-char reason with tab/newline, 16 metadata pairs with
    64-char keys and 256-char values, and TTLs of 1 s and 24 h are all valid."""
    account = "A-z.0_9:@" + "x" * 119
    metadata = {f"{i:02d}" + "k" * 62: "v" * 256 for i in range(16)}
    reason = "line one\tand\r\nline two " + "r" * 232
    response = await _grant(stub, 10**12, key="k" * 128, account=account, reason=reason,
                            metadata=metadata)
    assert (response.entry.amount, response.entry.reason) == (10**12, reason)
    assert dict(response.entry.metadata) == metadata

    for key, ttl in (("t1", Duration(seconds=1)), ("t2", Duration(seconds=86400))):
        hold = (await _reserve(stub, 1, key=key, account=account, ttl=ttl)).reservation
        assert (hold.expire_time.ToDatetime() - hold.create_time.ToDatetime()
                == timedelta(seconds=ttl.seconds))
    assert (await _reserve(stub, 10**12 - 2, key="all", account=account)).balance.available == 0


# --- health and reflection -------------------------------------------------------------------


async def test_health_reports_serving_for_the_server_and_the_service(app):
    """grpc.health.v1 Check is SERVING for "" and for credits.v1.CreditsService."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "credits.v1.CreditsService"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_credits_service(app):
    """Server reflection lists credits.v1.CreditsService and serves its file descriptor."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="credits.v1.CreditsService"),
        ]
        responses = [r async for r in reflection.ServerReflectionInfo(iter(requests))]

    names = {s.name for s in responses[0].list_services_response.service}
    assert {"credits.v1.CreditsService", "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto
