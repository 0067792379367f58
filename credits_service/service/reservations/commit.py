"""Commit: capture a reservation for its amount or another; repeating it with the same amount
replays. It consumes what the reservation drew, in consumption order; a larger amount takes
the excess from free lots in consumption order; a smaller one gives the rest back.

Concurrent Commits share transactions: the group decides the plain case, and leaves every
other to a transaction of its own (group_commit.py, UNDECIDED).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

from credits_service.domain import errors, lots
from credits_service.domain.commands import CommitCommand, CommitResult
from credits_service.domain.model import (
    BalanceSnapshot,
    EntryType,
    LedgerEntry,
    Reservation,
    ReservationStatus,
)
from credits_service.domain.rows import Capture, CaptureTotals, Consumption, UsageEntry, WriteOff
from credits_service.service.group_commit import UNDECIDED, GroupCommitter, Undecided
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.reservations.settling import (
    lock_active,
    lock_deciding_expiry,
    summed,
)
from credits_service.service.transactions import Transactions
from credits_service.service.write_offs import lock_accounts, write_off, write_off_expired
from credits_service.settings import LedgerSettings

METHOD = "Commit"
Call = tuple[CommitCommand, str]  # the command and its actor


def usage_metadata(reservation: Reservation, command: CommitCommand) -> dict[str, str]:
    """A USAGE entry's metadata: the hold's, with the Commit's over it (what the work turned
    out to be), so usage can be told apart by what the hold said it was for."""
    return {**reservation.metadata, **command.metadata}


def commit_amount(reservation: Reservation, command: CommitCommand) -> int:
    """What the Commit captures: its amount; else, with units, their cost at the hold's price
    (ReservationNotPriced for a hold of an amount; CostTooLarge); else the held amount."""
    if command.amount is not None:
        return command.amount
    if command.units is None:
        return reservation.amount
    if reservation.price is None:
        raise errors.ReservationNotPriced(reservation.reservation_id)
    return reservation.price.cost_of(command.units)


def usage_of(reservation: Reservation, command: CommitCommand) -> UsageOf:
    """What a USAGE entry says it was for: the hold's feature and card version, and the
    Commit's units (else the hold's estimate); nothing for a hold of an amount."""
    price = reservation.price
    if price is None:
        return UsageOf(None, None, None)
    return UsageOf(price.feature, price.units if command.units is None else command.units,
                   price.version)


class UsageOf(NamedTuple):
    feature: str | None
    units: int | None
    rate_card_version: str | None


class Committing:
    def __init__(
        self, transactions: Transactions, settings: LedgerSettings, metrics: LedgerMetrics
    ) -> None:
        self._transactions = transactions
        self._metrics = metrics
        self._batch_concurrency = settings.batch_commit_concurrency
        self._group: GroupCommitter[Call, CommitResult | errors.Declined] = GroupCommitter(
            self._commit_many,
            run_alone=self._commit_alone,
            group_size_max=settings.group_size_max,
            concurrency=settings.group_concurrency,
            on_group=lambda size: metrics.grouped(METHOD, size),
        )

    async def commit(self, command: CommitCommand, actor: str) -> CommitResult:
        """Capture a reservation, or raise why not."""
        outcome = await self._group.submit((command, actor))
        if isinstance(outcome, errors.Declined):
            raise outcome
        return outcome

    async def commit_each(
        self, commands: Sequence[CommitCommand], actor: str
    ) -> list[CommitResult | Exception]:
        """Commit each reservation in its own transaction, a few at a time, so one failing
        item never fails another: each gets its result or the exception it alone would have
        raised."""
        limit = asyncio.Semaphore(self._batch_concurrency)

        async def one(command: CommitCommand) -> CommitResult | Exception:
            async with limit:
                try:
                    return await self.commit(command, actor)
                except Exception as exc:  # reported per item, by the caller
                    return exc

        return list(await asyncio.gather(*(one(command) for command in commands)))

    async def _commit_many(
        self, calls: Sequence[Call]
    ) -> list[CommitResult | errors.Declined | Undecided]:
        """Commit, in one transaction, the plain cases among `calls`: an ACTIVE reservation,
        not due, committed for at most its amount, whose given-back credits go to unexpired
        lots, named once in the group; and one held beyond its lots (a credit limit), whose
        rest goes into debt, when its account has no free credits to take first and no other
        commit of the group gives any back. Every other call is left UNDECIDED, untouched.
        The same results as committing one by one, in order."""

        async def work(uow: UnitOfWork) -> list[CommitResult | errors.Declined | Undecided]:
            outcomes: list[Any] = [UNDECIDED] * len(calls)
            active, snapshots, now = await lock_active(
                uow, [command.reservation_id for command, _ in calls])
            plain: list[tuple[int, Reservation, int, lots.CommitSplit]] = []
            for i, ((command, _), reservation) in enumerate(zip(calls, active, strict=True)):
                if reservation is None:
                    continue
                try:
                    amount = commit_amount(reservation, command)
                except (errors.ReservationNotPriced, errors.CostTooLarge):
                    continue  # raised alone
                split = lots.split_commit(reservation.draws, amount)
                if amount <= reservation.amount:  # any excess is what it held beyond lots
                    plain.append((i, reservation, amount, split))
            if not plain:
                return outcomes
            given_back = [lot_id for _, _, _, split in plain for lot_id, _ in split.given_back]
            owing = {r.account_id for _, r, _, split in plain
                     if split.excess and not snapshots[r.account_id].unlimited}
            due, expired, with_free = await uow.groups.expire_and_check(
                list(snapshots), given_back, sorted(owing))
            snapshots.update(await write_off_expired(uow, due, self._metrics))
            giving_back = {r.account_id for _, r, _, split in plain if split.given_back}
            plain = [p for p in plain
                     if not any(lot_id in expired for lot_id, _ in p[3].given_back)
                     and not (p[3].excess and p[1].account_id in owing
                              and (p[1].account_id in with_free
                                   or p[1].account_id in giving_back))]
            if not plain:
                return outcomes
            lot_changes: list[lots.LotChange] = []
            captures: dict[str, CaptureTotals] = {}
            balances: dict[int, BalanceSnapshot] = {}
            usages: list[UsageEntry] = []
            consumed: list[Consumption] = []
            for i, reservation, amount, split in plain:
                changes, lapsed = lots.settle(reservation.draws, split.consumed, (), set())
                assert not lapsed, "no lot a plain commit gives back to is expired"
                lot_changes.extend(changes)
                account_id = reservation.account_id
                held, used, count, owed = captures.get(account_id, (0, 0, 0, 0))
                captures[account_id] = CaptureTotals(
                    held + reservation.amount, used + amount, count + 1, owed + split.excess)
                before = snapshots[account_id]
                snapshots[account_id] = balances[i] = dataclasses.replace(
                    before,
                    balance=before.balance - amount,
                    reserved=before.reserved - reservation.amount,
                    active_reservation_count=before.active_reservation_count - 1,
                    lifetime_used=before.lifetime_used + amount,
                    debt=before.debt + split.excess,
                )
                command, actor = calls[i]
                usages.append(UsageEntry(account_id, amount, balances[i].balance,
                                         reservation.reservation_id,
                                         usage_metadata(reservation, command), actor,
                                         *usage_of(reservation, command)))
                consumed.extend(Consumption(reservation.reservation_id, lot_id, part)
                                for lot_id, part in split.consumed)
            changed = summed(lot_changes)
            written = await uow.groups.capture(
                changed, captures,
                [Capture(r.reservation_id, amount, split.excess) for _, r, amount, split in plain],
                consumed,
                usages,
            )
            if (any(written.balances.get(a) != snapshots[a] for a in captures)
                    or len(written.entry_ids) != len(plain)
                    or (written.lots, written.reservations, written.draws)
                    != (len(changed), len(plain), len(consumed))):
                raise errors.LotsOutOfStep(plain[0][1].account_id)
            for i, reservation, amount, split in plain:
                command, actor = calls[i]
                used_of = dict(split.consumed)
                outcomes[i] = CommitResult(
                    reservation=dataclasses.replace(
                        reservation,
                        status=ReservationStatus.COMMITTED,
                        committed_amount=amount,
                        finish_time=now,
                        draws=tuple(dataclasses.replace(d, consumed=used_of.get(d.lot_id, 0))
                                    for d in reservation.draws),
                    ),
                    entry=LedgerEntry(
                        entry_id=written.entry_ids[reservation.reservation_id],
                        account_id=reservation.account_id,
                        entry_type=EntryType.USAGE,
                        grant_type=None,
                        amount=-amount,
                        balance_after=balances[i].balance,
                        reservation_id=reservation.reservation_id,
                        reason="",
                        metadata=usage_metadata(reservation, command),
                        actor=actor,
                        create_time=now,
                        **usage_of(reservation, command)._asdict(),
                    ),
                    balance=balances[i],
                )
            uow.on_commit(lambda: [self._metrics.committed(amount) for _, _, amount, _ in plain])
            return outcomes

        return await self._transactions.run(work, grouped=True)

    async def _commit_alone(self, call: Call) -> CommitResult:
        """Commit in a transaction of its own: every case (replays, expiry, declines, a larger
        amount, credits given back to expired lots). Raises a decline."""
        command, actor = call

        async def work(uow: UnitOfWork) -> CommitResult | errors.Declined:
            locked = await lock_deciding_expiry(uow, command.reservation_id, self._metrics)
            if isinstance(locked, errors.Declined):
                return locked
            if locked.status is ReservationStatus.RELEASED:
                return errors.ReservationReleased(locked.reservation_id)
            try:
                amount = commit_amount(locked, command)
            except (errors.ReservationNotPriced, errors.CostTooLarge) as refused:
                if locked.status is ReservationStatus.COMMITTED:  # not this Commit, whatever
                    return errors.ReservationAlreadyCommitted(
                        locked.reservation_id, locked.committed_amount or 0)
                if isinstance(refused, errors.ReservationNotPriced):
                    return refused
                raise
            if locked.status is ReservationStatus.COMMITTED:
                if locked.committed_amount != amount:
                    return errors.ReservationAlreadyCommitted(
                        locked.reservation_id, locked.committed_amount or 0)
                entry = await uow.entries.usage_of(locked.reservation_id)
                balance = await uow.accounts.get(locked.account_id)
                assert entry is not None and balance is not None, "a commit wrote both"
                if command.units is not None and entry.units != command.units:
                    # other units that happen to cost the same are another Commit
                    return errors.ReservationAlreadyCommitted(
                        locked.reservation_id, locked.committed_amount or 0)
                uow.on_commit(lambda: self._metrics.replayed(METHOD))
                return CommitResult(reservation=locked, entry=entry, balance=balance)
            return await self._capture(uow, locked, amount, command, actor)

        return await self._transactions.run(work)

    async def _capture(
        self, uow: UnitOfWork, locked: Reservation, amount: int, command: CommitCommand,
        actor: str,
    ) -> CommitResult | errors.Declined:
        """Capture a locked ACTIVE reservation for `amount`, taking any excess from free lots
        in consumption order and writing off what goes back to expired lots."""
        account_id = locked.account_id
        current = (await lock_accounts(uow, [account_id], self._metrics))[account_id]
        split = lots.split_commit(locked.draws, amount)
        excess: list[tuple[int, int]] = []
        into_debt = 0
        beyond = amount - locked.amount  # more than was held: available must cover it
        if beyond > 0 and current.available < beyond:
            return errors.InsufficientCredits(account_id, current.available, beyond)
        if beyond > 0 and locked.member_account_id is not None:
            # a hold on a pool: the member's cap must cover the excess too
            refused = await _member_refuses(uow, locked.member_account_id, account_id, beyond)
            if refused is not None:
                return refused
        if split.excess and current.unlimited:  # the plan covers it: no lot is touched
            into_debt = split.excess
        elif split.excess:
            # What the draws do not cover (a larger amount, or a reservation held beyond
            # the lots under a credit limit) comes from free lots, then, with a credit
            # limit, goes into debt.
            free = await uow.lots.free_in_order({account_id: split.excess})
            taken = lots.take(free[account_id], split.excess, partial=True)
            assert taken is not None
            excess = taken
            into_debt = split.excess - sum(part for _, part in taken)
            if into_debt and not current.credit_limit and beyond > 0:
                raise errors.LotsOutOfStep(account_id)  # available said the lots cover it
        expired = (
            await uow.lots.expired_among(lot_id for lot_id, _ in split.given_back)
            if split.given_back else set()
        )
        changes, lapsed = lots.settle(locked.draws, split.consumed, excess, expired)
        await uow.lots.apply(changes)
        balance = await uow.accounts.capture(account_id, locked.amount, amount, into_debt)
        if balance is None:
            raise errors.LotsOutOfStep(account_id)
        finished = await uow.reservations.finish(
            [locked.reservation_id], ReservationStatus.COMMITTED, committed_amount=amount,
            debt_amount=into_debt)
        entry = await uow.entries.append(
            account_id=account_id,
            entry_type=EntryType.USAGE,
            amount=-amount,
            balance_after=balance.balance,
            reservation_id=locked.reservation_id,
            metadata=usage_metadata(locked, command),
            actor=actor,
            **usage_of(locked, command)._asdict(),
        )
        consumed = dict(split.consumed)
        for lot_id, part in excess:
            consumed[lot_id] = consumed.get(lot_id, 0) + part
        draws = await uow.reservations.record_consumption(
            locked.reservation_id, locked.draws, consumed)
        written_off = await write_off(uow, [
            WriteOff(account_id, lot_id, part, locked.reservation_id) for lot_id, part in lapsed
        ], self._metrics)
        uow.on_commit(lambda: self._metrics.committed(amount))
        return CommitResult(
            reservation=dataclasses.replace(finished[locked.reservation_id], draws=draws),
            entry=entry,
            balance=written_off.get(account_id, balance),
        )


async def _member_refuses(
    uow: UnitOfWork, member_account_id: str, pool_account_id: str, beyond: int
) -> errors.MemberCapExceeded | None:
    """MemberCapExceeded if the member's caps leave less than `beyond` (its row locked,
    after the pool's account)."""
    member = (await uow.organizations.lock_members([member_account_id])).get(member_account_id)
    if member is None:  # removed since: it holds nothing, so it held no hold of this pool
        raise errors.LotsOutOfStep(pool_account_id)
    today = (await uow.now()).date()
    if member.may_hold(beyond, today):
        return None
    return errors.MemberCapExceeded(member_account_id, pool_account_id,
                                    member.remaining(today) or 0, beyond)
