"""Accounts on plans against the real server and database: EnsureAccount's contract, the
welcome grant written once however many calls race to create an account, creation on first
use, and an unknown account's decline left unstored when auto-creation is off (the shared
server's setting)."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import assert_error, expect_error
from tests.ledger_checks import row_counts
from tests.support.calls import (
    adjust,
    committed,
    grant,
    grant_request,
    refund,
    reserve,
    reserve_request,
    transfer,
)


async def welcome_entries(db, account_id: str) -> list:
    return await db.fetch(
        "SELECT * FROM ledger_entries WHERE account_id = $1 AND entry_type = 'GRANT' "
        "AND reason LIKE 'welcome credits%'", account_id)


async def test_ensure_account_creates_on_the_plan_once_and_returns_it_after(planned, db):
    created = await planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1", plan="pro"))
    again = await planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1", plan="free"))

    assert (created.created, again.created) == (True, False)
    assert created.account.plan == again.account.plan == "pro"
    assert created.account.create_time == again.account.create_time
    entry = created.welcome_entry
    assert (entry.type, entry.grant_type, entry.amount, entry.balance_after, entry.reason,
            dict(entry.metadata)) == (pb.ENTRY_TYPE_GRANT, pb.GRANT_TYPE_SIGNUP, 100, 100,
                                      "welcome credits of plan pro", {"plan": "pro"})
    assert not again.HasField("welcome_entry")
    assert created.balance == again.balance and again.balance.available == 100
    assert len(await welcome_entries(db, "u1")) == 1
    row = await db.fetchrow("SELECT plan FROM accounts WHERE account_id = 'u1'")
    assert row["plan"] == "pro"


async def test_the_default_plan_s_welcome_credits_expire_as_the_plan_says(planned, db):
    created = await planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1"))
    assert created.account.plan == "free" and created.balance.balance == 5
    lot = (await planned.GetBalance(pb.GetBalanceRequest(account_id="u1"))).lots[0]
    lifetime_s = lot.expire_time.seconds - lot.create_time.seconds
    assert abs(lifetime_s - 30 * 86_400) <= 1


@pytest.mark.parametrize(("plan", "code", "reason"), [
    ("platinum", grpc.StatusCode.NOT_FOUND, "PLAN_NOT_FOUND"),
    ("no spaces", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
])
async def test_a_plan_that_is_not_there_writes_nothing(planned, db, plan, code, reason):
    before = await row_counts(db)
    error = await expect_error(
        planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1", plan=plan)))
    assert error.code is code and error.reason == reason, error
    if reason == "PLAN_NOT_FOUND":
        assert_error(error, code, reason, plan=plan)
    assert await row_counts(db) == before


async def test_a_bad_account_id_is_refused(planned, db):
    error = await expect_error(planned.EnsureAccount(pb.EnsureAccountRequest(account_id="")))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == ["account_id"]


async def test_every_call_racing_to_create_an_account_finds_one_welcome_grant(planned, db):
    """EnsureAccount, Grant, CheckAndReserve, a batch item and GetBalance, many of each, all
    at once on accounts that do not exist yet: each account gets its welcome credits once."""
    accounts = [f"race-{n}" for n in range(8)]

    def calls_for(account: str) -> list:
        return [
            planned.EnsureAccount(pb.EnsureAccountRequest(account_id=account)),
            planned.Grant(grant_request(account, 7)),
            planned.CheckAndReserve(reserve_request(account, 1)),
            planned.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
                items=[reserve_request(account, 1)])),
            planned.GetBalance(pb.GetBalanceRequest(account_id=account)),
        ]

    answers = await asyncio.gather(
        *(call for _ in range(4) for account in accounts for call in calls_for(account)))

    creators = [a.account.account_id for a in answers
                if isinstance(a, pb.EnsureAccountResponse) and a.created]
    assert len(creators) == len(set(creators))  # no account created twice
    for account in accounts:
        assert len(await welcome_entries(db, account)) == 1, account
        balance = (await planned.GetBalance(pb.GetBalanceRequest(account_id=account))).balance
        assert balance.lifetime_granted == 5 + 4 * 7
        assert balance.reserved == 8 and balance.active_reservation_count == 8


async def test_a_first_reservation_and_a_first_read_create_the_account(planned, db):
    placed = await reserve(planned, "u1", 2)
    assert placed.balance.balance == 5 and placed.balance.available == 3
    read = await planned.GetBalance(pb.GetBalanceRequest(account_id="u2"))
    assert read.balance.balance == 5 and [lot.amount for lot in read.lots] == [5]
    batch = await planned.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
        items=[reserve_request("u3", 5), reserve_request("u3", 1)]))
    assert batch.results[0].response.balance.available == 0
    assert batch.results[1].error.reason == "INSUFFICIENT_CREDITS"
    for account in ("u1", "u2", "u3"):
        assert len(await welcome_entries(db, account)) == 1


async def test_history_never_creates_an_account(planned, db):
    error = await expect_error(planned.History(pb.HistoryRequest(account_id="u1")))
    assert error.reason == "ACCOUNT_NOT_FOUND"
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0


async def test_an_unknown_account_s_decline_is_not_stored_so_its_key_succeeds_later(stub, db):
    """The shared server does not create accounts on first use."""
    key = f"k-{uuid.uuid4()}"
    error = await expect_error(reserve(stub, "later", 3, key=key))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", accountId="later")
    batch_key = f"b-{uuid.uuid4()}"
    item = (await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
        items=[reserve_request("later", 2, key=batch_key)]))).results[0]
    assert item.error.reason == "ACCOUNT_NOT_FOUND"
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0

    await grant(stub, "later", 10)

    placed = await reserve(stub, "later", 3, key=key)
    assert placed.balance.available == 7
    assert (await reserve(stub, "later", 3, key=key)) == placed
    item = (await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
        items=[reserve_request("later", 2, key=batch_key)]))).results[0]
    assert item.response.balance.available == 5


# --- status and plan ---------------------------------------------------------------------


def set_status(stub, account: str, status: int, reason: str = "ops"):
    return stub.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id=account, status=status, reason=reason))


async def test_freezing_stops_new_reservations_only_and_is_recorded(stub, db):
    await grant(stub, "u1", 10)
    held = (await reserve(stub, "u1", 4)).reservation.reservation_id
    frozen = await set_status(stub, "u1", pb.ACCOUNT_STATUS_FROZEN, "fraud check")
    assert frozen.changed and frozen.account.status == pb.ACCOUNT_STATUS_FROZEN

    key = f"k-{uuid.uuid4()}"
    error = await expect_error(reserve(stub, "u1", 1, key=key))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN", accountId="u1")
    item = (await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
        items=[reserve_request("u1", 1)]))).results[0]
    assert item.error.reason == "ACCOUNT_FROZEN"
    committed = await stub.Commit(pb.CommitRequest(reservation_id=held, amount=4))
    assert committed.balance.balance == 6
    assert (await grant(stub, "u1", 4)).balance.balance == 10
    read = await stub.GetBalance(pb.GetBalanceRequest(account_id="u1"))
    assert read.account.status == pb.ACCOUNT_STATUS_FROZEN

    await set_status(stub, "u1", pb.ACCOUNT_STATUS_ACTIVE, "cleared")
    assert (await reserve(stub, "u1", 1, key=key)).balance.available == 9
    changes = await db.fetch("SELECT kind, old_value, new_value, reason, actor "
                             "FROM account_changes ORDER BY change_id")
    assert [tuple(c) for c in changes] == [
        ("STATUS", "ACTIVE", "FROZEN", "fraud check", "anonymous"),
        ("STATUS", "FROZEN", "ACTIVE", "cleared", "anonymous")]


async def test_closing_needs_an_empty_account_and_then_nothing_writes(stub, db):
    await grant(stub, "u1", 3)
    error = await expect_error(set_status(stub, "u1", pb.ACCOUNT_STATUS_CLOSED))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_EMPTY",
                 accountId="u1", balance="3", reserved="0")
    held = (await reserve(stub, "u1", 3)).reservation.reservation_id
    await stub.Commit(pb.CommitRequest(reservation_id=held))
    assert (await set_status(stub, "u1", pb.ACCOUNT_STATUS_CLOSED)).changed
    assert not (await set_status(stub, "u1", pb.ACCOUNT_STATUS_CLOSED)).changed
    before = await row_counts(db)

    for call in (grant(stub, "u1", 1), reserve(stub, "u1", 1),
                 set_status(stub, "u1", pb.ACCOUNT_STATUS_ACTIVE),
                 stub.ChangePlan(pb.ChangePlanRequest(account_id="u1", plan="default",
                                                      reason="x"))):
        error = await expect_error(call)
        assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSED", accountId="u1")
    assert await row_counts(db) == before
    read = await stub.GetBalance(pb.GetBalanceRequest(account_id="u1"))
    assert read.account.status == pb.ACCOUNT_STATUS_CLOSED and read.balance.balance == 0


async def test_a_close_racing_grants_never_leaves_a_closed_account_with_credits(stub, db):
    """Close and grant the same empty account at once, many times: either the close comes
    first and the grant is ACCOUNT_CLOSED, or the grant does and the close ACCOUNT_NOT_EMPTY."""
    for n in range(40):
        account = f"race-{n}"
        await stub.EnsureAccount(pb.EnsureAccountRequest(account_id=account))
        closing, granting = await asyncio.gather(
            set_status(stub, account, pb.ACCOUNT_STATUS_CLOSED), grant(stub, account, 5),
            return_exceptions=True)
        row = await db.fetchrow("SELECT status, balance FROM accounts WHERE account_id = $1",
                                account)
        if isinstance(closing, grpc.aio.AioRpcError):
            assert (await expect_error(_raise(closing))).reason == "ACCOUNT_NOT_EMPTY"
            assert isinstance(granting, pb.GrantResponse)
            assert (row["status"], row["balance"]) == ("ACTIVE", 5)
        else:
            assert (await expect_error(_raise(granting))).reason == "ACCOUNT_CLOSED"
            assert (row["status"], row["balance"]) == ("CLOSED", 0)


async def _raise(error: BaseException):
    raise error


async def test_status_and_plan_requests_are_checked(stub, db):
    await grant(stub, "u1", 1)
    before = await row_counts(db)
    for call, fields in (
            (set_status(stub, "u1", pb.ACCOUNT_STATUS_UNSPECIFIED), ["status"]),
            (set_status(stub, "u1", pb.ACCOUNT_STATUS_FROZEN, reason=""), ["reason"]),
            (set_status(stub, "", pb.ACCOUNT_STATUS_FROZEN), ["account_id"]),
            (stub.ChangePlan(pb.ChangePlanRequest(account_id="u1", reason="x")), ["plan"]),
            (stub.ChangePlan(pb.ChangePlanRequest(account_id="u1", plan="a b", reason="")),
             ["plan", "reason"])):
        error = await expect_error(call)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert sorted(field for field, _ in error.field_violations) == fields
    for call in (set_status(stub, "nobody", pb.ACCOUNT_STATUS_FROZEN),
                 stub.ChangePlan(pb.ChangePlanRequest(account_id="nobody", plan="default",
                                                      reason="x"))):
        assert (await expect_error(call)).reason == "ACCOUNT_NOT_FOUND"
    error = await expect_error(stub.ChangePlan(pb.ChangePlanRequest(
        account_id="u1", plan="gold", reason="x")))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "PLAN_NOT_FOUND", plan="gold")
    assert await row_counts(db) == before


async def test_change_plan_moves_between_the_example_plans(planned, db):
    await planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1", plan="team"))
    moved = await planned.ChangePlan(pb.ChangePlanRequest(account_id="u1", plan="pro",
                                                          reason="upgrade"))
    assert moved.changed and moved.account.plan == "pro"
    read = await planned.GetBalance(pb.GetBalanceRequest(account_id="u1"))
    assert read.account.plan == "pro" and read.balance.balance == 0
    assert len(await welcome_entries(db, "u1")) == 0


# --- Adjust ------------------------------------------------------------------------------


async def test_adjust_add_deduct_set_write_entries_with_reason_and_actor(stub, db):
    await grant(stub, "u1", 10, priority=10)
    added = await adjust(stub, "u1", pb.ADJUST_MODE_ADD, 5)
    assert added.balance.balance == 15 and added.balance.lifetime_granted == 10
    assert added.entries[0].type == pb.ENTRY_TYPE_ADJUSTMENT
    assert added.entries[0].lot_id == added.lot.lot_id and added.lot.grant_entry_id == ""

    deducted = await adjust(stub, "u1", pb.ADJUST_MODE_DEDUCT, 12)
    assert [(e.amount, e.balance_after) for e in deducted.entries] == [(-10, 5), (-2, 3)]
    assert {e.reason for e in deducted.entries} == {"ticket 7"}
    assert {e.actor for e in deducted.entries} == {"anonymous"}

    set_to = await adjust(stub, "u1", pb.ADJUST_MODE_SET, 20, expected_balance=3)
    assert set_to.balance.balance == 20
    history = await stub.History(pb.HistoryRequest(account_id="u1",
                                                   types=[pb.ENTRY_TYPE_ADJUSTMENT]))
    assert [e.amount for e in history.entries] == [17, -2, -10, 5]


async def test_adjust_declines_and_bad_requests_write_nothing(stub, db):
    await grant(stub, "u1", 10)
    await reserve(stub, "u1", 8)
    before = await row_counts(db)
    error = await expect_error(adjust(stub, "u1", pb.ADJUST_MODE_DEDUCT, 3))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 accountId="u1", available="2", requested="3")
    error = await expect_error(adjust(stub, "u1", pb.ADJUST_MODE_SET, 0, expected_balance=9))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "BALANCE_MISMATCH",
                 accountId="u1", expectedBalance="9", balance="10")
    after_declines = await row_counts(db)
    assert {t: n for t, n in after_declines.items() if t != "idempotency_keys"} == {
        t: n for t, n in before.items() if t != "idempotency_keys"}
    for request, fields in (
            (pb.AdjustRequest(account_id="u1", amount=1, idempotency_key="k", reason="r"),
             ["mode"]),
            (pb.AdjustRequest(account_id="u1", mode=pb.ADJUST_MODE_ADD, amount=0,
                              idempotency_key="k", reason=""), ["amount", "reason"]),
            (pb.AdjustRequest(account_id="u1", mode=pb.ADJUST_MODE_DEDUCT, amount=1,
                              idempotency_key="k", reason="r", expected_balance=1),
             ["expected_balance"]),
            (pb.AdjustRequest(account_id="u1", mode=pb.ADJUST_MODE_SET, amount=-10**15 - 1,
                              idempotency_key="", reason="r"), ["amount", "idempotency_key"]),
            (pb.AdjustRequest(account_id="u1", mode=pb.ADJUST_MODE_ADD, amount=1,
                              idempotency_key="k", reason="r", allow_negative=True),
             ["allow_negative"])):
        error = await expect_error(stub.Adjust(request))
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert sorted(field for field, _ in error.field_violations) == fields
    error = await expect_error(adjust(stub, "nobody", pb.ADJUST_MODE_ADD, 1))
    assert error.reason == "ACCOUNT_NOT_FOUND"
    assert await row_counts(db) == after_declines


async def test_two_operators_setting_one_balance_from_what_they_saw_cannot_both_win(stub, db):
    """Many admins read the balance and SET it from what they read, all at once: exactly one
    of each round succeeds, the others get BALANCE_MISMATCH, and the balance is the winner's."""
    await grant(stub, "u1", 100)
    for round_number in range(10):
        seen = (await stub.GetBalance(pb.GetBalanceRequest(account_id="u1"))).balance.balance
        targets = [seen + n - 4 for n in range(8)]
        answers = await asyncio.gather(
            *(adjust(stub, "u1", pb.ADJUST_MODE_SET, target, expected_balance=seen)
              for target in targets), return_exceptions=True)
        winners = [t for t, a in zip(targets, answers, strict=True)
                   if isinstance(a, pb.AdjustResponse)]
        assert len(winners) == 1, (round_number, answers)
        for answer in answers:
            if not isinstance(answer, pb.AdjustResponse):
                assert (await expect_error(_raise(answer))).reason == "BALANCE_MISMATCH"
        balance = (await stub.GetBalance(pb.GetBalanceRequest(account_id="u1"))).balance
        assert balance.balance == winners[0]


