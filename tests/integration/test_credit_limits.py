"""Credit-limit (overdraft) and unlimited accounts against the real server and database: the
floor balance - reserved >= -credit_limit under any concurrency, debt paid first by whatever
credits an account later gets, plan changes taking effect at once, Adjust's allow_negative,
and the ledger's invariants (checked after every test) holding throughout."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits_service.domain.model import CREDIT_LIMIT_UNLIMITED
from tests.grpc_errors import assert_error, expect_error
from tests.ledger_checks import row_counts
from tests.support.calls import (
    adjust,
    commit,
    committed,
    grant,
    refund,
    release,
    reserve,
    transfer,
)
from tests.support.serving import serving

LIMIT = 100  # the example plans' postpaid credit_limit


async def open_account(stub, account: str, plan: str) -> pb.Balance:
    return (await stub.EnsureAccount(pb.EnsureAccountRequest(account_id=account, plan=plan))
            ).balance


async def balance_of(stub, account: str) -> pb.Balance:
    return (await stub.GetBalance(pb.GetBalanceRequest(account_id=account))).balance


async def test_a_credit_limit_account_holds_and_uses_credits_down_to_its_floor(planned, db):
    opened = await open_account(planned, "p1", "postpaid")
    assert (opened.balance, opened.credit_limit, opened.available, opened.unlimited) == (
        0, LIMIT, LIMIT, False)
    held = await reserve(planned, "p1", 60)
    assert held.balance.available == 40 and not held.reservation.draws  # held beyond lots
    error = await expect_error(reserve(planned, "p1", 41))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 accountId="p1", available="40", requested="41")

    used = await commit(planned, held.reservation.reservation_id)
    assert (used.balance.balance, used.balance.debt, used.balance.available) == (-60, 60, 40)
    assert (used.entry.amount, used.entry.balance_after) == (-60, -60)
    last = await reserve(planned, "p1", 40)
    assert last.balance.available == 0
    error = await expect_error(reserve(planned, "p1", 1))
    assert error.reason == "INSUFFICIENT_CREDITS"
    await release(planned, last.reservation.reservation_id)

    # A purchase pays the debt first: the lot records all 100, 40 of it remains.
    bought = await grant(planned, "p1", 100)
    assert (bought.balance.balance, bought.balance.debt) == (40, 0)
    assert (bought.lot.amount, bought.lot.remaining) == (100, 40)
    assert bought.entry.balance_after == 40
    after = await balance_of(planned, "p1")
    assert (after.balance, after.available, after.lifetime_used) == (40, 140, 60)


async def test_reservations_draw_lots_first_and_commit_the_rest_into_debt(planned, db):
    await open_account(planned, "p1", "postpaid")
    lot = (await grant(planned, "p1", 30)).lot
    held = await reserve(planned, "p1", 50)
    assert [(d.lot_id, d.held) for d in held.reservation.draws] == [(lot.lot_id, 30)]
    # Credits granted while the hold is open are free: the commit takes them before debt.
    await grant(planned, "p1", 5)
    used = await commit(planned, held.reservation.reservation_id)
    assert (used.balance.balance, used.balance.debt) == (-15, 15)
    # More than held: the floor still holds (available 85, asks 86 beyond the hold).
    second = await reserve(planned, "p1", 10)
    error = await expect_error(commit(planned, second.reservation.reservation_id, 96))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 accountId="p1", available="75", requested="86")
    used = await commit(planned, second.reservation.reservation_id, 85)
    assert (used.balance.balance, used.balance.available) == (-100, 0)
    # A commit for less than an uncovered hold gives nothing back to lots, and owes less.
    await grant(planned, "p1", 100)
    third = await reserve(planned, "p1", 100)
    used = await commit(planned, third.reservation.reservation_id, 1)
    assert (used.balance.balance, used.balance.debt, used.balance.available) == (-1, 1, 99)


async def test_no_concurrency_takes_a_credit_limit_account_below_its_floor(planned, db):
    """Reservations, commits for more than held, and deductions race on one account with a
    credit limit of 100 and 50 credits of lots, in three waves: whatever wins, balance -
    reserved never goes below -100, and no entry's balance_after does either."""
    await open_account(planned, "p1", "postpaid")
    await grant(planned, "p1", 50)
    rng = random.Random(7)
    outcomes: list[str] = []

    async def one(i: int) -> None:
        if i % 10 == 9:  # 30 deductions of at most 3: less than the account may spend
            try:
                await adjust(planned, "p1", pb.ADJUST_MODE_DEDUCT, rng.randint(1, 3))
                outcomes.append("deducted")
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
                outcomes.append("declined")
            return
        try:
            held = await reserve(planned, "p1", rng.randint(1, 9))
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
            outcomes.append("declined")
            return
        reservation_id = held.reservation.reservation_id
        try:
            await commit(planned, reservation_id, held.reservation.amount + rng.randint(0, 4))
            outcomes.append("used")
        except grpc.aio.AioRpcError as error:  # more than available: the hold stays
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
            await release(planned, reservation_id)
            outcomes.append("declined")

    for wave in range(3):
        await asyncio.gather(*(one(i) for i in range(100 * wave, 100 * wave + 100)))
    final = await balance_of(planned, "p1")
    assert final.reserved == 0
    assert final.balance >= -LIMIT
    assert "declined" in outcomes and "used" in outcomes  # the floor was fought over
    row = await db.fetchrow("SELECT min(balance_after) AS low FROM ledger_entries "
                            "WHERE account_id = 'p1'")
    assert row["low"] >= -LIMIT


