"""Commit: consume what the reservation drew, give back what a smaller amount leaves, take
what a larger one needs from free lots; replays and declines."""

from __future__ import annotations

import pytest

from credits_service.domain import errors
from credits_service.domain.commands import CommitCommand, ReserveCommand
from credits_service.domain.model import EntryType, ReservationStatus


def settled(result) -> list[tuple[int, int, int | None]]:
    return [(d.lot_id, d.held, d.consumed) for d in result.reservation.draws]


def remaining(storage, *lot_ids) -> list[tuple[int, int]]:
    return [(storage.lots[i].remaining, storage.lots[i].held) for i in lot_ids]


async def test_an_equal_commit_consumes_exactly_what_was_drawn(calls, storage):
    a = (await calls.grant("acct", 5, priority=1)).lot.lot_id
    b = (await calls.grant("acct", 10)).lot.lot_id
    reservation = (await calls.reserve("acct", 8)).reservation

    result = await calls.commit(reservation.reservation_id, 8)

    assert settled(result) == [(a, 5, 5), (b, 3, 3)]
    assert remaining(storage, a, b) == [(0, 0), (7, 0)]
    assert (result.balance.balance, result.balance.reserved) == (7, 0)
    assert (result.entry.entry_type, result.entry.amount) == (EntryType.USAGE, -8)


async def test_a_smaller_commit_gives_the_rest_back_to_the_lots_it_came_from(calls, storage):
    a = (await calls.grant("acct", 5, priority=1)).lot.lot_id
    b = (await calls.grant("acct", 10)).lot.lot_id
    reservation = (await calls.reserve("acct", 12)).reservation

    result = await calls.commit(reservation.reservation_id, 6)

    assert settled(result) == [(a, 5, 5), (b, 7, 1)]
    assert remaining(storage, a, b) == [(0, 0), (9, 0)]
    assert result.balance.available == 9


async def test_a_larger_commit_takes_the_excess_from_free_lots_in_consumption_order(
        calls, storage):
    a = (await calls.grant("acct", 5, priority=1)).lot.lot_id
    b = (await calls.grant("acct", 10, priority=2)).lot.lot_id
    c = (await calls.grant("acct", 10, priority=3)).lot.lot_id
    reservation = (await calls.reserve("acct", 3)).reservation  # 3 from a
    other = (await calls.reserve("acct", 9)).reservation  # 2 from a, 7 from b

    result = await calls.commit(reservation.reservation_id, 10)

    assert settled(result) == [(a, 3, 3), (b, 0, 3), (c, 0, 4)]
    assert remaining(storage, a, b, c) == [(2, 2), (7, 7), (6, 0)]
    assert storage.reservations[other.reservation_id].status is ReservationStatus.ACTIVE


async def test_a_larger_commit_that_free_lots_cannot_cover_is_declined_and_stays_active(
        calls, storage):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 6)).reservation
    before = storage.accounts

    with pytest.raises(errors.InsufficientCredits) as declined:
        await calls.commit(reservation.reservation_id, 11)

    assert declined.value.metadata == {"accountId": "acct", "available": "4", "requested": "5"}
    assert storage.reservations[reservation.reservation_id].status is ReservationStatus.ACTIVE
    assert storage.accounts == before
    assert (await calls.commit(reservation.reservation_id, 10)).balance.balance == 0


async def test_a_commit_without_amount_captures_the_held_amount(calls):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 4)).reservation

    result = await calls.commit(reservation.reservation_id)

    assert result.reservation.committed_amount == 4
    assert (result.entry.amount, result.balance.balance) == (-4, 6)


async def test_a_commit_replayed_with_the_same_amount_returns_the_same_result(calls, storage):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 4)).reservation
    first = await calls.commit(reservation.reservation_id, 3)
    entries = storage.entries

    assert await calls.commit(reservation.reservation_id, 3) == first
    assert storage.entries == entries


async def test_a_commit_with_another_amount_after_a_commit_is_already_committed(calls, storage):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 4)).reservation
    await calls.commit(reservation.reservation_id, 3)

    with pytest.raises(errors.ReservationAlreadyCommitted) as declined:
        await calls.commit(reservation.reservation_id, 4)
    with pytest.raises(errors.ReservationAlreadyCommitted):
        await calls.commit(reservation.reservation_id)  # the held amount, 4, is another amount

    assert declined.value.metadata["committedAmount"] == "3"
    assert storage.accounts["acct"].balance == 7


async def test_a_commit_of_a_released_reservation_is_declined(calls, storage):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 4)).reservation
    await calls.release(reservation.reservation_id)

    with pytest.raises(errors.ReservationReleased):
        await calls.commit(reservation.reservation_id, 4)

    assert storage.accounts["acct"].balance == 10


async def test_a_commit_of_an_unknown_reservation_is_not_found(calls):
    with pytest.raises(errors.ReservationNotFound):
        await calls.commit("0190f0f0-0000-7000-8000-000000000000")


async def test_commit_each_answers_each_item_as_it_alone_would(calls):
    await calls.grant("acct", 10)
    first = (await calls.reserve("acct", 4)).reservation.reservation_id
    second = (await calls.reserve("acct", 4)).reservation.reservation_id

    results = await calls.ledger.commit_each(
        [CommitCommand(first, 4), CommitCommand(second, 20), CommitCommand(first, 1)], "tester")

    assert results[0].balance.balance == 6
    assert isinstance(results[1], errors.InsufficientCredits)
    assert isinstance(results[2], errors.ReservationAlreadyCommitted)


async def test_the_usage_entry_carries_the_hold_s_metadata_under_the_commit_s(calls, storage):
    await calls.grant("acct", 10)
    reservation = (await calls.ledger.check_and_reserve(ReserveCommand(
        "acct", 5, calls.key(), metadata={"model": "m1", "job": "a"}), "tester")).reservation
    result = await calls.ledger.commit(
        CommitCommand(reservation.reservation_id, 5, metadata={"job": "b"}), "tester")
    assert result.entry.metadata == {"model": "m1", "job": "b"}
    assert storage.entries[-1].metadata == {"model": "m1", "job": "b"}