# --- Transfer ----------------------------------------------------------------------------


async def test_a_transfer_moves_credits_with_their_expiry_once_per_key(stub, db):
    expiring = (await grant(stub, "a", 3, priority=10,
                            expire_time=Timestamp(seconds=int(time.time()) + 3600))).lot
    await grant(stub, "a", 10, priority=20)
    await grant(stub, "b", 1)

    moved = await transfer(stub, "a", "b", 5, key="t1")
    again = await transfer(stub, "a", "b", 5, key="t1")

    assert again == moved
    assert [e.amount for e in moved.from_entries] == [-3, -2]
    assert [e.amount for e in moved.to_entries] == [3, 2]
    assert (moved.from_balance.balance, moved.to_balance.balance) == (8, 6)
    lots = (await stub.GetBalance(pb.GetBalanceRequest(account_id="b"))).lots
    arrived = {lot.lot_id: lot for lot in lots}
    first = arrived[moved.to_entries[0].lot_id]
    assert first.expire_time == expiring.expire_time and first.priority == 10
    rows = await db.fetch("SELECT entry_type, transfer_id::text FROM ledger_entries "
                          "WHERE transfer_id IS NOT NULL")
    assert {r["transfer_id"] for r in rows} == {moved.transfer_id} and len(rows) == 4


