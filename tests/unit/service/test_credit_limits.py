"""Credit limits and unlimited accounts, as rules on the fake storage: what lots a hold draws
and what it holds beyond them, what a commit takes into debt, what pays the debt back, and
how far below zero an account may go. tests/integration/test_credit_limits.py proves the SQL
and the races."""

from __future__ import annotations

import asyncio
import tomllib

import pytest

from credits_service.domain import errors
from credits_service.domain.commands import (
    AdjustCommand,
    AdjustMode,
    ChangePlanCommand,
    EnsureAccountCommand,
)
from credits_service.domain.model import CREDIT_LIMIT_UNLIMITED, EntryType
from credits_service.domain.plans import read_plans
from tests.unit.service.conftest import Calls, ledger_over
from tests.unit.service.test_refunds import refund

PLANS = read_plans(tomllib.loads("""
    [plans.default]
    [plans.postpaid]
    credit_limit = 50
    [plans.unlimited]
    unlimited = true
"""), "production", "test")


@pytest.fixture
def on_plans(storage, metrics) -> Calls:
    return Calls(ledger_over(storage, metrics, plans=PLANS, auto_create_accounts=True),
                 storage.clock)


async def opened(calls: Calls, account_id: str, plan: str):
    return await calls.ledger.ensure_account(EnsureAccountCommand(account_id, plan), "api")


async def test_a_hold_draws_the_lots_then_holds_the_rest_beyond_them(on_plans, storage):
    await opened(on_plans, "p", "postpaid")
    lot = (await on_plans.grant("p", 10)).lot.lot_id
    held = await on_plans.reserve("p", 40)
    assert [(d.lot_id, d.held) for d in held.reservation.draws] == [(lot, 10)]
    assert (held.balance.reserved, held.balance.available) == (40, 20)
    with pytest.raises(errors.InsufficientCredits):
        await on_plans.reserve("p", 21)
    released = await on_plans.release(held.reservation.reservation_id)
    assert released.balance.available == 60 and storage.lots[lot].held == 0


async def test_a_commit_takes_free_lots_before_debt_and_a_grant_pays_the_debt(on_plans, storage):
    await opened(on_plans, "p", "postpaid")
    held = await on_plans.reserve("p", 30)
    late = (await on_plans.grant("p", 12)).lot.lot_id  # free when the commit comes
    used = await on_plans.commit(held.reservation.reservation_id, 30)
    assert (used.balance.balance, used.balance.debt) == (-18, 18)
    assert storage.lots[late].remaining == 0
    paid = await on_plans.grant("p", 20)
    assert (paid.balance.balance, paid.balance.debt) == (2, 0)
    assert (paid.lot.amount, paid.lot.remaining) == (20, 2)
    assert storage.tables.lots[paid.lot.lot_id].repaid == 18


async def test_an_unlimited_account_is_never_declined_nor_takes_its_lots(on_plans, storage):
    account = await opened(on_plans, "u", "unlimited")
    assert account.balance.unlimited and account.balance.credit_limit == CREDIT_LIMIT_UNLIMITED
    lot = (await on_plans.grant("u", 3)).lot.lot_id
    for n in range(5):  # every other one for more than held: decided alone, no lot either
        held = await on_plans.reserve("u", 10**12 - 1)
        await on_plans.commit(held.reservation.reservation_id, 10**12 - 1 + n % 2)
    assert storage.lots[lot].remaining == 3  # the plan pays, not the lots
    assert (await on_plans.grant("u", 2)).lot.remaining == 2  # nor do later credits
    moved = await on_plans.ledger.change_plan(ChangePlanCommand("u", "default", "x"), "ops")
    [forgiven] = moved.write_off_entries
    assert (forgiven.entry_type, forgiven.amount, forgiven.lot_id) == (
        EntryType.ADJUSTMENT, 5 * 10**12 - 3, None)


