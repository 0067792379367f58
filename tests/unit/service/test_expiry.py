"""Expiry: a reservation past its TTL is expired by whoever reaches it first (a late call or
the sweeper); a lot past its expire_time has its unheld credits written off, and credits given
back to it later are written off at once."""

from __future__ import annotations

from datetime import timedelta

import pytest

from credits_service.domain import errors
from credits_service.domain.commands import ExtendCommand
from credits_service.domain.model import EntryType, ReservationStatus

HOUR_S = 3600


def expiries(storage) -> list[tuple[int, int, int, str | None, str]]:
    """EXPIRY entries: (lot_id, amount, balance_after, reservation_id, actor)."""
    return [(e.lot_id, e.amount, e.balance_after, e.reservation_id, e.actor)
            for e in storage.entries if e.entry_type is EntryType.EXPIRY]


async def test_a_late_commit_expires_the_reservation_and_is_declined(calls, storage, clock):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 6, ttl_ms=1000)).reservation
    clock.advance(1)

    with pytest.raises(errors.ReservationExpired):
        await calls.commit(reservation.reservation_id, 6)

    assert storage.reservations[reservation.reservation_id].status is ReservationStatus.EXPIRED
    assert storage.accounts["acct"].available == 10
    with pytest.raises(errors.ReservationExpired):  # and it stays expired
        await calls.release(reservation.reservation_id)


async def test_a_reservation_before_its_ttl_is_committed(calls, clock):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 6, ttl_ms=1000)).reservation
    clock.advance(0.999)

    assert (await calls.commit(reservation.reservation_id)).reservation.committed_amount == 6


async def test_the_sweeper_expires_due_reservations_only(calls, storage, clock):
    await calls.grant("acct", 10)
    due = (await calls.reserve("acct", 3, ttl_ms=1000)).reservation.reservation_id
    alive = (await calls.reserve("acct", 4, ttl_ms=5000)).reservation.reservation_id
    clock.advance(2)

    assert await calls.ledger.maintenance.expire_due_reservations(batch_size=10) == 1

    statuses = {r: storage.reservations[r].status for r in (due, alive)}
    assert statuses == {due: ReservationStatus.EXPIRED, alive: ReservationStatus.ACTIVE}
    assert (storage.accounts["acct"].reserved, storage.accounts["acct"].balance) == (4, 10)
    assert await calls.ledger.maintenance.expire_due_reservations(batch_size=10) == 0


async def test_extend_keeps_a_reservation_alive_past_its_first_ttl(calls, clock):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 6, ttl_ms=1000)).reservation
    extended = await calls.ledger.extend(ExtendCommand(reservation.reservation_id, ttl_ms=10_000))
    clock.advance(5)

    assert extended.draws == reservation.draws
    assert (await calls.commit(reservation.reservation_id)).balance.balance == 4


async def test_extend_never_shortens_a_reservation_nor_passes_its_lifetime_maximum(
        calls, clock):
    await calls.grant("acct", 10)
    reservation = (await calls.reserve("acct", 6, ttl_ms=10 * HOUR_S * 1000)).reservation
    shorter = await calls.ledger.extend(ExtendCommand(reservation.reservation_id, HOUR_S * 1000))
    clock.advance(HOUR_S)
    moved = await calls.ledger.extend(ExtendCommand(reservation.reservation_id, 10 * HOUR_S * 1000))
    moved_at = clock.now()
    for _ in range(17):  # a day ahead each time, until the lifetime maximum (7 days) caps it
        clock.advance(9 * HOUR_S)
        capped = await calls.ledger.extend(
            ExtendCommand(reservation.reservation_id, 24 * HOUR_S * 1000))

    assert shorter.expire_time == reservation.expire_time
    assert moved.expire_time == moved_at + timedelta(hours=10)
    assert capped.expire_time - capped.create_time == timedelta(days=7)