async def test_transfer_requests_and_declines(stub, db):
    await grant(stub, "a", 10)
    await grant(stub, "b", 1)
    await reserve(stub, "a", 8)
    before = await row_counts(db)
    error = await expect_error(transfer(stub, "a", "b", 3))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 accountId="a", available="2", requested="3")
    error = await expect_error(transfer(stub, "a", "a", 1))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == ["to_account_id"]
    assert (await expect_error(transfer(stub, "a", "nobody", 1))).reason == "ACCOUNT_NOT_FOUND"
    after = await row_counts(db)
    assert after["idempotency_keys"] == before["idempotency_keys"] + 1  # the decline's
    assert {t: n for t, n in after.items() if t != "idempotency_keys"} == {
        t: n for t, n in before.items() if t != "idempotency_keys"}


async def test_transfers_racing_both_ways_never_deadlock_and_keep_every_credit(stub, db):
    """Thousands of transfers A->B and B->A at once: none fails (the accounts are locked in one
    order), every one is applied once, and the two balances still add up."""
    await grant(stub, "a", 1_000_000)
    await grant(stub, "b", 1_000_000)
    rounds, per_round = 20, 100
    moved = {"a": 0, "b": 0}
    for _ in range(rounds):
        calls = [transfer(stub, *(("a", "b") if n % 2 else ("b", "a")), 1 + n % 7)
                 for n in range(per_round)]
        answers = await asyncio.gather(*calls)
        for answer in answers:
            giver = answer.from_entries[0].account_id
            moved[giver] += -sum(e.amount for e in answer.from_entries)
    a = (await stub.GetBalance(pb.GetBalanceRequest(account_id="a"))).balance.balance
    b = (await stub.GetBalance(pb.GetBalanceRequest(account_id="b"))).balance.balance
    assert a + b == 2_000_000
    assert a == 1_000_000 - moved["a"] + moved["b"]
    transfers = await db.fetchval(
        "SELECT count(DISTINCT transfer_id) FROM ledger_entries WHERE transfer_id IS NOT NULL")
    assert transfers == rounds * per_round