async def test_a_deduction_stops_at_the_floor_unless_allowed(on_plans):
    await opened(on_plans, "p", "postpaid")
    await on_plans.grant("p", 5)

    def deduct(amount: int, allow_negative: bool = False) -> AdjustCommand:
        return AdjustCommand("p", AdjustMode.DEDUCT, amount, on_plans.key(), "fix",
                             allow_negative=allow_negative)

    with pytest.raises(errors.InsufficientCredits):
        await on_plans.ledger.adjust(deduct(56), "ops")
    at_floor = await on_plans.ledger.adjust(deduct(55), "ops")
    assert [(e.amount, e.lot_id is None) for e in at_floor.entries] == [(-5, False),
                                                                        (-50, True)]
    assert (at_floor.balance.balance, at_floor.balance.available) == (-50, 0)
    past = await on_plans.ledger.adjust(deduct(7, allow_negative=True), "ops")
    assert (past.balance.balance, past.balance.debt) == (-57, 57)


async def test_commits_held_beyond_lots_are_decided_in_groups(on_plans, storage, metrics):
    await opened(on_plans, "u", "unlimited")
    await opened(on_plans, "v", "unlimited")
    held = [(await on_plans.reserve(account, 7)).reservation.reservation_id
            for account in ("u", "v") for _ in range(5)]

    used = await asyncio.gather(*(on_plans.commit(r) for r in held))

    assert metrics.groups["Commit"] == [1, 9]
    assert [u.balance.debt for u in used[:5]] == [7, 14, 21, 28, 35]
    assert storage.accounts["u"].debt == storage.accounts["v"].debt == 35
    assert {storage.tables.reservations[r].debt_amount for r in held} == {7}


async def test_a_grouped_commit_takes_free_lots_given_back_or_granted_before_debt(
        on_plans, storage):
    """Commits held beyond lots on an account with free credits, or beside a commit of the
    group giving credits back, run alone: the free credits go first, as one by one."""
    await opened(on_plans, "p", "postpaid")
    lot = (await on_plans.grant("p", 10)).lot.lot_id
    small = (await on_plans.reserve("p", 10)).reservation.reservation_id  # the whole lot
    beyond = (await on_plans.reserve("p", 8)).reservation.reservation_id  # no lot left
    given_back, owing = await asyncio.gather(on_plans.commit(small, 4),
                                             on_plans.commit(beyond))
    assert given_back.balance.balance == 6
    assert (owing.balance.balance, owing.balance.debt) == (-2, 2)
    assert storage.lots[lot].remaining == 0

    more = [(await on_plans.reserve("p", 3)).reservation.reservation_id for _ in range(2)]
    granted = (await on_plans.grant("p", 5)).lot.lot_id  # pays 2, 3 stay free
    await asyncio.gather(*(on_plans.commit(r) for r in more))
    assert storage.lots[granted].remaining == 0  # taken before going into debt again
    assert (storage.accounts["p"].balance, storage.accounts["p"].debt) == (-3, 3)


async def test_a_refund_of_unlimited_usage_comes_off_the_debt_the_plan_covered(
        on_plans, storage):
    await opened(on_plans, "u", "unlimited")
    held = await on_plans.reserve("u", 100)
    await on_plans.commit(held.reservation.reservation_id)
    given = await refund(on_plans, held.reservation.reservation_id, 30)
    assert (given.balance.balance, given.balance.debt) == (-70, 70)
    assert (given.lot.amount, given.lot.remaining) == (30, 0)
    moved = await on_plans.ledger.change_plan(ChangePlanCommand("u", "default", "x"), "ops")
    assert moved.write_off_entries[0].amount == 70
    assert storage.accounts["u"].balance == 0  # nothing refunded and forgiven twice


async def test_no_deduction_takes_a_balance_below_the_ledger_s_floor(on_plans, storage):
    await opened(on_plans, "p", "postpaid")
    near = AdjustCommand("p", AdjustMode.SET, -(10**15) + 5, on_plans.key(), "fix",
                         allow_negative=True)
    await on_plans.ledger.adjust(near, "ops")
    with pytest.raises(errors.InsufficientCredits) as declined:
        await on_plans.ledger.adjust(AdjustCommand(
            "p", AdjustMode.DEDUCT, 6, on_plans.key(), "fix", allow_negative=True), "ops")
    assert declined.value.metadata["available"] == "5"
    assert storage.accounts["p"].balance == -(10**15) + 5
