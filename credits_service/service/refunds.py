"""Refund: committed usage given back, all or part, by reservation or by its USAGE entry,
once per key. Refunds of a reservation never add up to more than it captured: the
reservation is locked and its refunded amount moves by compare-and-set (a CHECK backs it).

Where the credits go, the documented rule (docs/accounts.md): back to the lots the usage
consumed, the last consumed first, each up to what was consumed from it less what refunds
gave back to it already, while the lot is live (not expired); what cannot go back goes to one
new lot of grant type REFUND expiring refund_lot_lifetime_s after the refund (or never).
One REFUND entry per lot the credits went to."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from credits_service.domain import errors
from credits_service.domain.commands import RefundCommand, RefundResult
from credits_service.domain.lots import LotChange
from credits_service.domain.model import (
    BALANCE_MAX,
    PRIORITY_DEFAULT,
    EntryType,
    GrantType,
    LedgerEntry,
    Lot,
    Reservation,
    ReservationStatus,
)
from credits_service.service import debts
from credits_service.service.accounts import locked_account
from credits_service.service.idempotency import keyed
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.transactions import Transactions
from credits_service.service.write_offs import write_off_due_lots
from credits_service.settings import LedgerSettings

METHOD = "Refund"


class Refunding:
    def __init__(
        self, transactions: Transactions, settings: LedgerSettings, metrics: LedgerMetrics
    ) -> None:
        self._transactions = transactions
        self._lot_lifetime_s = settings.refund_lot_lifetime_s
        self._metrics = metrics

    async def refund(self, command: RefundCommand, actor: str) -> RefundResult:
        """Give the credits back, or raise the decline (stored with the key, and replayed,
        but for those about the account itself)."""

        async def effect(uow: UnitOfWork) -> RefundResult | errors.Declined:
            found = await _reservation(uow, command)
            if isinstance(found, errors.Declined):
                return found
            reservation = found
            account_id = reservation.account_id
            found_account = await locked_account(uow, account_id, open_only=True)
            if isinstance(found_account, errors.Declined):  # closed: a reservation's exists
                return found_account
            _, balance = found_account
            committed = reservation.committed_amount or 0
            left = committed - reservation.refunded_amount
            amount = left if command.amount is None else command.amount
            if amount > left or amount <= 0:
                return errors.RefundExceedsUsage(
                    reservation.reservation_id, committed, reservation.refunded_amount, amount)
            if balance.balance + amount > BALANCE_MAX:
                return errors.BalanceLimitExceeded(account_id, balance.balance, amount,
                                                   BALANCE_MAX)
            refunded = await uow.reservations.add_refund(reservation.reservation_id, amount)
            assert refunded is not None, "the reservation is locked and checked"
            await write_off_due_lots(uow, [account_id], self._metrics)
            now = await uow.now()
            credited = await uow.accounts.credit(account_id, amount, BALANCE_MAX, granted=False)
            assert credited is not None, "below the cap, and not closed"
            # What the account owes is paid first: that part is in the REFUND lot's amount
            # but not in what remains of it.
            repaid, credited = await debts.repay(uow, account_id, credited, amount,
                                                 usage_refund=True)
            back, rest = await _back_to_lots(uow, reservation, amount - repaid, now)
            await uow.lots.apply([LotChange(lot_id, 0, part) for lot_id, part in back])
            lot = None
            targets = list(back)
            if rest or repaid:
                expire_time = (now + timedelta(seconds=self._lot_lifetime_s)
                               if self._lot_lifetime_s else None)
                lot = await uow.lots.create(
                    account_id=account_id, grant_type=GrantType.REFUND,
                    priority=PRIORITY_DEFAULT, expire_time=expire_time, amount=rest + repaid,
                    remaining=rest)
                targets.append((lot.lot_id, rest + repaid))
            entries: list[LedgerEntry] = []
            balance_after = credited.balance - amount
            for lot_id, part in targets:
                balance_after += part
                entries.append(await uow.entries.append(
                    account_id=account_id, entry_type=EntryType.REFUND, amount=part,
                    balance_after=balance_after, actor=actor, reason=command.reason,
                    metadata=command.metadata, reservation_id=reservation.reservation_id,
                    lot_id=lot_id))
            assert balance_after == credited.balance
            reservation = dataclasses.replace(reservation, refunded_amount=refunded)
            return RefundResult(tuple(entries), credited, reservation, lot)

        return await self._transactions.run(
            keyed(METHOD, command, command.idempotency_key, actor, effect, self._metrics))


async def _reservation(uow: UnitOfWork, command: RefundCommand) -> Reservation | errors.Declined:
    """The reservation to refund, locked, if it is COMMITTED."""
    reservation_id = command.reservation_id
    if command.usage_entry_id is not None:
        entry = await uow.entries.get(command.usage_entry_id)
        if entry is None or entry.entry_type is not EntryType.USAGE:
            return errors.EntryNotFound(command.usage_entry_id)
        reservation_id = entry.reservation_id
    assert reservation_id is not None
    locked = await uow.reservations.lock(reservation_id)
    if locked is None:
        return errors.ReservationNotFound(reservation_id)
    reservation = locked.reservation
    if reservation.status is not ReservationStatus.COMMITTED:
        return errors.ReservationNotCommitted(reservation_id, reservation.status.value)
    return reservation


async def _back_to_lots(
    uow: UnitOfWork, reservation: Reservation, amount: int, now: datetime
) -> tuple[list[tuple[int, int]], int]:
    """(lot_id, credits) going back to live lots the usage consumed, the last consumed first,
    and what is left for a new REFUND lot."""
    refunded = await uow.entries.refunded_to_lots(reservation.reservation_id)
    lots: dict[int, Lot] = await uow.lots.of(d.lot_id for d in reservation.draws)
    back: list[tuple[int, int]] = []
    left = amount
    for draw in reversed(reservation.draws):
        lot = lots[draw.lot_id]
        room = (draw.consumed or 0) - refunded.get(draw.lot_id, 0)
        live = not lot.expired and (lot.expire_time is None or lot.expire_time > now)
        if room > 0 and live and left:
            part = min(room, left)
            back.append((draw.lot_id, part))
            left -= part
    return back, left

