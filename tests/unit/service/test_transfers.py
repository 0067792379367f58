"""Transfer: free credits leave the giver's lots in consumption order and arrive in new lots
of the receiver as they were (expiry, priority, grant type), once per key; declines write
nothing but their key."""

from __future__ import annotations

import pytest

from credits_service.domain import errors
from credits_service.domain.commands import SetAccountStatusCommand, TransferCommand
from credits_service.domain.model import AccountStatus, EntryType, GrantType
from tests.unit.service.conftest import Calls, ledger_over


def transfer(calls, amount: int, *, giver: str = "a", receiver: str = "b",
             key: str | None = None):
    return calls.ledger.transfer(
        TransferCommand(giver, receiver, amount, key or calls.key(), "gift"), "ops")


async def test_credits_move_with_their_expiry_priority_and_grant_type(calls, storage, clock):
    soon = (await calls.grant("a", 3, priority=10, expire_in_s=60,
                              grant_type=GrantType.PROMO)).lot
    later = (await calls.grant("a", 10, priority=20)).lot
    await calls.grant("b", 1)

    moved = await transfer(calls, 5)

    out = EntryType.TRANSFER_OUT
    assert [(e.entry_type, e.lot_id, e.amount, e.balance_after) for e in moved.from_entries] == [
        (out, soon.lot_id, -3, 10), (out, later.lot_id, -2, 8)]
    into = EntryType.TRANSFER_IN
    assert [(e.entry_type, e.amount, e.balance_after, e.grant_type) for e in moved.to_entries] == [
        (into, 3, 4, GrantType.PROMO), (into, 2, 6, GrantType.PURCHASE)]
    arrived = [storage.lots[e.lot_id] for e in moved.to_entries]
    assert [(lot.expire_time, lot.priority, lot.account_id) for lot in arrived] == [
        (soon.expire_time, 10, "b"), (None, 20, "b")]
    assert {e.transfer_id for e in moved.from_entries + moved.to_entries} == {moved.transfer_id}
    assert (moved.from_balance.balance, moved.to_balance.balance) == (8, 6)
    assert moved.to_balance.lifetime_granted == 1 and moved.from_balance.lifetime_used == 0
    again = await transfer(calls, 5)  # another key: another transfer
    assert again.transfer_id != moved.transfer_id and again.from_balance.balance == 3


async def test_a_transfer_is_applied_once_per_key(calls, storage):
    await calls.grant("a", 10)
    await calls.grant("b", 1)
    first = await transfer(calls, 4, key="k")
    assert await transfer(calls, 4, key="k") == first
    assert storage.accounts["a"].balance == 6 and storage.accounts["b"].balance == 5


async def test_reserved_credits_stay_and_declines_write_nothing_but_their_key(calls, storage):
    await calls.grant("a", 10)
    await calls.grant("b", 1)
    await calls.reserve("a", 8)
    before = storage.snapshot()
    with pytest.raises(errors.InsufficientCredits):
        await transfer(calls, 3)
    assert storage.snapshot()[:4] == before[:4]


async def test_account_status_and_existence(calls, storage):
    await calls.grant("a", 10)
    with pytest.raises(errors.AccountNotFound):
        await transfer(calls, 1, receiver="nobody")
    with pytest.raises(errors.AccountNotFound):
        await transfer(calls, 1, giver="nobody", receiver="a")
    await calls.grant("b", 1)
    status = calls.ledger.set_account_status
    await status(SetAccountStatusCommand("b", AccountStatus.FROZEN, "x"), "ops")
    assert (await transfer(calls, 1)).to_balance.balance == 2  # a frozen account receives
    with pytest.raises(errors.AccountFrozen):
        await transfer(calls, 1, giver="b", receiver="a", key="frozen")
    assert ("ops", "frozen") not in storage.keys


async def test_an_unknown_receiver_is_created_when_accounts_are_created_on_first_use(
        storage, metrics):
    calls = Calls(ledger_over(storage, metrics, auto_create_accounts=True), storage.clock)
    await calls.grant("a", 10)
    moved = await transfer(calls, 4, receiver="new")
    assert moved.to_balance.balance == 4 and storage.accounts["new"].balance == 4


async def test_a_receiver_at_the_balance_cap_takes_nothing(calls, storage):
    from credits_service.domain.model import BALANCE_MAX

    await calls.grant("a", 10)
    await calls.grant("b", BALANCE_MAX)
    before = storage.snapshot()
    with pytest.raises(errors.BalanceLimitExceeded) as declined:
        await transfer(calls, 1)
    assert declined.value.metadata["accountId"] == "b"
    assert storage.snapshot()[:4] == before[:4]
