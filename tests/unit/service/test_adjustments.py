"""Adjust: ADD into a new lot, DEDUCT from free credits lot by lot in consumption order, SET
by the difference and only from the balance expected; once per key; nothing written on a
decline."""

from __future__ import annotations

from datetime import timedelta

import pytest

from credits_service.domain import errors
from credits_service.domain.commands import AdjustCommand, AdjustMode, SetAccountStatusCommand
from credits_service.domain.model import AccountStatus, EntryType, GrantType


def adjust(calls, mode: AdjustMode, amount: int, *, key: str | None = None,
           account: str = "u1", **fields):
    return calls.ledger.adjust(AdjustCommand(
        account, mode, amount, key or calls.key(), "ticket 7", **fields), "ops")


async def test_add_puts_credits_in_a_new_admin_lot_not_counted_as_granted(calls, clock):
    await calls.grant("u1", 10)
    added = await adjust(calls, AdjustMode.ADD, 5, expire_time=clock.now() + timedelta(days=1))

    (entry,) = added.entries
    assert (entry.entry_type, entry.grant_type, entry.amount, entry.balance_after, entry.reason,
            entry.actor) == (EntryType.ADJUSTMENT, GrantType.ADMIN_GRANT, 5, 15, "ticket 7", "ops")
    assert added.lot.lot_id == entry.lot_id and added.lot.expire_time is not None
    assert added.balance.balance == 15 and added.balance.lifetime_granted == 10


async def test_deduct_takes_free_credits_lot_by_lot_in_consumption_order(calls, storage):
    first = (await calls.grant("u1", 4, priority=10)).lot.lot_id
    second = (await calls.grant("u1", 10, priority=20)).lot.lot_id
    await calls.reserve("u1", 3)  # holds 3 of the first lot

    deducted = await adjust(calls, AdjustMode.DEDUCT, 5)

    assert [(e.lot_id, e.amount, e.balance_after) for e in deducted.entries] == [
        (first, -1, 13), (second, -4, 9)]
    assert deducted.balance.balance == 9 and deducted.balance.available == 6
    assert storage.lots[first].remaining == 3 and storage.lots[second].remaining == 6


async def test_deduct_never_takes_reserved_credits(calls, storage):
    await calls.grant("u1", 10)
    await calls.reserve("u1", 8)
    before = storage.snapshot()
    with pytest.raises(errors.InsufficientCredits) as declined:
        await adjust(calls, AdjustMode.DEDUCT, 3, key="d")
    assert declined.value.metadata["available"] == "2"
    with pytest.raises(errors.InsufficientCredits):  # replayed
        await adjust(calls, AdjustMode.DEDUCT, 3, key="d")
    assert storage.snapshot()[:4] == before[:4]  # the decline's key is all it stored


async def test_set_moves_by_the_difference_and_checks_the_expected_balance(calls):
    await calls.grant("u1", 10)
    down = await adjust(calls, AdjustMode.SET, 4, expected_balance=10)
    assert down.balance.balance == 4 and [e.amount for e in down.entries] == [-6]
    up = await adjust(calls, AdjustMode.SET, 9)
    assert up.balance.balance == 9 and [e.amount for e in up.entries] == [5]
    same = await adjust(calls, AdjustMode.SET, 9)
    assert same.entries == () and same.balance.balance == 9

    with pytest.raises(errors.BalanceMismatch) as mismatch:
        await adjust(calls, AdjustMode.SET, 0, expected_balance=10)
    assert mismatch.value.metadata == {"accountId": "u1", "expectedBalance": "10",
                                       "balance": "9"}


async def test_an_adjustment_is_applied_once_per_key(calls, storage):
    await calls.grant("u1", 10)
    first = await adjust(calls, AdjustMode.DEDUCT, 3, key="k")
    again = await adjust(calls, AdjustMode.DEDUCT, 3, key="k")
    assert again == first and storage.accounts["u1"].balance == 7
    with pytest.raises(errors.IdempotencyKeyReused):
        await adjust(calls, AdjustMode.DEDUCT, 4, key="k")


async def test_frozen_accounts_take_additions_only_and_unknown_ones_nothing(calls, storage):
    await calls.grant("u1", 10)
    await calls.ledger.set_account_status(
        SetAccountStatusCommand("u1", AccountStatus.FROZEN, "check"), "ops")
    with pytest.raises(errors.AccountFrozen):
        await adjust(calls, AdjustMode.DEDUCT, 1, key="f")
    with pytest.raises(errors.AccountFrozen):
        await adjust(calls, AdjustMode.SET, 1)
    assert (await adjust(calls, AdjustMode.ADD, 1)).balance.balance == 11
    with pytest.raises(errors.AccountNotFound):
        await adjust(calls, AdjustMode.ADD, 1, account="nobody", key="n")
    assert ("tester", "f") not in storage.keys and ("tester", "n") not in storage.keys
    assert "nobody" not in storage.accounts


async def test_an_addition_expiring_in_the_past_is_refused_and_its_key_stays_unused(
        calls, storage, clock):
    await calls.grant("u1", 1)
    with pytest.raises(errors.ExpireTimePassed):
        await adjust(calls, AdjustMode.ADD, 5, key="past", expire_time=clock.now())
    assert ("ops", "past") not in storage.keys
    assert (await adjust(calls, AdjustMode.ADD, 5, key="past",
                         expire_time=clock.now() + timedelta(hours=1))).balance.balance == 6