# --- Refund ------------------------------------------------------------------------------


async def test_a_refund_gives_usage_back_to_its_lots_once_per_key(stub, db):
    lot = (await grant(stub, "u1", 10)).lot
    used = await committed(stub, "u1", 6)
    given = await refund(stub, used, 4, key="r1")
    assert await refund(stub, used, 4, key="r1") == given
    assert [(e.type, e.lot_id, e.amount) for e in given.entries] == [
        (pb.ENTRY_TYPE_REFUND, lot.lot_id, 4)]
    assert given.balance.balance == 8 and given.reservation.refunded_amount == 4
    usage_id = (await stub.History(pb.HistoryRequest(
        account_id="u1", types=[pb.ENTRY_TYPE_USAGE]))).entries[0].entry_id
    rest = await stub.Refund(pb.RefundRequest(usage_entry_id=usage_id, idempotency_key="r2"))
    assert rest.reservation.refunded_amount == 6 and rest.balance.balance == 10
    error = await expect_error(refund(stub, used, 1))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_USAGE",
                 reservationId=used, committedAmount="6", refundedAmount="6", requested="1")
    balance = await stub.GetBalance(pb.GetBalanceRequest(account_id="u1"))
    assert balance.balance.lifetime_used == 6


async def test_partial_refunds_racing_never_exceed_what_was_captured(stub, db):
    """Many partial refunds of one reservation at once: those that fit succeed, the rest are
    declined, and the refunded total is exactly the committed amount, never more."""
    await grant(stub, "u1", 1000)
    for _ in range(5):
        used = await committed(stub, "u1", 50)
        answers = await asyncio.gather(*(refund(stub, used, 3) for _ in range(30)),
                                       return_exceptions=True)
        given = [a for a in answers if isinstance(a, pb.RefundResponse)]
        assert len(given) == 16  # 16 x 3 = 48 <= 50 < 17 x 3
        for answer in answers:
            if not isinstance(answer, pb.RefundResponse):
                assert (await expect_error(_raise(answer))).reason == "REFUND_EXCEEDS_USAGE"
        row = await db.fetchrow("SELECT refunded_amount FROM reservations "
                                "WHERE reservation_id = $1::uuid", used)
        assert row["refunded_amount"] == 48