async def test_extending_a_finished_reservation_is_declined(calls, clock):
    await calls.grant("acct", 10)
    committed = (await calls.reserve("acct", 1)).reservation.reservation_id
    released = (await calls.reserve("acct", 1)).reservation.reservation_id
    expired = (await calls.reserve("acct", 1, ttl_ms=1000)).reservation.reservation_id
    await calls.commit(committed)
    await calls.release(released)
    clock.advance(1)

    for reservation_id, decline in ((committed, errors.ReservationAlreadyCommitted),
                                    (released, errors.ReservationReleased),
                                    (expired, errors.ReservationExpired)):
        with pytest.raises(decline):
            await calls.ledger.extend(ExtendCommand(reservation_id, 60_000))


async def test_lot_expiry_writes_off_the_unheld_credits_with_an_expiry_entry(
        calls, storage, clock):
    promo = (await calls.grant("acct", 30, expire_in_s=HOUR_S)).lot.lot_id
    await calls.grant("acct", 5)
    reserved = await calls.reserve("acct", 20, ttl_ms=2 * HOUR_S * 1000)
    reservation_id = reserved.reservation.reservation_id
    clock.advance(HOUR_S)

    assert await calls.ledger.maintenance.expire_due_lots(batch_size=10) == 1

    assert expiries(storage) == [(promo, -10, 25, None, "system")]
    lot = storage.lots[promo]
    assert (lot.expired, lot.remaining, lot.held) == (True, 20, 20)
    account = storage.accounts["acct"]
    assert (account.balance, account.available, account.lifetime_expired) == (25, 5, 10)
    # Held credits stay spendable.
    assert (await calls.commit(reservation_id, 20)).balance.balance == 5
    assert await calls.ledger.maintenance.expire_due_lots(batch_size=10) == 0


async def test_a_reservation_never_draws_expired_credits_and_writes_them_off_itself(
        calls, storage, clock):
    promo = (await calls.grant("acct", 30, expire_in_s=HOUR_S)).lot.lot_id
    await calls.grant("acct", 5)
    clock.advance(HOUR_S)

    with pytest.raises(errors.InsufficientCredits) as declined:
        await calls.reserve("acct", 6)

    assert declined.value.metadata["available"] == "5"
    assert expiries(storage) == [(promo, -30, 5, None, "system")]


async def test_credits_given_back_to_an_expired_lot_are_written_off_at_once(
        calls, storage, clock):
    promo = (await calls.grant("acct", 10, expire_in_s=HOUR_S)).lot.lot_id
    kept = (await calls.grant("acct", 10)).lot.lot_id
    reservation = (await calls.reserve("acct", 15, ttl_ms=2 * HOUR_S * 1000)).reservation
    clock.advance(HOUR_S)
    await calls.ledger.maintenance.expire_due_lots(batch_size=10)

    result = await calls.release(reservation.reservation_id)

    assert expiries(storage) == [(promo, -10, 10, reservation.reservation_id, "system")]
    assert (result.balance.balance, result.balance.available) == (10, 10)
    assert (storage.lots[promo].remaining, storage.lots[kept].remaining) == (0, 10)


async def test_a_smaller_commit_writes_off_what_it_gives_back_to_an_expired_lot(
        calls, storage, clock):
    promo = (await calls.grant("acct", 10, expire_in_s=HOUR_S)).lot.lot_id
    reservation = (await calls.reserve("acct", 10, ttl_ms=2 * HOUR_S * 1000)).reservation
    clock.advance(HOUR_S)

    result = await calls.commit(reservation.reservation_id, 4)

    assert expiries(storage) == [(promo, -6, 0, reservation.reservation_id, "system")]
    assert (result.balance.balance, result.balance.lifetime_used) == (0, 4)


async def test_the_sweeper_expiring_a_reservation_writes_off_its_expired_lots_credits(
        calls, storage, clock):
    promo = (await calls.grant("acct", 10, expire_in_s=HOUR_S)).lot.lot_id
    reservation = (await calls.reserve("acct", 4, ttl_ms=2 * HOUR_S * 1000)).reservation
    clock.advance(2 * HOUR_S)

    assert await calls.ledger.maintenance.expire_due_reservations(batch_size=10) == 1

    assert expiries(storage) == [(promo, -6, 4, None, "system"),
                                 (promo, -4, 0, reservation.reservation_id, "system")]
