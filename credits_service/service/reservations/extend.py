"""ExtendReservation: keep an active reservation alive longer."""

from __future__ import annotations

import dataclasses

from credits_service.domain import errors
from credits_service.domain.commands import ExtendCommand
from credits_service.domain.model import Reservation, ReservationStatus
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.reservations.settling import lock_deciding_expiry
from credits_service.service.transactions import Transactions
from credits_service.settings import LedgerSettings


class Extending:
    def __init__(
        self, transactions: Transactions, settings: LedgerSettings, metrics: LedgerMetrics
    ) -> None:
        self._transactions = transactions
        self._metrics = metrics
        self._lifetime_max_ms = int(settings.reservation_lifetime_max_s * 1000)

    async def extend(self, command: ExtendCommand) -> Reservation:
        """expire_time becomes now + ttl, never earlier than it was, never past create_time +
        the lifetime maximum. Raises why not for a reservation no longer active."""

        async def work(uow: UnitOfWork) -> Reservation | errors.Declined:
            locked = await lock_deciding_expiry(uow, command.reservation_id, self._metrics)
            if isinstance(locked, errors.Declined):
                return locked
            if locked.status is ReservationStatus.COMMITTED:
                return errors.ReservationAlreadyCommitted(
                    locked.reservation_id, locked.committed_amount or 0)
            if locked.status is ReservationStatus.RELEASED:
                return errors.ReservationReleased(locked.reservation_id)
            extended = await uow.reservations.extend(
                locked.reservation_id, command.ttl_ms, self._lifetime_max_ms)
            return dataclasses.replace(extended, draws=locked.draws)

        return await self._transactions.run(work)