async def test_an_unlimited_account_is_never_declined_and_its_usage_is_recorded(planned, db):
    opened = await open_account(planned, "u1", "unlimited")
    assert opened.unlimited and opened.credit_limit == CREDIT_LIMIT_UNLIMITED
    lot = (await grant(planned, "u1", 10)).lot
    for _ in range(3):
        held = await reserve(planned, "u1", 10**12)
        assert not held.reservation.draws  # the plan covers it, not the lots
        await commit(planned, held.reservation.reservation_id)
    used = await balance_of(planned, "u1")
    assert (used.balance, used.lifetime_used, used.debt) == (10 - 3 * 10**12, 3 * 10**12,
                                                             3 * 10**12)
    usages = await planned.History(pb.HistoryRequest(account_id="u1",
                                                     types=[pb.ENTRY_TYPE_USAGE]))
    assert [e.amount for e in usages.entries] == [-10**12] * 3
    # Credits bought meanwhile pay nothing of it: they wait in their lot.
    bought = await grant(planned, "u1", 5)
    assert (bought.lot.remaining, bought.balance.debt) == (5, 3 * 10**12)

    # Leaving the unlimited plan forgives what it used, with one entry; its credits are
    # still there, and the new plan's terms hold at once.
    moved = await planned.ChangePlan(pb.ChangePlanRequest(account_id="u1", plan="team",
                                                          reason="downgrade"))
    [forgiven] = moved.write_off_entries
    assert (forgiven.type, forgiven.amount, forgiven.balance_after, forgiven.lot_id) == (
        pb.ENTRY_TYPE_ADJUSTMENT, 3 * 10**12, 15, "")
    after = await planned.GetBalance(pb.GetBalanceRequest(account_id="u1"))
    assert (after.balance.balance, after.balance.debt, after.balance.credit_limit,
            after.balance.unlimited) == (15, 0, 0, False)
    assert [(x.lot_id, x.remaining) for x in after.lots] == [(lot.lot_id, 10),
                                                             (bought.lot.lot_id, 5)]
    assert after.balance.lifetime_used == 3 * 10**12  # analytics keep the usage
    error = await expect_error(reserve(planned, "u1", 16))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 available="15")


async def test_a_plan_change_moves_the_credit_limit_at_once(planned, db):
    await open_account(planned, "p1", "team")
    error = await expect_error(reserve(planned, "p1", 1))
    assert error.reason == "INSUFFICIENT_CREDITS"
    await planned.ChangePlan(pb.ChangePlanRequest(account_id="p1", plan="postpaid",
                                                  reason="invoiced"))
    held = await reserve(planned, "p1", 70)
    other = await reserve(planned, "p1", 20)
    await commit(planned, held.reservation.reservation_id)
    # Back to a plan without credit: what it owes stays, holds it has still commit, and
    # nothing new is held until its balance is back above zero.
    moved = await planned.ChangePlan(pb.ChangePlanRequest(account_id="p1", plan="team",
                                                          reason="unpaid"))
    assert not moved.write_off_entries
    used = await commit(planned, other.reservation.reservation_id)
    assert (used.balance.balance, used.balance.available) == (-90, -90)
    error = await expect_error(reserve(planned, "p1", 1))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 available="-90")
    await grant(planned, "p1", 91)
    assert (await reserve(planned, "p1", 1)).balance.available == 0