async def test_refund_requests_and_declines(stub, db):
    await grant(stub, "u1", 10)
    active = (await reserve(stub, "u1", 2)).reservation.reservation_id
    error = await expect_error(refund(stub, active, key="early"))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_NOT_COMMITTED",
                 reservationId=active, status="ACTIVE")
    await stub.Commit(pb.CommitRequest(reservation_id=active))
    assert (await refund(stub, active, key="early")).reservation.refunded_amount == 2
    missing = str(uuid.uuid4())
    assert (await expect_error(refund(stub, missing))).reason == "RESERVATION_NOT_FOUND"
    for request, field in (
            (pb.RefundRequest(idempotency_key="k"), "target"),
            (pb.RefundRequest(reservation_id="nope", idempotency_key="k"), "reservation_id"),
            (pb.RefundRequest(usage_entry_id="x1", idempotency_key="k"), "usage_entry_id"),
            (pb.RefundRequest(reservation_id=active, idempotency_key="k", amount=0), "amount")):
        error = await expect_error(stub.Refund(request))
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in error.field_violations] == [field]
    error = await expect_error(stub.Refund(pb.RefundRequest(usage_entry_id="99999",
                                                            idempotency_key="k2")))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "ENTRY_NOT_FOUND", entryId="99999")


# --- lifetime totals and History by grant type --------------------------------------------


