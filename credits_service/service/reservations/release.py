"""Release: void an active reservation, giving its credits back to the lots they came from;
releasing a released reservation replays.

Concurrent Releases share transactions: the group decides the plain case, and leaves every
other to a transaction of its own (group_commit.py, UNDECIDED).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from credits_service.domain import errors, lots
from credits_service.domain.commands import ReleaseCommand, ReleaseResult
from credits_service.domain.model import BalanceSnapshot, ReservationStatus
from credits_service.domain.rows import ReleaseOf
from credits_service.service.group_commit import UNDECIDED, GroupCommitter, Undecided
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.reservations.settling import (
    held_per_account,
    lock_active,
    lock_deciding_expiry,
    summed,
    void,
)
from credits_service.service.transactions import Transactions
from credits_service.service.write_offs import write_off_expired
from credits_service.settings import LedgerSettings

METHOD = "Release"


class Releasing:
    def __init__(
        self, transactions: Transactions, settings: LedgerSettings, metrics: LedgerMetrics
    ) -> None:
        self._transactions = transactions
        self._metrics = metrics
        self._group: GroupCommitter[ReleaseCommand, ReleaseResult | errors.Declined] = (
            GroupCommitter(
                self._release_many,
                run_alone=self._release_alone,
                group_size_max=settings.group_size_max,
                concurrency=settings.group_concurrency,
                on_group=lambda size: metrics.grouped(METHOD, size),
            )
        )

    async def release(self, command: ReleaseCommand) -> ReleaseResult:
        """Release a reservation, or raise why not."""
        outcome = await self._group.submit(command)
        if isinstance(outcome, errors.Declined):
            raise outcome
        return outcome

    async def _release_many(
        self, commands: Sequence[ReleaseCommand]
    ) -> list[ReleaseResult | errors.Declined | Undecided]:
        """Release, in one transaction, the plain cases among `commands`: an ACTIVE
        reservation, not due, whose credits all go back to unexpired lots, named once in the
        group. Every other call is left UNDECIDED, untouched. The same results as releasing
        one by one, in order."""

        async def work(uow: UnitOfWork) -> list[ReleaseResult | errors.Declined | Undecided]:
            outcomes: list[Any] = [UNDECIDED] * len(commands)
            active, snapshots, now = await lock_active(
                uow, [command.reservation_id for command in commands])
            plain = [(i, r) for i, r in enumerate(active) if r is not None]
            if not plain:
                return outcomes
            given_back = [draw.lot_id for _, r in plain for draw in r.draws]
            due, expired, _ = await uow.groups.expire_and_check(list(snapshots), given_back)
            snapshots.update(await write_off_expired(uow, due, self._metrics))
            plain = [(i, r) for i, r in plain if not any(d.lot_id in expired for d in r.draws)]
            if not plain:
                return outcomes
            lot_changes: list[lots.LotChange] = []
            balances: dict[int, BalanceSnapshot] = {}
            for i, reservation in plain:
                changes, lapsed = lots.settle(reservation.draws, (), (), set())
                assert not lapsed, "no lot a plain release gives back to is expired"
                lot_changes.extend(changes)
                before = snapshots[reservation.account_id]
                snapshots[reservation.account_id] = balances[i] = dataclasses.replace(
                    before,
                    reserved=before.reserved - reservation.amount,
                    active_reservation_count=before.active_reservation_count - 1,
                )
            changed = summed(lot_changes)
            held = held_per_account([r for _, r in plain])
            written = await uow.groups.release(
                changed, held,
                [ReleaseOf(r.reservation_id, commands[i].reason) for i, r in plain],
            )
            if (any(written.balances.get(a) != snapshots[a] for a in held)
                    or (written.lots, written.reservations) != (len(changed), len(plain))):
                raise errors.LotsOutOfStep(plain[0][1].account_id)
            for i, reservation in plain:
                outcomes[i] = ReleaseResult(
                    reservation=dataclasses.replace(
                        reservation,
                        status=ReservationStatus.RELEASED,
                        finish_time=now,
                        release_reason=commands[i].reason,
                    ),
                    balance=balances[i],
                )
            uow.on_commit(lambda: [self._metrics.released() for _ in plain])
            return outcomes

        return await self._transactions.run(work, grouped=True)

    async def _release_alone(self, command: ReleaseCommand) -> ReleaseResult:
        """Release in a transaction of its own: every case (replays, expiry, declines,
        credits given back to expired lots). Raises a decline."""

        async def work(uow: UnitOfWork) -> ReleaseResult | errors.Declined:
            locked = await lock_deciding_expiry(uow, command.reservation_id, self._metrics)
            if isinstance(locked, errors.Declined):
                return locked
            if locked.status is ReservationStatus.COMMITTED:
                return errors.ReservationAlreadyCommitted(
                    locked.reservation_id, locked.committed_amount or 0)
            if locked.status is ReservationStatus.RELEASED:
                balance = await uow.accounts.get(locked.account_id)
                assert balance is not None, "a reservation's account always exists"
                uow.on_commit(lambda: self._metrics.replayed(METHOD))
                return ReleaseResult(reservation=locked, balance=balance)
            released, balances = await void(
                uow, [locked], ReservationStatus.RELEASED, self._metrics, command.reason)
            uow.on_commit(self._metrics.released)
            return ReleaseResult(reservation=released[locked.reservation_id],
                                 balance=balances[locked.account_id])

        return await self._transactions.run(work)
