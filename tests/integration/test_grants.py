"""The gRPC contract of Grant against the real server and database: what a grant writes and
returns, its idempotent replay, a key reused for another request, and the balance cap."""

from __future__ import annotations

import time

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import assert_error, expect_error
from tests.ledger_checks import row_counts
from tests.support.calls import balance_of, commit, grant, place_reservation, reserve
from tests.support.messages import same, seconds

ACCOUNT = "acct-1"


async def test_grant_creates_the_account_and_returns_the_entry_and_balance(stub, db):
    """A first grant writes a GRANT entry with every field set and creates the account."""
    before = time.time()
    response = await grant(stub, ACCOUNT, 100, grant_type=pb.GRANT_TYPE_SIGNUP, reason="welcome",
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
    assert before - 60 < seconds(entry.create_time) < time.time() + 60
    assert response.balance == pb.Balance(
        account_id=ACCOUNT, balance=100, reserved=0, available=100, active_reservation_count=0,
        lifetime_granted=100, lifetime_used=0)
    assert await db.fetchval("SELECT balance FROM accounts WHERE account_id = $1", ACCOUNT) == 100


async def test_second_grant_adds_to_the_balance(stub):
    """A second grant on the account adds its amount to balance and lifetime_granted."""
    await grant(stub, ACCOUNT, 100, key="g1")
    response = await grant(stub, ACCOUNT, 50, key="g2")
    assert response.entry.balance_after == 150
    assert (response.balance.balance, response.balance.lifetime_granted) == (150, 150)
    assert (await balance_of(stub, ACCOUNT)).available == 150


async def test_grant_replay_returns_the_identical_response_and_writes_nothing(stub, db):
    """Same key and request: the original response byte for byte, no new rows."""
    first = await grant(stub, ACCOUNT, 100, key="g1", reason="r", metadata={"a": "1", "b": "2"})
    await grant(stub, ACCOUNT, 5, key="g2")
    counts = await row_counts(db)

    replay = await grant(stub, ACCOUNT, 100, key="g1", reason="r", metadata={"b": "2", "a": "1"})

    assert same(replay, first)
    assert replay.balance.balance == 100
    assert await row_counts(db) == counts


@pytest.mark.parametrize("change", [
    {"amount": 101},
    {"account": "acct-2"},
    {"grant_type": pb.GRANT_TYPE_PROMO},
    {"reason": "other"},
    {"metadata": {"a": "2"}},
], ids=["amount", "account", "type", "reason", "metadata"])
async def test_grant_key_reused_for_another_request_is_already_exists(stub, db, change):
    """Same key with any field changed: ALREADY_EXISTS / IDEMPOTENCY_KEY_REUSED, no rows."""
    await grant(stub, ACCOUNT, 100, key="g1", reason="r", metadata={"a": "1"})
    counts = await row_counts(db)
    request = {"account": ACCOUNT, "amount": 100, "reason": "r", "metadata": {"a": "1"},
               **change}

    error = await expect_error(grant(stub, key="g1", **request))

    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                 idempotencyKey="g1")
    assert await row_counts(db) == counts


async def test_key_used_by_grant_is_reused_when_sent_to_check_and_reserve(stub, db):
    """Keys are shared across methods: a Grant key sent to CheckAndReserve is reused."""
    await grant(stub, ACCOUNT, 100, key="shared")
    counts = await row_counts(db)
    error = await expect_error(reserve(stub, ACCOUNT, 10, key="shared"))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert await row_counts(db) == counts


@pytest.mark.parametrize("grant_type", [v for v in pb.GrantType.values() if v],
                         ids=[n for n in pb.GrantType.keys() if n != "GRANT_TYPE_UNSPECIFIED"])
async def test_every_grant_type_is_accepted_and_stored(stub, grant_type):
    """Each GrantType other than UNSPECIFIED is accepted and comes back in History."""
    response = await grant(stub, ACCOUNT, 7, grant_type=grant_type)
    assert response.entry.grant_type == grant_type
    history = await stub.History(pb.HistoryRequest(account_id=ACCOUNT))
    assert [e.grant_type for e in history.entries] == [grant_type]


async def test_grant_past_the_balance_cap_is_declined_and_the_decline_replayed(stub, db):
    """A grant taking the balance past 10^15 is BALANCE_LIMIT_EXCEEDED, writes no entry, and
    its key replays the decline even once the grant would fit."""
    cap = 10**15
    await grant(stub, ACCOUNT, 10, key="seed")
    await db.execute(
        "UPDATE ledger_entries SET amount = $1, balance_after = $1 WHERE account_id = $2",
        cap - 5, ACCOUNT)
    await db.execute(
        "UPDATE accounts SET balance = $1, lifetime_granted = $1 WHERE account_id = $2",
        cap - 5, ACCOUNT)
    await db.execute(
        "UPDATE credit_lots SET amount = $1, remaining = $1 WHERE account_id = $2",
        cap - 5, ACCOUNT)
    await db.execute("UPDATE account_totals SET credits = $1 WHERE account_id = $2",
                     cap - 5, ACCOUNT)
    entries = await db.fetchval("SELECT count(*) FROM ledger_entries")

    error = await expect_error(grant(stub, ACCOUNT, 10, key="over"))

    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "BALANCE_LIMIT_EXCEEDED",
                 accountId=ACCOUNT, balance=str(cap - 5), requested="10",
                 balanceMax=str(cap))
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == entries
    assert (await grant(stub, ACCOUNT, 5, key="fits")).balance.balance == cap

    await commit(stub, await place_reservation(stub, ACCOUNT, 100))
    replay = await expect_error(grant(stub, ACCOUNT, 10, key="over"))
    assert (replay.reason, replay.metadata) == (error.reason, error.metadata)
    assert (await balance_of(stub, ACCOUNT)).balance == cap - 100