async def test_get_balance_totals_every_kind_of_entry(planned, db):
    await planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1", plan="pro"))  # 100
    await grant(planned, "u1", 40, grant_type=pb.GRANT_TYPE_PURCHASE)
    await grant(planned, "u1", 7, grant_type=pb.GRANT_TYPE_PROMO)
    await grant(planned, "u1", 3, grant_type=pb.GRANT_TYPE_SUBSCRIPTION)
    used = await committed(planned, "u1", 20)
    await refund(planned, used, 5)
    await adjust(planned, "u1", pb.ADJUST_MODE_ADD, 4)
    await adjust(planned, "u1", pb.ADJUST_MODE_DEDUCT, 2)
    await transfer(planned, "u1", "u2", 6)

    totals = (await planned.GetBalance(pb.GetBalanceRequest(account_id="u1"))).totals
    assert dict(totals.granted_by_type) == {"GRANT_TYPE_SIGNUP": 100, "GRANT_TYPE_PURCHASE": 40,
                                            "GRANT_TYPE_PROMO": 7, "GRANT_TYPE_SUBSCRIPTION": 3}
    assert (totals.purchased, totals.granted_free, totals.refunded, totals.used) == (
        40, 107, 5, 20)
    assert (totals.adjusted_in, totals.adjusted_out, totals.transferred_out) == (4, 2, 6)
    received = (await planned.GetBalance(pb.GetBalanceRequest(account_id="u2"))).totals
    assert received.transferred_in == 6 and received.granted_by_type["GRANT_TYPE_SIGNUP"] == 5


