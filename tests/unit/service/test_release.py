"""Release: every credit goes back to the lot it came from; a replay answers alike; a
committed reservation cannot be released."""

from __future__ import annotations

import pytest

from credits_service.domain import errors
from credits_service.domain.model import ReservationStatus


async def test_a_release_gives_everything_back_to_the_lots_it_came_from(calls, storage):
    b = (await calls.grant("acct", 10)).lot.lot_id
    reservation = (await calls.reserve("acct", 6)).reservation
    a = (await calls.grant("acct", 5, priority=1)).lot.lot_id  # first in order from now on

    result = await calls.release(reservation.reservation_id, "job failed")

    assert (result.reservation.status, result.reservation.release_reason) == (
        ReservationStatus.RELEASED, "job failed")
    assert (result.balance.balance, result.balance.available) == (15, 15)
    assert [(storage.lots[i].remaining, storage.lots[i].held) for i in (a, b)] == [
        (5, 0), (10, 0)]


async def test_a_release_replayed_returns_the_same_result_and_writes_nothing(calls, storage):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 6)).reservation
    first = await calls.release(reservation.reservation_id)
    before = storage.snapshot()

    assert await calls.release(reservation.reservation_id) == first
    assert storage.snapshot() == before


async def test_a_release_of_a_committed_reservation_is_declined(calls, storage):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 6)).reservation
    await calls.commit(reservation.reservation_id, 6)

    with pytest.raises(errors.ReservationAlreadyCommitted):
        await calls.release(reservation.reservation_id)

    assert storage.accounts["acct"].balance == 4


async def test_a_release_of_an_unknown_reservation_is_not_found(calls):
    with pytest.raises(errors.ReservationNotFound):
        await calls.release("0190f0f0-0000-7000-8000-000000000000")