async def test_adjust_deducts_into_debt_within_the_limit_or_past_it_when_allowed(planned, db):
    await open_account(planned, "p1", "postpaid")
    lot = (await grant(planned, "p1", 10)).lot
    deducted = await adjust(planned, "p1", pb.ADJUST_MODE_DEDUCT, 50)
    assert [(e.lot_id, e.amount, e.balance_after) for e in deducted.entries] == [
        (lot.lot_id, -10, 0), ("", -40, -40)]
    assert (deducted.balance.debt, deducted.balance.available) == (40, 60)
    before = await row_counts(db)
    error = await expect_error(adjust(planned, "p1", pb.ADJUST_MODE_DEDUCT, 61))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 available="60", requested="61")
    error = await expect_error(adjust(planned, "p1", pb.ADJUST_MODE_SET, -101))
    assert error.reason == "INSUFFICIENT_CREDITS"
    assert {t: n for t, n in (await row_counts(db)).items() if t != "idempotency_keys"} == {
        t: n for t, n in before.items() if t != "idempotency_keys"}
    past = await adjust(planned, "p1", pb.ADJUST_MODE_SET, -150, allow_negative=True)
    assert (past.balance.balance, past.balance.available) == (-150, -50)
    # An account without credit goes below zero only when allowed.
    await open_account(planned, "t1", "team")
    error = await expect_error(adjust(planned, "t1", pb.ADJUST_MODE_DEDUCT, 1))
    assert error.reason == "INSUFFICIENT_CREDITS"
    owed = await adjust(planned, "t1", pb.ADJUST_MODE_DEDUCT, 5, allow_negative=True)
    assert (owed.balance.balance, owed.balance.debt) == (-5, 5)
    # An addition pays the debt first, the rest in its lot.
    added = await adjust(planned, "t1", pb.ADJUST_MODE_SET, 3)
    assert (added.balance.balance, added.balance.debt) == (3, 0)
    assert (added.lot.amount, added.lot.remaining) == (8, 3)


async def test_transfers_give_only_own_credits_and_pay_the_receiver_s_debt(planned, db):
    await open_account(planned, "giver", "postpaid")
    await grant(planned, "giver", 10)
    await reserve(planned, "giver", 30)  # 10 from its lot, 20 beyond it
    error = await expect_error(transfer(planned, "giver", "friend", 1))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 accountId="giver", available="-20", requested="1")

    await open_account(planned, "owes", "team")
    await adjust(planned, "owes", pb.ADJUST_MODE_DEDUCT, 4, allow_negative=True)
    await grant(planned, "rich", 10)
    moved = await transfer(planned, "rich", "owes", 6)
    assert moved.to_balance.balance == 2 and moved.to_balance.debt == 0
    # The debt is paid from the moved credits in the order they were taken (the welcome
    # credits of rich's plan first, expiring soonest), each lot keeping its expiry.
    lots = (await planned.GetBalance(pb.GetBalanceRequest(account_id="owes"))).lots
    assert [(lot.grant_type, lot.amount, lot.remaining) for lot in lots] == [
        (pb.GRANT_TYPE_SIGNUP, 5, 1), (pb.GRANT_TYPE_PURCHASE, 1, 1)]


async def test_a_refund_pays_the_debt_first_then_goes_to_a_refund_lot(planned, db):
    await open_account(planned, "p1", "postpaid")
    used = await committed(planned, "p1", 30)
    given = await refund(planned, used, 20)
    assert (given.balance.balance, given.balance.debt) == (-10, 10)
    assert (given.lot.grant_type, given.lot.amount, given.lot.remaining) == (
        pb.GRANT_TYPE_REFUND, 20, 0)
    rest = await refund(planned, used)
    assert (rest.balance.balance, rest.balance.debt) == (0, 0)


async def test_closing_an_account_that_owes_forgives_the_debt_with_the_write_off(planned, db):
    await open_account(planned, "p1", "postpaid")
    await grant(planned, "p1", 5)
    await committed(planned, "p1", 25)
    error = await expect_error(planned.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id="p1", status=pb.ACCOUNT_STATUS_CLOSED, reason="gone")))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_EMPTY")
    closed = await planned.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id="p1", status=pb.ACCOUNT_STATUS_CLOSED, reason="gone",
        write_off_balance=True))
    assert [(e.amount, e.balance_after, e.lot_id) for e in closed.write_off_entries] == [
        (20, 0, "")]
    final = await balance_of(planned, "p1")
    assert (final.balance, final.debt) == (0, 0)


async def test_start_up_gives_accounts_their_edited_plan_s_credit_limit(test_settings, db,
                                                                        tmp_path):
    plans = tmp_path / "plans.toml"
    plans.write_text("[plans.default]\ncredit_limit = 10\n[plans.other]\n")
    settings = test_settings.replace(plans_file=str(plans), shutdown_grace_s=1)
    async with serving(settings) as stub:
        await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="a1"))
        await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="a2", plan="other"))
        assert (await balance_of(stub, "a1")).credit_limit == 10
    plans.write_text("[plans.default]\ncredit_limit = 25\n[plans.other]\nunlimited = true\n")
    async with serving(settings) as stub:
        assert (await balance_of(stub, "a1")).credit_limit == 25
        assert (await balance_of(stub, "a2")).unlimited
        assert (await reserve(stub, "a1", 25)).balance.available == 0
    changes = await db.fetchval("SELECT count(*) FROM accounts WHERE credit_limit <> 0")
    assert changes == 2


@pytest.mark.parametrize("plan", ["free", "team"])
async def test_an_account_without_credit_is_declined_as_before(planned, db, plan):
    account = (await planned.EnsureAccount(pb.EnsureAccountRequest(
        account_id="x1", plan=plan))).balance
    error = await expect_error(reserve(planned, "x1", account.balance + 1))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 available=str(account.balance))