async def test_history_keeps_only_the_grant_types_asked_for(stub, db):
    await grant(stub, "u1", 5, grant_type=pb.GRANT_TYPE_PROMO)
    await grant(stub, "u1", 7, grant_type=pb.GRANT_TYPE_PURCHASE)
    await grant(stub, "u1", 9, grant_type=pb.GRANT_TYPE_PROMO)
    promos = await stub.History(pb.HistoryRequest(
        account_id="u1", grant_types=[pb.GRANT_TYPE_PROMO], page_size=1))
    assert [e.amount for e in promos.entries] == [9]
    rest = await stub.History(pb.HistoryRequest(
        account_id="u1", grant_types=[pb.GRANT_TYPE_PROMO], page_size=1,
        page_token=promos.next_page_token))
    assert [e.amount for e in rest.entries] == [5] and not rest.next_page_token
    error = await expect_error(stub.History(pb.HistoryRequest(
        account_id="u1", page_token=promos.next_page_token)))
    assert error.reason == "INVALID_PAGE_TOKEN"  # a token only works for its filters
    error = await expect_error(stub.History(pb.HistoryRequest(
        account_id="u1", grant_types=[pb.GRANT_TYPE_UNSPECIFIED])))
    assert [field for field, _ in error.field_violations] == ["grant_types"]


async def test_closing_with_a_write_off_leaves_a_closed_empty_account(stub, db):
    await grant(stub, "u1", 3, priority=10)
    await grant(stub, "u1", 4, priority=20)
    closed = await stub.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id="u1", status=pb.ACCOUNT_STATUS_CLOSED, reason="user left",
        write_off_balance=True))
    assert closed.changed and closed.account.status == pb.ACCOUNT_STATUS_CLOSED
    assert [(e.amount, e.balance_after) for e in closed.write_off_entries] == [(-3, 4), (-4, 0)]
    again = await stub.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id="u1", status=pb.ACCOUNT_STATUS_CLOSED, reason="user left",
        write_off_balance=True))
    assert not again.changed and not again.write_off_entries
    balance = await stub.GetBalance(pb.GetBalanceRequest(account_id="u1"))
    assert balance.balance.balance == 0 and balance.totals.adjusted_out == 7
    error = await expect_error(stub.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id="u1", status=pb.ACCOUNT_STATUS_FROZEN, reason="x", write_off_balance=True)))
    assert [field for field, _ in error.field_violations] == ["write_off_balance"]
