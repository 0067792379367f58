"""Refund: committed usage given back to the lots it came from while they are live, the last
consumed first, the rest to a new REFUND lot; never more than was captured; once per key."""

from __future__ import annotations

from datetime import timedelta

import pytest

from credits_service.domain import errors
from credits_service.domain.commands import RefundCommand
from credits_service.domain.model import EntryType, GrantType


def refund(calls, reservation_id: str | None, amount: int | None = None, *,
           key: str | None = None, usage_entry_id: int | None = None):
    return calls.ledger.refund(RefundCommand(
        key or calls.key(), reservation_id, usage_entry_id, amount, "failed job"), "support")


async def committed(calls, amount: int, *, account: str = "u1") -> str:
    reservation_id = (await calls.reserve(account, amount)).reservation.reservation_id
    await calls.commit(reservation_id)
    return reservation_id


async def test_credits_go_back_to_their_lots_last_consumed_first(calls, storage):
    first = (await calls.grant("u1", 4, priority=10)).lot.lot_id
    second = (await calls.grant("u1", 10, priority=20)).lot.lot_id
    used = await committed(calls, 7)  # 4 from the first lot, 3 from the second

    given = await refund(calls, used, 5)

    assert [(e.entry_type, e.lot_id, e.amount, e.balance_after) for e in given.entries] == [
        (EntryType.REFUND, second, 3, 10), (EntryType.REFUND, first, 2, 12)]
    assert given.reservation.refunded_amount == 5 and given.lot is None
    assert (storage.lots[first].remaining, storage.lots[second].remaining) == (2, 10)
    assert given.balance.lifetime_used == 7 and given.balance.lifetime_granted == 14
    assert storage.tables.totals[("u1", "REFUNDED")] == 5


async def test_credits_of_lots_expired_since_go_to_a_new_refund_lot(calls, storage, clock):
    await calls.grant("u1", 5, expire_in_s=60)
    used = await committed(calls, 5)
    clock.advance(120)

    given = await refund(calls, used)

    assert given.lot is not None and given.lot.grant_type is GrantType.REFUND
    assert given.lot.expire_time == clock.now() + timedelta(days=30)
    assert [(e.lot_id, e.amount) for e in given.entries] == [(given.lot.lot_id, 5)]
    assert given.balance.balance == 5


async def test_refunds_never_add_up_to_more_than_was_captured(calls):
    await calls.grant("u1", 10)
    used = await committed(calls, 6)
    await refund(calls, used, 4)
    with pytest.raises(errors.RefundExceedsUsage) as declined:
        await refund(calls, used, 3)
    assert declined.value.metadata == {"reservationId": used, "committedAmount": "6",
                                       "refundedAmount": "4", "requested": "3"}
    assert (await refund(calls, used)).reservation.refunded_amount == 6  # the rest
    with pytest.raises(errors.RefundExceedsUsage):
        await refund(calls, used)


async def test_by_usage_entry_once_per_key_and_only_committed_usage(calls, storage):
    await calls.grant("u1", 10)
    used = await committed(calls, 6)
    usage = next(e for e in storage.entries if e.entry_type is EntryType.USAGE)
    first = await refund(calls, None, 2, usage_entry_id=usage.entry_id, key="k")
    assert await refund(calls, None, 2, usage_entry_id=usage.entry_id, key="k") == first
    assert storage.reservations[used].refunded_amount == 2
    with pytest.raises(errors.EntryNotFound):
        await refund(calls, None, 1, usage_entry_id=first.entries[0].entry_id)
    active = (await calls.reserve("u1", 1)).reservation.reservation_id
    with pytest.raises(errors.ReservationNotCommitted):
        await refund(calls, active)
    with pytest.raises(errors.ReservationNotFound):
        await refund(calls, "01890000-0000-7000-8000-000000000000")


async def test_a_refund_past_the_balance_cap_is_declined_and_writes_nothing(calls, storage):
    from credits_service.domain.model import BALANCE_MAX

    await calls.grant("u1", 10)
    used = await committed(calls, 10)
    await calls.grant("u1", BALANCE_MAX)
    before = storage.snapshot()
    with pytest.raises(errors.BalanceLimitExceeded):
        await refund(calls, used, 1)
    assert storage.snapshot()[:4] == before[:4]
    assert storage.reservations[used].refunded_amount == 0
