"""What ending a reservation takes, whoever ends it (Commit, Release, expiry): locking it,
deciding an expiry that is due, and voiding it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from credits_service.domain import errors, lots
from credits_service.domain.model import BalanceSnapshot, Reservation, ReservationStatus
from credits_service.domain.rows import HeldTotals, WriteOff
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.write_offs import lock_accounts, write_off


async def lock_deciding_expiry(
    uow: UnitOfWork, reservation_id: str, metrics: LedgerMetrics
) -> Reservation | errors.Declined:
    """Lock the reservation. One still ACTIVE past its expire_time (database clock) is expired
    here, as the sweeper would, so a late Commit or Release can never win over expiry."""
    locked = await uow.reservations.lock(reservation_id)
    if locked is None:
        return errors.ReservationNotFound(reservation_id)
    reservation = locked.reservation
    if reservation.status is ReservationStatus.ACTIVE and locked.is_due:
        await void(uow, [reservation], ReservationStatus.EXPIRED, metrics)
        uow.on_commit(lambda: metrics.expired(1))
        return errors.ReservationExpired(reservation_id)
    if reservation.status is ReservationStatus.EXPIRED:
        return errors.ReservationExpired(reservation_id)
    return reservation


async def void(
    uow: UnitOfWork,
    reservations: Sequence[Reservation],
    status: ReservationStatus,
    metrics: LedgerMetrics,
    reason: str = "",
) -> tuple[dict[str, Reservation], dict[str, BalanceSnapshot]]:
    """End locked ACTIVE reservations without consuming anything: every draw goes back to its
    lot, and what goes back to an expired lot is written off at once. Returns the ended
    reservations by id and the balances that changed."""
    balances = await lock_accounts(uow, [r.account_id for r in reservations], metrics)
    expired = await uow.lots.expired_among(d.lot_id for r in reservations for d in r.draws)
    lot_changes: list[lots.LotChange] = []
    write_offs: list[WriteOff] = []
    for reservation in reservations:
        changes, lapsed = lots.settle(reservation.draws, (), (), expired)
        lot_changes.extend(changes)
        write_offs.extend(WriteOff(reservation.account_id, lot_id, credits,
                                   reservation.reservation_id) for lot_id, credits in lapsed)
    await uow.lots.apply(summed(lot_changes))
    finished = await uow.reservations.finish(
        [r.reservation_id for r in reservations], status, release_reason=reason)
    if len(finished) != len(reservations):
        raise errors.LotsOutOfStep(reservations[0].account_id)
    balances.update(await uow.accounts.unhold(held_per_account(reservations)))
    balances.update(await write_off(uow, write_offs, metrics))
    ended = {
        r.reservation_id: dataclasses.replace(finished[r.reservation_id], draws=r.draws)
        for r in reservations
    }
    return ended, balances


async def lock_active(
    uow: UnitOfWork, reservation_ids: Sequence[str]
) -> tuple[list[Reservation | None], dict[str, BalanceSnapshot], datetime]:
    """The start of a group of Commits or Releases, one reservation id per call: lock the
    reservations named once in the group, and the accounts of those ACTIVE and not due (a
    group decides no other case). Returns per call its reservation if so (else None), the
    locked accounts' balances and the service clock."""
    counts: dict[str, int] = {}
    for reservation_id in reservation_ids:
        counts[reservation_id] = counts.get(reservation_id, 0) + 1
    locked = await uow.groups.lock_for_settling(
        [reservation_id for reservation_id, count in counts.items() if count == 1])
    active: list[Reservation | None] = []
    for reservation_id in reservation_ids:
        found = locked.reservations.get(reservation_id)
        plain = (found is not None and not found.is_due
                 and found.reservation.status is ReservationStatus.ACTIVE)
        active.append(found.reservation if plain else None)
    return active, locked.balances, locked.now


def held_per_account(reservations: Sequence[Reservation]) -> dict[str, HeldTotals]:
    """Per account, the credits the reservations hold and how many they are."""
    held: dict[str, HeldTotals] = {}
    for r in reservations:
        credits, count = held.get(r.account_id, (0, 0))
        held[r.account_id] = HeldTotals(credits + r.amount, count + 1)
    return held


def summed(changes: Sequence[lots.LotChange]) -> list[lots.LotChange]:
    """Per lot, the deltas of `changes` added up; lots left unchanged out."""
    totals: dict[int, tuple[int, int]] = {}
    for change in changes:
        held, remaining = totals.get(change.lot_id, (0, 0))
        totals[change.lot_id] = (held + change.held_delta, remaining + change.remaining_delta)
    return [lots.LotChange(lot_id, held, remaining)
            for lot_id, (held, remaining) in totals.items() if (held, remaining) != (0, 0)]
