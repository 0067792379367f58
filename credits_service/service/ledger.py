"""The ledger's use cases. Each runs in one database transaction that includes its
idempotency record, retried as a whole on serialization failures and deadlocks only."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from credits_service.domain import errors, lots
from credits_service.domain.model import (
    BALANCE_MAX,
    PRIORITY_DEFAULT,
    BalanceQuery,
    BalanceReport,
    BalanceSnapshot,
    CommitCommand,
    CommitResult,
    EntryType,
    ExtendCommand,
    GrantCommand,
    GrantResult,
    HistoryPage,
    HistoryQuery,
    LedgerEntry,
    LotDraw,
    ReleaseCommand,
    ReleaseResult,
    Reservation,
    ReservationPage,
    ReservationsQuery,
    ReservationStatus,
    ReserveCommand,
    ReserveResult,
)
from credits_service.service import idempotency
from credits_service.service.events import LedgerEvents, NoEvents
from credits_service.service.group_commit import GroupCommitter
from credits_service.service.unit_of_work import UnitOfWork, UnitOfWorkFactory

_log = logging.getLogger(__name__)
T = TypeVar("T")
_ENTRY_ID_MAX = 2**63 - 1  # ledger entry ids are bigint
SYSTEM_ACTOR = "system"  # the actor of entries the service writes on its own (expiry)


def new_reservation_ids(count: int) -> list[str]:
    """`count` UUIDs of version 7 (RFC 9562): the Unix time in milliseconds, then 74 random
    bits, in canonical form. Holds created later get larger ids, so the indexes on
    reservation_id (the holds' and their draws' primary keys, the foreign keys' lookups) grow
    at their right edge instead of touching a random page each: 60 s batch runs went from
    14,778 and 14,815 to 15,362 and 15,453 items/s (random version 4 before). The random bits
    come from one read of the system's random source for them all (uuid4 reads it once per id,
    a system call each), formatted as hex digits directly instead of through an int."""
    millis = f"{time.time_ns() // 1_000_000:012x}"[-12:]
    random = os.urandom(10 * count).hex()  # 20 hex digits an id, 19 used
    ids = []
    for start in range(0, 20 * count, 20):
        digits = random[start:start + 19]
        ids.append(f"{millis[:8]}-{millis[8:]}-7{digits[:3]}-"
                   f"{'89ab'[int(digits[3], 16) & 3]}{digits[4:7]}-{digits[7:]}")
    return ids


class _Alone:
    """A grouped Commit or Release the group leaves to its own transaction (see Ledger.commit
    and Ledger.release)."""


ALONE = _Alone()


class LotsOutOfStep(Exception):
    """An account's lots disagree with its balance row: a bug, never a caller's fault. The
    transaction is rolled back and the call fails as INTERNAL."""

    def __init__(self, account_id: str) -> None:
        super().__init__(f"lots of account {account_id!r} disagree with its balance")


@dataclass(frozen=True, slots=True)
class LedgerLimits:
    hold_ttl_default_ms: int = 300_000
    hold_lifetime_max_ms: int = 7 * 86_400_000
    lots_listed_max: int = 100
    batch_concurrency: int = 4  # transactions one BatchCommit runs at once
    # BatchCheckAndReserve: shards of accounts, each deciding the items of its accounts one
    # transaction at a time, or up to batch_reserve_full_groups_max at once while its queue fills
    # whole groups (see check_and_reserve_batch), and the items one such transaction decides at
    # most. bench/README.md has the figures behind all three.
    batch_reserve_shards: int = 4
    batch_reserve_group_items_max: int = 500
    batch_reserve_full_groups_max: int = 2
    group_size_max: int = 100  # CheckAndReserve or Commit calls one transaction decides at most
    group_concurrency: int = 1  # group transactions of each kind running at once
    page_size_default: int = 50
    page_size_max: int = 500
    transaction_attempts_max: int = 5
    balance_max: int = BALANCE_MAX


class Ledger:
    """Use cases of the credits ledger. Safe to share between concurrent calls."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        limits: LedgerLimits,
        events: LedgerEvents | None = None,
    ) -> None:
        self._uow_factory = uow_factory
        self._limits = limits
        self._events: LedgerEvents = events or NoEvents()
        self._in_flight: set[asyncio.Task[Any]] = set()
        # BatchCheckAndReserve items, split by account over shards (see check_and_reserve_batch).
        self._batch_shards: list[GroupCommitter[list[tuple[ReserveCommand, str]], Any]] = [
            GroupCommitter(
                self._check_and_reserve_parts,
                group_size_max=limits.batch_reserve_group_items_max,
                concurrency=1,
                concurrency_when_full=limits.batch_reserve_full_groups_max,
                size_of=len,
                on_group=lambda size: self._events.grouped("BatchCheckAndReserve", size),
            )
            for _ in range(limits.batch_reserve_shards)
        ]
        # Concurrent CheckAndReserve calls share transactions (see group_commit.py).
        self._reserve_group: GroupCommitter[tuple[ReserveCommand, str], Any] = GroupCommitter(
            self.check_and_reserve_many,
            group_size_max=limits.group_size_max,
            concurrency=limits.group_concurrency,
            on_group=lambda size: self._events.grouped("CheckAndReserve", size),
        )
        # So do plain Commits (see _commit_many) and plain Releases (see _release_many).
        self._commit_group: GroupCommitter[tuple[CommitCommand, str], Any] = GroupCommitter(
            self._commit_many,
            group_size_max=limits.group_size_max,
            concurrency=limits.group_concurrency,
            on_group=lambda size: self._events.grouped("Commit", size),
        )
        self._release_group: GroupCommitter[ReleaseCommand, Any] = GroupCommitter(
            self._release_many,
            group_size_max=limits.group_size_max,
            concurrency=limits.group_concurrency,
            on_group=lambda size: self._events.grouped("Release", size),
        )

    # --- use cases -----------------------------------------------------------------------

    async def grant(self, command: GrantCommand, actor: str) -> GrantResult:
        """Add credits as a new lot (creating the account), once per idempotency key."""

        async def effect(uow: UnitOfWork) -> GrantResult | errors.DomainError:
            if command.expire_time is not None and command.expire_time <= await uow.lots.now():
                # Raised, not returned: the transaction rolls back and the key stays unused,
                # as for any other invalid argument.
                raise errors.ExpireTimePassed(command.expire_time.isoformat())
            balance = await uow.accounts.credit(
                command.account_id, command.amount, self._limits.balance_max
            )
            if balance is None:
                current = await uow.accounts.get(command.account_id)
                return errors.BalanceLimitExceeded(
                    command.account_id, current.balance, command.amount, self._limits.balance_max
                )
            lot = await uow.lots.create(
                account_id=command.account_id,
                source_type=command.grant_type,
                priority=PRIORITY_DEFAULT if command.priority is None else command.priority,
                expire_time=command.expire_time,
                amount=command.amount,
            )
            entry = await uow.ledger.append(
                account_id=command.account_id,
                entry_type=EntryType.GRANT,
                grant_type=command.grant_type,
                amount=command.amount,
                balance_after=balance.balance,
                reason=command.reason,
                metadata=command.metadata,
                actor=actor,
                lot_id=lot.lot_id,
            )
            uow.on_commit(lambda: self._events.granted(command.amount))
            lot = dataclasses.replace(lot, grant_entry_id=entry.entry_id)
            return GrantResult(entry=entry, balance=balance, lot=lot)

        return await self._idempotent("Grant", command, command.idempotency_key, actor, effect)

    async def check_and_reserve(self, command: ReserveCommand, actor: str) -> ReserveResult:
        """Hold credits if available covers them, drawing from lots in consumption order, once
        per idempotency key (declines too)."""
        outcome = await self._reserve_group.submit((command, actor))
        if isinstance(outcome, errors.DomainError):
            raise outcome
        return outcome

    async def check_and_reserve_batch(
        self, calls: Sequence[tuple[ReserveCommand, str]]
    ) -> list[ReserveResult | errors.DomainError]:
        """The answers check_and_reserve_many gives `calls`, decided shard by shard: each call
        goes to the shard of its account (LedgerLimits.batch_reserve_shards), and each shard
        decides the calls of concurrent batches together, one transaction at a time (a second
        one starts only with a full group, while calls queue faster than one drains). Shards
        share no account, so their transactions never wait on each other's account locks, and
        a transaction decides the calls of one account in order, as one by one. Every part is
        decided before this returns or raises the first part's failure."""
        parts = _split_by_account(calls, len(self._batch_shards))
        decided = await asyncio.gather(
            *(self._batch_shards[shard].submit([calls[i] for i in indexes])
              for shard, indexes in parts),
            return_exceptions=True,
        )
        outcomes: list[Any] = [None] * len(calls)
        for (_, indexes), part in zip(parts, decided, strict=True):
            if isinstance(part, BaseException):
                raise part
            for i, outcome in zip(indexes, part, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _check_and_reserve_parts(
        self, parts: Sequence[list[tuple[ReserveCommand, str]]]
    ) -> list[list[ReserveResult | errors.DomainError]]:
        """check_and_reserve_many for the parts of concurrent batches, in one transaction."""
        outcomes = await self.check_and_reserve_many([call for part in parts for call in part])
        decided: list[list[ReserveResult | errors.DomainError]] = []
        start = 0
        for part in parts:
            decided.append(outcomes[start:start + len(part)])
            start += len(part)
        return decided

    async def check_and_reserve_many(
        self, calls: Sequence[tuple[ReserveCommand, str]]
    ) -> list[ReserveResult | errors.DomainError]:
        """Place several holds in one transaction, each (command, actor) with its own
        idempotency key (scoped to its actor) and its own result or decline: the same answers
        as placing them one by one, in order. The same key twice answers twice alike."""
        method = "CheckAndReserve"
        digests = [idempotency.request_hash(method, command) for command, _ in calls]
        first: dict[tuple[str, str], int] = {}
        for i, (command, actor) in enumerate(calls):
            first.setdefault((actor, command.idempotency_key), i)

        async def work(uow: UnitOfWork) -> list[ReserveResult | errors.DomainError]:
            outcomes: list[Any] = [None] * len(calls)
            stored, snapshots = await uow.holds.find_and_lock([
                (scope, key, calls[i][0].account_id) for (scope, key), i in first.items()
            ])
            new: list[int] = []  # in call order, as first is
            for pair, i in first.items():
                found = stored.get(pair)
                if found is None:
                    new.append(i)
                elif found[0] != digests[i]:
                    outcomes[i] = errors.IdempotencyKeyReused(pair[1])
                else:
                    assert found[1] is not None, "a committed key always has its response"
                    outcomes[i] = idempotency.decode(found[1])
                    uow.on_commit(lambda: self._events.replayed(method))
            if new:
                await self._place_holds(uow, calls, new, outcomes, snapshots, method, digests)
            for i, (command, actor) in enumerate(calls):
                j = first[(actor, command.idempotency_key)]
                if j != i:
                    outcomes[i] = (outcomes[j] if digests[i] == digests[j]
                                   else errors.IdempotencyKeyReused(command.idempotency_key))
            return outcomes

        return await self._transaction(work, grouped=True)

    async def _place_holds(
        self,
        uow: UnitOfWork,
        calls: Sequence[tuple[ReserveCommand, str]],
        indexes: list[int],
        outcomes: list[Any],
        snapshots: dict[str, BalanceSnapshot],
        method: str,
        digests: list[bytes],
    ) -> None:
        """Decide and write the holds of calls[i] for i in `indexes` (their idempotency keys
        not stored yet, their accounts locked with these `snapshots`), in that order, into
        outcomes[i], and store their keys with `method`, request hash digests[i] and the
        answer: expire due lots, draw from free lots in consumption order, write everything
        set-based. A key another transaction stored meanwhile rolls all back, to run again."""
        wanted: dict[str, int] = {}
        for i in indexes:
            command = calls[i][0]
            if command.account_id in snapshots:
                wanted[command.account_id] = wanted.get(command.account_id, 0) + command.amount
        holds: list[tuple[int, Reservation]] = []
        free: dict[str, list[tuple[int, int]]] = {}
        now = datetime.min  # set below whenever a hold can be placed
        if wanted:
            expired, free, now = await uow.holds.expire_and_find(list(snapshots), wanted)
            snapshots.update(await self._write_off_lapsed(uow, expired))
        changes: dict[int, int] = {}
        per_account: dict[str, tuple[int, int]] = {}
        reservation_ids = iter(new_reservation_ids(len(indexes)))
        balances: dict[int, BalanceSnapshot] = {}
        for i in indexes:
            command = calls[i][0]
            account_id = command.account_id
            snapshot = snapshots.get(account_id)
            if snapshot is None:
                outcomes[i] = errors.AccountNotFound(account_id)
                continue
            if snapshot.available < command.amount:
                outcomes[i] = errors.InsufficientCredits(
                    account_id, snapshot.available, command.amount
                )
                continue
            draws = lots.take(free[account_id], command.amount)
            if draws is None:
                raise LotsOutOfStep(account_id)
            free[account_id] = lots.left_after(free[account_id], draws)
            for lot_id, part in draws:
                changes[lot_id] = changes.get(lot_id, 0) + part
            snapshot = snapshot.holding(command.amount)
            snapshots[account_id] = balances[i] = snapshot
            held, count = per_account.get(account_id, (0, 0))
            per_account[account_id] = (held + command.amount, count + 1)
            ttl_ms = command.ttl_ms or self._limits.hold_ttl_default_ms
            hold = Reservation(
                reservation_id=next(reservation_ids),
                account_id=account_id,
                amount=command.amount,
                status=ReservationStatus.ACTIVE,
                committed_amount=None,
                create_time=now,
                expire_time=now + timedelta(milliseconds=ttl_ms),
                finish_time=None,
                metadata=dict(command.metadata),
                draws=tuple(LotDraw(lot_id, part) for lot_id, part in draws),
            )
            holds.append((i, hold))
            outcomes[i] = ReserveResult(reservation=hold, balance=balances[i])
        responses = [(calls[i][1], calls[i][0].idempotency_key, digests[i],
                      idempotency.encode(outcomes[i])) for i in indexes]
        if not holds:
            await uow.holds.complete(method, responses)
            return
        updated, written = await uow.holds.place(
            changes, per_account, [hold for _, hold in holds],
            [calls[i][1] for i, _ in holds], method, responses,
        )
        draws_written = sum(len(hold.draws) for _, hold in holds)
        if (any(updated.get(account_id) != snapshots[account_id] for account_id in per_account)
                or written != (len(changes), len(holds), draws_written, len(responses))):
            raise LotsOutOfStep(next(iter(per_account)))
        uow.on_commit(lambda: self._events.reserved(len(holds)))

    async def commit(self, command: CommitCommand, actor: str) -> CommitResult:
        """Capture a hold for its amount or another; repeating with the same amount replays.
        It consumes what the hold drew, in consumption order; a larger amount takes the excess
        from free lots in consumption order; a smaller one gives the rest back.

        Concurrent Commits share transactions (_commit_many); the group leaves every case but
        the plain one to a transaction of its own (_commit_alone)."""
        outcome = await self._commit_group.submit((command, actor))
        if outcome is ALONE:
            return await self._commit_alone(command, actor)
        if isinstance(outcome, errors.DomainError):
            raise outcome
        return outcome

    async def _commit_many(
        self, calls: Sequence[tuple[CommitCommand, str]]
    ) -> list[CommitResult | _Alone]:
        """Commit, in one transaction, the plain cases among `calls`: an ACTIVE hold, not due,
        committed for at most its amount, whose given-back credits go to unexpired lots, named
        once in the group. Every other call is answered ALONE, untouched, for _commit_alone to
        decide. The same results as committing one by one, in order."""

        async def work(uow: UnitOfWork) -> list[CommitResult | _Alone]:
            outcomes: list[Any] = [ALONE] * len(calls)
            active, snapshots, now = await _lock_active_holds(
                uow, [command.reservation_id for command, _ in calls]
            )
            plain: list[tuple[int, Reservation, int, lots.CommitSplit]] = []
            for i, ((command, _), hold) in enumerate(zip(calls, active, strict=True)):
                if hold is None:
                    continue
                amount = command.amount if command.amount is not None else hold.amount
                split = lots.split_commit(hold.draws, amount)
                if not split.excess:
                    plain.append((i, hold, amount, split))
            if not plain:
                return outcomes
            given_back = [lot_id for _, _, _, split in plain for lot_id, _ in split.given_back]
            due, expired = await uow.holds.expire_and_check(list(snapshots), given_back)
            snapshots.update(await self._write_off_lapsed(uow, due))
            plain = [p for p in plain if not any(lot_id in expired
                                                 for lot_id, _ in p[3].given_back)]
            if not plain:
                return outcomes
            lot_changes: list[lots.LotChange] = []
            captures: dict[str, tuple[int, int, int]] = {}
            balances: dict[int, BalanceSnapshot] = {}
            usages: list[tuple[str, int, int, str, Any, str]] = []
            consumed: list[tuple[str, int, int]] = []
            for i, hold, amount, split in plain:
                changes, write_offs = lots.settle(hold.draws, split.consumed, (), set())
                assert not write_offs, "no lot a plain commit gives back to is expired"
                lot_changes.extend(changes)
                held, used, count = captures.get(hold.account_id, (0, 0, 0))
                captures[hold.account_id] = (held + hold.amount, used + amount, count + 1)
                before = snapshots[hold.account_id]
                snapshots[hold.account_id] = balances[i] = dataclasses.replace(
                    before,
                    balance=before.balance - amount,
                    reserved=before.reserved - hold.amount,
                    active_reservation_count=before.active_reservation_count - 1,
                    lifetime_used=before.lifetime_used + amount,
                )
                command, actor = calls[i]
                usages.append((hold.account_id, amount, balances[i].balance,
                               hold.reservation_id, command.metadata, actor))
                consumed.extend((hold.reservation_id, lot_id, part)
                                for lot_id, part in split.consumed)
            changed = _summed(lot_changes)
            updated, entry_ids, written = await uow.holds.capture(
                changed, captures,
                [(hold.reservation_id, amount) for _, hold, amount, _ in plain], consumed, usages,
            )
            if (any(updated.get(account_id) != snapshots[account_id] for account_id in captures)
                    or len(entry_ids) != len(plain)
                    or written != (len(changed), len(plain), len(consumed))):
                raise LotsOutOfStep(plain[0][1].account_id)
            for i, hold, amount, split in plain:
                command, actor = calls[i]
                used = dict(split.consumed)
                outcomes[i] = CommitResult(
                    reservation=dataclasses.replace(
                        hold,
                        status=ReservationStatus.COMMITTED,
                        committed_amount=amount,
                        finish_time=now,
                        draws=tuple(dataclasses.replace(draw, consumed=used.get(draw.lot_id, 0))
                                    for draw in hold.draws),
                    ),
                    entry=LedgerEntry(
                        entry_id=entry_ids[hold.reservation_id],
                        account_id=hold.account_id,
                        entry_type=EntryType.USAGE,
                        grant_type=None,
                        amount=-amount,
                        balance_after=balances[i].balance,
                        reservation_id=hold.reservation_id,
                        reason="",
                        metadata=dict(command.metadata),
                        actor=actor,
                        create_time=now,
                    ),
                    balance=balances[i],
                )
            uow.on_commit(lambda: [self._events.committed(amount) for _, _, amount, _ in plain])
            return outcomes

        return await self._transaction(work, grouped=True)

    async def _commit_alone(self, command: CommitCommand, actor: str) -> CommitResult:
        """Commit in a transaction of its own: every case (replays, expiry, declines, a larger
        amount, give-backs to expired lots)."""

        async def work(uow: UnitOfWork) -> CommitResult | errors.DomainError:
            locked = await self._lock_deciding_expiry(uow, command.reservation_id)
            if isinstance(locked, errors.DomainError):
                return locked
            amount = command.amount if command.amount is not None else locked.amount
            if locked.status is ReservationStatus.COMMITTED:
                if locked.committed_amount != amount:
                    return errors.ReservationAlreadyCommitted(
                        locked.reservation_id, locked.committed_amount or 0
                    )
                entry = await uow.ledger.usage_of(locked.reservation_id)
                balance = await uow.accounts.get(locked.account_id)
                uow.on_commit(lambda: self._events.replayed("Commit"))
                return CommitResult(reservation=locked, entry=entry, balance=balance)
            if locked.status is ReservationStatus.RELEASED:
                return errors.ReservationReleased(locked.reservation_id)
            account_id = locked.account_id
            current = (await self._lock_accounts(uow, [account_id]))[account_id]
            split = lots.split_commit(locked.draws, amount)
            excess: list[tuple[int, int]] = []
            if split.excess:
                free = await uow.lots.free_in_order_many({account_id: split.excess})
                taken = lots.take(free[account_id], split.excess)
                if taken is None:
                    return errors.InsufficientCredits(account_id, current.available, split.excess)
                excess = taken
            expired = (
                await uow.lots.expired_among(lot_id for lot_id, _ in split.given_back)
                if split.given_back else set()
            )
            changes, write_offs = lots.settle(locked.draws, split.consumed, excess, expired)
            await uow.lots.apply(changes)
            balance = await uow.accounts.capture(account_id, locked.amount, amount)
            if balance is None:
                raise LotsOutOfStep(account_id)
            finished = await uow.reservations.finish(
                [locked.reservation_id], ReservationStatus.COMMITTED, committed_amount=amount
            )
            committed = finished[locked.reservation_id]
            entry = await uow.ledger.append(
                account_id=account_id,
                entry_type=EntryType.USAGE,
                amount=-amount,
                balance_after=balance.balance,
                reservation_id=locked.reservation_id,
                metadata=command.metadata,
                actor=actor,
            )
            consumed = dict(split.consumed)
            for lot_id, part in excess:
                consumed[lot_id] = consumed.get(lot_id, 0) + part
            draws = await uow.reservations.record_consumption(
                locked.reservation_id, locked.draws, consumed
            )
            written_off = await self._write_off(
                uow, [(account_id, lot_id, part, locked.reservation_id)
                      for lot_id, part in write_offs]
            )
            balance = written_off.get(account_id, balance)
            uow.on_commit(lambda: self._events.committed(amount))
            return CommitResult(
                reservation=dataclasses.replace(committed, draws=draws), entry=entry,
                balance=balance,
            )

        return await self._transaction(work)

    async def commit_each(
        self, commands: Sequence[CommitCommand], actor: str
    ) -> list[CommitResult | Exception]:
        """Commit each hold in its own transaction, a few at a time, so one failing item never
        fails another: each gets its result or the exception it alone would have raised."""
        limit = asyncio.Semaphore(self._limits.batch_concurrency)

        async def one(command: CommitCommand) -> CommitResult | Exception:
            async with limit:
                try:
                    return await self.commit(command, actor)
                except Exception as exc:  # reported per item, by the caller
                    return exc

        return list(await asyncio.gather(*(one(command) for command in commands)))

    async def release(self, command: ReleaseCommand, actor: str) -> ReleaseResult:
        """Void an active hold, giving its credits back to the lots they came from; releasing a
        released hold replays.

        Concurrent Releases share transactions (_release_many); the group leaves every case but
        the plain one to a transaction of its own (_release_alone)."""
        outcome = await self._release_group.submit(command)
        if outcome is ALONE:
            return await self._release_alone(command)
        if isinstance(outcome, errors.DomainError):
            raise outcome
        return outcome

    async def _release_many(
        self, commands: Sequence[ReleaseCommand]
    ) -> list[ReleaseResult | _Alone]:
        """Release, in one transaction, the plain cases among `commands`: an ACTIVE hold, not
        due, whose credits all go back to unexpired lots, named once in the group. Every other
        call is answered ALONE, untouched, for _release_alone to decide. The same results as
        releasing one by one, in order."""

        async def work(uow: UnitOfWork) -> list[ReleaseResult | _Alone]:
            outcomes: list[Any] = [ALONE] * len(commands)
            active, snapshots, now = await _lock_active_holds(
                uow, [command.reservation_id for command in commands]
            )
            plain = [(i, hold) for i, hold in enumerate(active) if hold is not None]
            if not plain:
                return outcomes
            given_back = [draw.lot_id for _, hold in plain for draw in hold.draws]
            due, expired = await uow.holds.expire_and_check(list(snapshots), given_back)
            snapshots.update(await self._write_off_lapsed(uow, due))
            plain = [(i, hold) for i, hold in plain
                     if not any(draw.lot_id in expired for draw in hold.draws)]
            if not plain:
                return outcomes
            lot_changes: list[lots.LotChange] = []
            per_account: dict[str, tuple[int, int]] = {}
            balances: dict[int, BalanceSnapshot] = {}
            for i, hold in plain:
                changes, write_offs = lots.settle(hold.draws, (), (), set())
                assert not write_offs, "no lot a plain release gives back to is expired"
                lot_changes.extend(changes)
                held, count = per_account.get(hold.account_id, (0, 0))
                per_account[hold.account_id] = (held + hold.amount, count + 1)
                before = snapshots[hold.account_id]
                snapshots[hold.account_id] = balances[i] = dataclasses.replace(
                    before,
                    reserved=before.reserved - hold.amount,
                    active_reservation_count=before.active_reservation_count - 1,
                )
            changed = _summed(lot_changes)
            updated, written = await uow.holds.release(
                changed, per_account,
                [(hold.reservation_id, commands[i].reason) for i, hold in plain],
            )
            if (any(updated.get(account_id) != snapshots[account_id]
                    for account_id in per_account)
                    or written != (len(changed), len(plain))):
                raise LotsOutOfStep(plain[0][1].account_id)
            for i, hold in plain:
                outcomes[i] = ReleaseResult(
                    reservation=dataclasses.replace(
                        hold,
                        status=ReservationStatus.RELEASED,
                        finish_time=now,
                        release_reason=commands[i].reason,
                    ),
                    balance=balances[i],
                )
            uow.on_commit(lambda: [self._events.released() for _ in plain])
            return outcomes

        return await self._transaction(work, grouped=True)

    async def _release_alone(self, command: ReleaseCommand) -> ReleaseResult:
        """Release in a transaction of its own: every case (replays, expiry, declines,
        give-backs to expired lots)."""

        async def work(uow: UnitOfWork) -> ReleaseResult | errors.DomainError:
            locked = await self._lock_deciding_expiry(uow, command.reservation_id)
            if isinstance(locked, errors.DomainError):
                return locked
            if locked.status is ReservationStatus.COMMITTED:
                return errors.ReservationAlreadyCommitted(
                    locked.reservation_id, locked.committed_amount or 0
                )
            if locked.status is ReservationStatus.RELEASED:
                balance = await uow.accounts.get(locked.account_id)
                uow.on_commit(lambda: self._events.replayed("Release"))
                return ReleaseResult(reservation=locked, balance=balance)
            released, balances = await self._void(
                uow, [locked], ReservationStatus.RELEASED, command.reason
            )
            uow.on_commit(self._events.released)
            return ReleaseResult(
                reservation=released[locked.reservation_id], balance=balances[locked.account_id]
            )

        return await self._transaction(work)

    async def extend(self, command: ExtendCommand) -> Reservation:
        """Keep an active hold alive: expire_time becomes now + ttl, never earlier than it was,
        never past create_time + the hold lifetime maximum."""

        async def work(uow: UnitOfWork) -> Reservation | errors.DomainError:
            locked = await self._lock_deciding_expiry(uow, command.reservation_id)
            if isinstance(locked, errors.DomainError):
                return locked
            if locked.status is ReservationStatus.COMMITTED:
                return errors.ReservationAlreadyCommitted(
                    locked.reservation_id, locked.committed_amount or 0
                )
            if locked.status is ReservationStatus.RELEASED:
                return errors.ReservationReleased(locked.reservation_id)
            extended = await uow.reservations.extend(
                locked.reservation_id, command.ttl_ms, self._limits.hold_lifetime_max_ms
            )
            return dataclasses.replace(extended, draws=locked.draws)

        return await self._transaction(work)

    async def get_balance(self, query: BalanceQuery) -> BalanceReport:
        async def work(uow: UnitOfWork) -> BalanceReport | errors.DomainError:
            balance = await uow.accounts.get(query.account_id)
            if balance is None:
                return errors.AccountNotFound(query.account_id)
            listed, expiring = await uow.lots.listing(
                query.account_id, self._limits.lots_listed_max + 1, query.expiring_within_ms
            )
            return BalanceReport(
                balance=balance,
                lots=tuple(listed[: self._limits.lots_listed_max]),
                lots_truncated=len(listed) > self._limits.lots_listed_max,
                expiring_amount=expiring,
            )

        return await self._transaction(work)

    async def history(self, query: HistoryQuery) -> HistoryPage:
        """One page of the account's ledger, newest first, keyset-paginated by entry id."""
        page_size = min(query.page_size or self._limits.page_size_default,
                        self._limits.page_size_max)
        filters = _filter_digest(query)
        before = _decode_page_token(query.page_token, filters) if query.page_token else None

        async def work(uow: UnitOfWork) -> HistoryPage | errors.DomainError:
            entries = await uow.ledger.page(
                account_id=query.account_id,
                before_entry_id=before,
                entry_types=query.entry_types,
                start_time=query.start_time,
                end_time=query.end_time,
                limit=page_size + 1,
            )
            if not entries and before is None and await uow.accounts.get(query.account_id) is None:
                return errors.AccountNotFound(query.account_id)
            has_more = len(entries) > page_size
            entries = entries[:page_size]
            token = _encode_page_token(entries[-1].entry_id, filters) if has_more else ""
            return HistoryPage(entries=tuple(entries), next_page_token=token)

        return await self._transaction(work)

    async def list_reservations(self, query: ReservationsQuery) -> ReservationPage:
        """One page of the account's holds, newest first, keyset-paginated."""
        page_size = min(query.page_size or self._limits.page_size_default,
                        self._limits.page_size_max)
        filters = _digest(
            ["reservations", query.account_id, sorted(s.value for s in query.statuses)]
        )
        before = (
            _decode_reservation_token(query.page_token, filters) if query.page_token else None
        )

        async def work(uow: UnitOfWork) -> ReservationPage | errors.DomainError:
            holds = await uow.reservations.page(
                account_id=query.account_id,
                statuses=query.statuses,
                before=before,
                limit=page_size + 1,
            )
            if not holds and before is None and await uow.accounts.get(query.account_id) is None:
                return errors.AccountNotFound(query.account_id)
            has_more = len(holds) > page_size
            holds = holds[:page_size]
            token = ""
            if has_more:
                token = _encode_token(
                    [holds[-1].create_time.isoformat(), holds[-1].reservation_id], filters
                )
            return ReservationPage(reservations=tuple(holds), next_page_token=token)

        return await self._transaction(work)

    async def expire_due_holds(self, batch_size: int) -> int:
        """Expire ACTIVE holds whose expire_time has passed; returns how many."""

        async def work(uow: UnitOfWork) -> int:
            holds = await uow.reservations.lock_due(batch_size)
            if holds:
                await self._void(uow, holds, ReservationStatus.EXPIRED)
                uow.on_commit(lambda: self._events.expired(len(holds)))
            return len(holds)

        return await self._transaction(work)

    async def expire_due_lots(self, batch_size: int) -> int:
        """Write off the unheld credits of lots past expire_time, for up to `batch_size`
        accounts; returns how many accounts it handled."""

        async def work(uow: UnitOfWork) -> int:
            account_ids = await uow.lots.due_accounts(batch_size)
            if account_ids:
                await self._write_off_due_lots(uow, account_ids)
            return len(account_ids)

        return await self._transaction(work)

    async def purge_idempotency_keys(self, older_than_s: float, batch_size: int) -> int:
        async def work(uow: UnitOfWork) -> int:
            return await uow.idempotency.purge(older_than_s, batch_size)

        return await self._transaction(work)

    async def drain(self, timeout_s: float) -> None:
        """Wait, at most `timeout_s`, for transactions still running after their callers left."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=timeout_s)

    # --- lots ----------------------------------------------------------------------------

    async def _lock_accounts(
        self, uow: UnitOfWork, account_ids: list[str]
    ) -> dict[str, BalanceSnapshot]:
        """Lock the accounts and write off their lots that are past expire_time, so nothing
        this transaction does can spend or count an expired credit."""
        locked = await uow.accounts.lock(account_ids)
        if locked:
            locked.update(await self._write_off_due_lots(uow, list(locked)))
        return locked

    async def _write_off_due_lots(
        self, uow: UnitOfWork, account_ids: list[str]
    ) -> dict[str, BalanceSnapshot]:
        """Expire the (locked) accounts' due lots, one EXPIRY entry per lot with unheld credits;
        returns the balances that changed."""
        return await self._write_off_lapsed(uow, await uow.lots.expire_due(account_ids))

    async def _write_off_lapsed(
        self, uow: UnitOfWork, expired: list[tuple[str, int, int]]
    ) -> dict[str, BalanceSnapshot]:
        """Write off lots just marked expired, given as (account_id, lot_id, unheld credits) in
        expiry order; returns the balances that changed."""
        return await self._write_off(
            uow, [(account_id, lot_id, unheld, None) for account_id, lot_id, unheld in expired]
        )

    async def _write_off(
        self, uow: UnitOfWork, write_offs: list[tuple[str, int, int, str | None]]
    ) -> dict[str, BalanceSnapshot]:
        """Take expired credits off the balances with their EXPIRY entries, in one statement;
        returns the balances that changed."""
        write_offs = [w for w in write_offs if w[2]]
        if not write_offs:
            return {}
        balances = await uow.ledger.write_off(write_offs, SYSTEM_ACTOR)
        total = sum(amount for _, _, amount, _ in write_offs)
        uow.on_commit(lambda: self._events.written_off(total))
        return balances

    async def _void(
        self,
        uow: UnitOfWork,
        holds: list[Reservation],
        status: ReservationStatus,
        reason: str = "",
    ) -> tuple[dict[str, Reservation], dict[str, BalanceSnapshot]]:
        """End locked ACTIVE holds without consuming anything: every draw goes back to its lot,
        and what goes back to an expired lot is written off at once."""
        balances = await self._lock_accounts(uow, [hold.account_id for hold in holds])
        expired = await uow.lots.expired_among(d.lot_id for hold in holds for d in hold.draws)
        lot_changes: list[lots.LotChange] = []
        write_offs: list[tuple[Reservation, list[tuple[int, int]]]] = []
        for hold in holds:
            changes, hold_write_offs = lots.settle(hold.draws, (), (), expired)
            lot_changes.extend(changes)
            if hold_write_offs:
                write_offs.append((hold, hold_write_offs))
        await uow.lots.apply(lots.LotChange(lot_id, held, remaining)
                             for lot_id, (held, remaining) in _summed(lot_changes).items())
        finished = await uow.reservations.finish(
            [hold.reservation_id for hold in holds], status, release_reason=reason
        )
        if len(finished) != len(holds):
            raise LotsOutOfStep(holds[0].account_id)
        per_account: dict[str, tuple[int, int]] = {}
        for hold in holds:
            held, count = per_account.get(hold.account_id, (0, 0))
            per_account[hold.account_id] = (held + hold.amount, count + 1)
        balances.update(await uow.accounts.unhold(per_account))
        balances.update(await self._write_off(uow, [
            (hold.account_id, lot_id, part, hold.reservation_id)
            for hold, hold_write_offs in write_offs for lot_id, part in hold_write_offs
        ]))
        ended = {
            hold.reservation_id: dataclasses.replace(
                finished[hold.reservation_id], draws=hold.draws
            )
            for hold in holds
        }
        return ended, balances

    # --- transactions --------------------------------------------------------------------

    async def _lock_deciding_expiry(
        self, uow: UnitOfWork, reservation_id: str
    ) -> Reservation | errors.DomainError:
        """Lock the hold. One still ACTIVE past its expire_time (database clock) is expired
        here, as the sweeper would, so a late Commit or Release can never win over expiry."""
        locked = await uow.reservations.lock(reservation_id)
        if locked is None:
            return errors.ReservationNotFound(reservation_id)
        reservation, is_due = locked
        if reservation.status is ReservationStatus.ACTIVE and is_due:
            await self._void(uow, [reservation], ReservationStatus.EXPIRED)
            uow.on_commit(lambda: self._events.expired(1))
            return errors.ReservationExpired(reservation_id)
        if reservation.status is ReservationStatus.EXPIRED:
            return errors.ReservationExpired(reservation_id)
        return reservation

    async def _idempotent(
        self,
        method: str,
        command: Any,
        key: str,
        scope: str,
        effect: Callable[[UnitOfWork], Awaitable[T | errors.DomainError]],
    ) -> T:
        digest = idempotency.request_hash(method, command)

        async def work(uow: UnitOfWork) -> Any:
            if not await uow.idempotency.claim(scope, key, method, digest):
                stored = await uow.idempotency.get(scope, key)
                if stored is None:  # purged between our insert and read: run again
                    raise errors.TransientConflict("idempotency key vanished")
                stored_digest, response = stored
                if stored_digest != digest:
                    return errors.IdempotencyKeyReused(key)
                assert response is not None, "a committed key always has its response"
                uow.on_commit(lambda: self._events.replayed(method))
                return idempotency.decode(response)
            outcome = await effect(uow)
            await uow.idempotency.complete(scope, key, idempotency.encode(outcome))
            return outcome

        return await self._transaction(work)

    async def _transaction(
        self, work: Callable[[UnitOfWork], Awaitable[Any]], *, grouped: bool = False
    ) -> Any:
        """Run `work` in one committed transaction and return its result, raising a domain
        decline only after committing (a decline may still have written, e.g. an expiry or an
        idempotency record). Once begun, the transaction runs to its end even if the caller is
        cancelled, so it never stops half way on the client side: it is bounded instead by the
        database timeouts, lowered to the caller's deadline when that is nearer (see
        SqlUnitOfWork), and by the client-side command timeout. `grouped`: a group commit's
        transaction (UnitOfWorkFactory)."""
        task = asyncio.ensure_future(self._with_retries(work, grouped))
        self._in_flight.add(task)
        task.add_done_callback(_forget(self._in_flight))
        outcome = await asyncio.shield(task)
        if isinstance(outcome, errors.DomainError):
            raise outcome
        return outcome

    async def _with_retries(
        self, work: Callable[[UnitOfWork], Awaitable[Any]], grouped: bool
    ) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(errors.TransientConflict),
            stop=stop_after_attempt(self._limits.transaction_attempts_max),
            wait=wait_random_exponential(multiplier=0.005, max=0.1),
            before_sleep=lambda _: self._events.transaction_retried(),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with self._uow_factory(grouped=grouped) as uow:
                    outcome = await work(uow)
                    await uow.commit()
        return outcome


async def _lock_active_holds(
    uow: UnitOfWork, reservation_ids: Sequence[str]
) -> tuple[list[Reservation | None], dict[str, BalanceSnapshot], datetime]:
    """The start of a group of Commits or Releases, one reservation id per call: lock the holds
    named once in the group, and the accounts of those ACTIVE and not due (a group decides no
    other case). Returns per call its hold if so (else None), the locked accounts' balances and
    the service clock."""
    counts: dict[str, int] = {}
    for rid in reservation_ids:
        counts[rid] = counts.get(rid, 0) + 1
    locked, snapshots, now = await uow.holds.lock_for_commit(
        [rid for rid, count in counts.items() if count == 1]
    )
    active: list[Reservation | None] = []
    for rid in reservation_ids:
        found = locked.get(rid)
        plain = found is not None and not found[1] and found[0].status is ReservationStatus.ACTIVE
        active.append(found[0] if plain else None)
    return active, snapshots, now


def _summed(changes: Sequence[lots.LotChange]) -> dict[int, tuple[int, int]]:
    """Per lot, the (held, remaining) deltas of `changes` added up; lots left unchanged out."""
    summed: dict[int, tuple[int, int]] = {}
    for change in changes:
        held, remaining = summed.get(change.lot_id, (0, 0))
        summed[change.lot_id] = (held + change.held_delta, remaining + change.remaining_delta)
    return {lot_id: deltas for lot_id, deltas in summed.items() if deltas != (0, 0)}


def _split_by_account(
    calls: Sequence[tuple[ReserveCommand, str]], shards: int
) -> list[tuple[int, list[int]]]:
    """(shard, indexes of calls in order) for each shard some call goes to. A call goes to the
    shard of its account (by CRC-32), or, when it repeats an earlier call's idempotency key,
    to that call's shard, so the key's first use is decided first, as one by one."""
    shard_of_key: dict[tuple[str, str], int] = {}
    indexes: dict[int, list[int]] = {}
    for i, (command, actor) in enumerate(calls):
        shard = shard_of_key.setdefault(
            (actor, command.idempotency_key), zlib.crc32(command.account_id.encode()) % shards
        )
        indexes.setdefault(shard, []).append(i)
    return sorted(indexes.items())


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so an abandoned call's failure is logged once, not lost.
            _log.debug("transaction failed: %r", task.exception())

    return done


def _digest(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _filter_digest(query: HistoryQuery) -> str:
    return _digest(
        [
            query.account_id,
            sorted(t.value for t in query.entry_types),
            query.start_time.isoformat() if query.start_time else None,
            query.end_time.isoformat() if query.end_time else None,
        ]
    )


def _encode_token(position: Any, filters: str) -> str:
    raw = json.dumps({"v": 1, "after": position, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str, filters: str, check: Callable[[Any], Any]) -> Any:
    """The position in a page token made for these filters, as `check` parses it; a token
    that is malformed or was made for other filters is INVALID_PAGE_TOKEN."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if data["v"] != 1 or data["f"] != filters:
            raise ValueError(token)
        return check(data["after"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise errors.InvalidPageToken() from exc


def _encode_page_token(last_entry_id: int, filters: str) -> str:
    return _encode_token(last_entry_id, filters)


def _entry_id(after: Any) -> int:
    # type() is int: JSON true is a bool, and bool is an int in Python.
    if type(after) is not int or not 1 <= after <= _ENTRY_ID_MAX:
        raise ValueError(after)
    return after


def _decode_page_token(token: str, filters: str) -> int:
    return _decode_token(token, filters, _entry_id)


def _reservation_position(after: Any) -> tuple[datetime, str]:
    create_time, reservation_id = after
    parsed = datetime.fromisoformat(create_time)
    if parsed.tzinfo is None:
        raise ValueError(create_time)
    return parsed, str(uuid.UUID(reservation_id))


def _decode_reservation_token(token: str, filters: str) -> tuple[datetime, str]:
    return _decode_token(token, filters, _reservation_position)
