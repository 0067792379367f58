"""Accounts on plans: created once, by whichever call comes first, with the plan's welcome
credits; an unknown plan writes nothing; without auto-creation an unknown account's decline
is not stored under its key."""

from __future__ import annotations

import tomllib
from datetime import timedelta

import pytest

from credits_service.domain import errors
from credits_service.domain.commands import (
    BalanceQuery,
    ChangePlanCommand,
    EnsureAccountCommand,
    HistoryQuery,
    SetAccountStatusCommand,
)
from credits_service.domain.model import AccountStatus, EntryType, GrantType
from credits_service.domain.plans import read_plans
from tests.unit.service.conftest import Calls, ledger_over

PLANS = read_plans(tomllib.loads("""
    default_plan = "free"
    [plans.free]
    welcome_credits = 5
    welcome_expire_after_s = 3600
    [plans.pro]
    welcome_credits = 100
    welcome_grant_type = "PROMO"
    welcome_priority = 10
    [plans.team]
"""), "production", "test")


@pytest.fixture
def on_plans(storage, metrics) -> Calls:
    """Calls to a ledger with PLANS that creates unknown accounts on first use."""
    return Calls(ledger_over(storage, metrics, plans=PLANS, auto_create_accounts=True),
                 storage.clock)


def welcome_entries(storage, account_id: str) -> list:
    return [e for e in storage.entries
            if e.account_id == account_id and e.reason.startswith("welcome credits")]


async def test_ensure_account_creates_it_on_the_plan_with_its_welcome_grant_once(
        on_plans, storage, clock):
    ensure = on_plans.ledger.ensure_account

    created = await ensure(EnsureAccountCommand("u1", "pro"), "signup-api")
    again = await ensure(EnsureAccountCommand("u1", "free"), "other-api")

    assert (created.created, again.created) == (True, False)
    assert created.account.plan == again.account.plan == "pro"
    assert created.account.create_time == clock.now()
    entry = created.welcome.entry
    assert (entry.entry_type, entry.grant_type, entry.amount, entry.balance_after, entry.actor,
            dict(entry.metadata)) == (EntryType.GRANT, GrantType.PROMO, 100, 100, "signup-api",
                                      {"plan": "pro"})
    assert created.welcome.lot.priority == 10 and created.welcome.lot.expire_time is None
    assert again.welcome is None and again.balance == created.balance
    assert welcome_entries(storage, "u1") == [entry]


async def test_the_default_plan_and_its_welcome_expiry(on_plans, clock):
    created = await on_plans.ledger.ensure_account(EnsureAccountCommand("u1"), "api")
    assert created.account.plan == "free"
    assert created.welcome.lot.expire_time == clock.now() + timedelta(hours=1)


async def test_a_plan_without_welcome_credits_creates_an_empty_account(on_plans, storage):
    created = await on_plans.ledger.ensure_account(EnsureAccountCommand("u1", "team"), "api")
    assert created.created and created.welcome is None and created.balance.balance == 0
    assert storage.entries == []


async def test_an_unknown_plan_writes_nothing(on_plans, storage):
    with pytest.raises(errors.PlanNotFound) as refused:
        await on_plans.ledger.ensure_account(EnsureAccountCommand("u1", "gold"), "api")
    assert refused.value.metadata == {"plan": "gold"}
    assert storage.accounts == {}


async def test_a_first_reservation_creates_the_account_and_draws_on_its_welcome_credits(
        on_plans, storage):
    placed = await on_plans.reserve("u1", 3)

    assert placed.balance.balance == 5 and placed.balance.available == 2
    assert [d.lot_id for d in placed.reservation.draws] == [
        welcome_entries(storage, "u1")[0].lot_id]
    declined = await on_plans.ledger.reserving.check_and_reserve_many(
        [(on_plans.reserve_command("u2", 6), "api"), (on_plans.reserve_command("u2", 5), "api")])
    assert isinstance(declined[0], errors.InsufficientCredits)
    assert declined[1].balance.available == 0
    assert len(welcome_entries(storage, "u2")) == 1


async def test_a_first_balance_read_creates_the_account(on_plans, storage):
    report = await on_plans.ledger.get_balance(BalanceQuery("u1"), "api")
    assert report.balance.balance == 5 and [lot.amount for lot in report.lots] == [5]
    assert storage.accounts["u1"].balance == 5


async def test_a_grant_to_a_new_account_comes_after_its_welcome_grant(on_plans, storage):
    granted = await on_plans.grant("u1", 10)
    assert granted.balance.balance == 15 and granted.entry.balance_after == 15
    assert [e.amount for e in storage.entries] == [5, 10]
    await on_plans.grant("u1", 10)
    assert len(welcome_entries(storage, "u1")) == 1


async def test_history_and_list_reservations_never_create_accounts(on_plans, storage):
    with pytest.raises(errors.AccountNotFound):
        await on_plans.ledger.history(HistoryQuery("u1", 5))
    assert storage.accounts == {}


async def test_without_auto_creation_reads_and_reservations_of_unknown_accounts_fail(
        calls, storage):
    with pytest.raises(errors.AccountNotFound):
        await calls.ledger.get_balance(BalanceQuery("u1"), "api")
    with pytest.raises(errors.AccountNotFound):
        await calls.reserve("u1", 1, key="k")
    assert storage.accounts == {} and storage.keys == {}
    assert (await calls.grant("u1", 3)).balance.balance == 3  # Grant still creates
    assert (await calls.reserve("u1", 1, key="k")).balance.available == 2


# --- status and plan ---------------------------------------------------------------------


def status(calls, account_id: str, value: AccountStatus, reason: str = "ops"):
    return calls.ledger.set_account_status(
        SetAccountStatusCommand(account_id, value, reason), "admin")


async def test_a_frozen_account_takes_no_reservation_but_settles_and_takes_grants(
        calls, storage):
    await calls.grant("u1", 10)
    held = (await calls.reserve("u1", 4)).reservation.reservation_id
    other = (await calls.reserve("u1", 1)).reservation.reservation_id
    frozen = await status(calls, "u1", AccountStatus.FROZEN, "fraud check")
    assert frozen.changed and frozen.account.status is AccountStatus.FROZEN
    assert storage.tables.changes == [("u1", "STATUS", "ACTIVE", "FROZEN", "fraud check",
                                       "admin")]

    with pytest.raises(errors.AccountFrozen):
        await calls.reserve("u1", 1, key="k")
    assert ("tester", "k") not in storage.keys
    assert (await calls.commit(held, 4)).balance.balance == 6
    await calls.release(other)
    assert (await calls.grant("u1", 5)).balance.balance == 11

    assert not (await status(calls, "u1", AccountStatus.FROZEN)).changed
    await status(calls, "u1", AccountStatus.ACTIVE)
    assert (await calls.reserve("u1", 1, key="k")).balance.available == 10


async def test_only_an_empty_account_closes_and_closing_is_final(calls, storage):
    await calls.grant("u1", 3)
    with pytest.raises(errors.AccountNotEmpty) as refused:
        await status(calls, "u1", AccountStatus.CLOSED)
    assert refused.value.metadata == {"accountId": "u1", "balance": "3", "reserved": "0"}
    await calls.commit((await calls.reserve("u1", 3)).reservation.reservation_id)

    closed = await status(calls, "u1", AccountStatus.CLOSED, "user asked")
    assert closed.account.status is AccountStatus.CLOSED

    with pytest.raises(errors.AccountClosed):
        await calls.grant("u1", 5, key="g")
    with pytest.raises(errors.AccountClosed):
        await calls.reserve("u1", 1)
    with pytest.raises(errors.AccountClosed):
        await status(calls, "u1", AccountStatus.ACTIVE)
    with pytest.raises(errors.AccountClosed):
        await calls.ledger.change_plan(ChangePlanCommand("u1", "default", "x"), "admin")
    assert ("tester", "g") not in storage.keys
    assert storage.accounts["u1"].balance == 0
    report = await calls.ledger.get_balance(BalanceQuery("u1"), "api")
    assert report.account.status is AccountStatus.CLOSED


async def test_status_and_plan_of_an_unknown_account_are_not_found(calls, storage):
    with pytest.raises(errors.AccountNotFound):
        await status(calls, "nobody", AccountStatus.FROZEN)
    with pytest.raises(errors.AccountNotFound):
        await calls.ledger.change_plan(ChangePlanCommand("nobody", "default", "x"), "admin")
    assert storage.accounts == {}


async def test_change_plan_moves_the_account_without_welcome_credits(on_plans, storage):
    await on_plans.ledger.ensure_account(EnsureAccountCommand("u1", "team"), "api")
    moved = await on_plans.ledger.change_plan(ChangePlanCommand("u1", "pro", "upgrade"), "ops")
    again = await on_plans.ledger.change_plan(ChangePlanCommand("u1", "pro", "upgrade"), "ops")

    assert (moved.changed, again.changed) == (True, False)
    assert moved.account.plan == "pro" and storage.entries == []
    assert storage.tables.changes == [("u1", "PLAN", "team", "pro", "upgrade", "ops")]
    with pytest.raises(errors.PlanNotFound):
        await on_plans.ledger.change_plan(ChangePlanCommand("u1", "gold", "x"), "ops")


async def test_closing_with_a_write_off_takes_the_balance_off_lot_by_lot(calls, storage, clock):
    await calls.grant("u1", 3, priority=10)
    await calls.grant("u1", 5, expire_in_s=60)
    held = (await calls.reserve("u1", 1)).reservation.reservation_id
    close = SetAccountStatusCommand("u1", AccountStatus.CLOSED, "user left", True)
    with pytest.raises(errors.AccountNotEmpty):  # its reservation first
        await calls.ledger.set_account_status(close, "ops")
    await calls.release(held)
    clock.advance(120)  # the second lot expires: written off as such, not adjusted

    closed = await calls.ledger.set_account_status(close, "ops")

    assert closed.changed and closed.account.status is AccountStatus.CLOSED
    assert [(e.entry_type, e.amount, e.balance_after, e.reason)
            for e in closed.write_off_entries] == [
        (EntryType.ADJUSTMENT, -3, 0, "closed: user left")]
    assert [e.entry_type for e in storage.entries][-2:] == [EntryType.EXPIRY,
                                                             EntryType.ADJUSTMENT]
    assert storage.accounts["u1"].balance == 0
