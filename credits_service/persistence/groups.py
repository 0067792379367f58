"""The statements of group transactions (service/group_commit.py), each spanning tables so
that a group of any size takes three round trips. The same rows and locks as the one-table
statements of the other repositories, which name the equivalent of each step.

A group of CheckAndReserve calls: find_and_lock, expire_and_find, then place (or complete,
when it places nothing). A group of Commits: lock_for_settling, expire_and_check, capture. A
group of Releases: lock_for_settling, expire_and_check, release.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from credits_service.domain.lots import LotChange
from credits_service.domain.model import AccountStatus, BalanceSnapshot, LotDraw, Reservation
from credits_service.domain.rows import (
    Capture,
    Captured,
    CaptureTotals,
    Consumption,
    ExpiredAndFree,
    ExpiredLot,
    FoundAndLocked,
    FreeLot,
    HeldTotals,
    KeyedAccount,
    KeyRecord,
    LockedForSettling,
    LockedReservation,
    Placed,
    Released,
    ReleaseOf,
    StoredResponse,
    UsageEntry,
)
from credits_service.persistence import columns, group_sql
from credits_service.persistence.errors import TransientConflict

_MICROSECOND = timedelta(microseconds=1)
_KEY_TAKEN = "an idempotency key was stored by a concurrent transaction"


class GroupStatements:
    def __init__(self, connection: Any) -> None:
        self._connection = connection  # asyncpg, in the unit of work's transaction

    async def find_and_lock(self, keys: Sequence[KeyedAccount]) -> FoundAndLocked:
        """The keys stored already (IdempotencyRepository.get), by (scope, key); then the
        accounts of the others locked, in account order (AccountRepository.lock), the status
        of those not ACTIVE, and their plans. A key is not taken here: place or complete store
        it with its response, or the group rolls back."""
        rows = await self._connection.fetch(
            group_sql.FIND_AND_LOCK, [k.scope for k in keys], [k.idempotency_key for k in keys],
            [k.account_id for k in keys],
        )
        stored: dict[tuple[str, str], StoredResponse] = {}
        balances: dict[str, BalanceSnapshot] = {}
        inactive: dict[str, AccountStatus] = {}
        plans: dict[str, str] = {}
        pools: dict[str, str] = {}
        for row in rows:
            if row["scope"] is None:
                balances[row["account_id"]] = columns.balance(row)
                plans[row["account_id"]] = row["plan"]
                if row["pool_account_id"] is not None:
                    pools[row["account_id"]] = row["pool_account_id"]
                if row["status"] != "ACTIVE":
                    inactive[row["account_id"]] = AccountStatus(row["status"])
            else:
                stored[(row["scope"], row["idempotency_key"])] = StoredResponse(
                    bytes(row["request_hash"]), row["response"])
        return FoundAndLocked(stored, balances, inactive, plans, pools)

    async def expire_and_find(
        self, account_ids: Sequence[str], wanted: Mapping[str, int]
    ) -> ExpiredAndFree:
        """For (locked) accounts: LotRepository.expire_due, then LotRepository.free_in_order
        for the credits `wanted` per account (leaving out what this expires), and the clock."""
        rows = await self._connection.fetch(
            group_sql.EXPIRE_AND_FIND, sorted(set(account_ids)), list(wanted),
            list(wanted.values()),
        )
        expired: list[ExpiredLot] = []
        free: dict[str, list[FreeLot]] = {account_id: [] for account_id in wanted}
        now = None
        for row in rows:
            kind = row["kind"]
            if kind == 1:
                free[row["account_id"]].append(FreeLot(row["lot_id"], row["credits"]))
            elif kind == 0:
                expired.append(ExpiredLot(row["account_id"], row["lot_id"], row["credits"]))
            else:
                now = row["at"]
        assert now is not None, "the statement always returns the clock"
        return ExpiredAndFree(expired, free, now)

    async def place(
        self,
        lot_holds: Mapping[int, int],
        held: Mapping[str, HeldTotals],
        reservations: Sequence[Reservation],
        actors: Sequence[str],
        method: str,
        keys: Sequence[KeyRecord],
    ) -> Placed:
        """Write decided reservations at once: the credits each lot newly holds, per account
        what it holds if available covers it (AccountRepository.capture's conditional write),
        the ACTIVE reservations (one create_time for all) with their draws, and the keys of
        `method` with their responses (complete). Accounts available did not cover are left
        out of the balances."""
        created = reservations[0].create_time
        if any(r.create_time != created for r in reservations):
            raise ValueError("reservations placed together share one create_time")
        draws = [(r.reservation_id, d.lot_id, d.held) for r in reservations for d in r.draws]
        with _keys_taken():
            rows = await self._connection.fetch(
                group_sql.PLACE,
                list(lot_holds), list(lot_holds.values()),
                list(held), [t.credits for t in held.values()],
                [t.reservations for t in held.values()],
                [r.reservation_id for r in reservations], [r.account_id for r in reservations],
                [r.amount for r in reservations], created,
                [(r.expire_time - created) // _MICROSECOND for r in reservations],
                [columns.json_text(r.metadata) for r in reservations], list(actors),
                [d[0] for d in draws], [d[1] for d in draws], [d[2] for d in draws],
                *_key_arguments(method, keys),
                [columns.price_text(r.price) for r in reservations],
                [r.member_account_id for r in reservations],
            )
        counts = next(row for row in rows if row["account_id"] is None)
        return Placed(
            balances={row["account_id"]: columns.balance(row)
                      for row in rows if row["account_id"] is not None},
            lots=counts["lots"], reservations=counts["reservations"], draws=counts["draws"],
            keys=counts["keys"],
        )

    async def complete(self, method: str, keys: Sequence[KeyRecord]) -> None:
        """Store the keys of `method` a group decided, when it placed nothing. A key another
        transaction stored since find_and_lock raises TransientConflict."""
        with _keys_taken():
            await self._connection.execute(group_sql.COMPLETE, *_key_arguments(method, keys))

    async def lock_for_settling(self, reservation_ids: Sequence[str]) -> LockedForSettling:
        """Lock the reservations (ReservationRepository.lock, in id order) with their draws,
        then the accounts of those still ACTIVE and not due (AccountRepository.lock), and the
        clock. A reservation's draws are read with it: they change only when it leaves
        ACTIVE."""
        rows = await self._connection.fetch(
            group_sql.LOCK_FOR_SETTLING, sorted(set(reservation_ids)))
        locked: dict[str, LockedReservation] = {}
        balances: dict[str, BalanceSnapshot] = {}
        now = None
        for row in rows:
            reservation_id = row["reservation_id"]
            if reservation_id is None:
                balances[row["account_id"]] = columns.balance(row)
                continue
            now = row["now"]
            draws = tuple(LotDraw(*draw) for draw in zip(
                row["draw_lot_ids"] or (), row["draw_held"] or (), row["draw_consumed"] or (),
                strict=True))
            locked[reservation_id] = LockedReservation(
                columns.reservation(row, draws), row["is_due"])
        # A group that locked nothing never reads its clock.
        return LockedForSettling(locked, balances, now or datetime.min)

    async def expire_and_check(
        self, account_ids: Sequence[str], lot_ids: Sequence[int], owing: Sequence[str] = ()
    ) -> tuple[list[ExpiredLot], set[int], set[str]]:
        """For (locked) accounts: LotRepository.expire_due, which of `lot_ids` are expired
        after it (LotRepository.expired_among), and which of the accounts `owing` have free
        credits in unexpired lots, at once."""
        rows = await self._connection.fetch(
            group_sql.EXPIRE_AND_CHECK, sorted(set(account_ids)), sorted(set(lot_ids)),
            sorted(set(owing)))
        wanted = set(lot_ids)  # kind 1 rows are among them already; kind 0 rows may not be
        expired = [ExpiredLot(row["account_id"], row["lot_id"], row["unheld"])
                   for row in rows if row["kind"] == 0]
        return (expired,
                {row["lot_id"] for row in rows
                 if row["kind"] == 1 or (row["kind"] == 0 and row["lot_id"] in wanted)},
                {row["account_id"] for row in rows if row["kind"] == 2})

    async def capture(
        self,
        lot_changes: Sequence[LotChange],
        captures: Mapping[str, CaptureTotals],
        commits: Sequence[Capture],
        consumed: Sequence[Consumption],
        usages: Sequence[UsageEntry],
    ) -> Captured:
        """Write decided Commits at once: each lot's change (LotRepository.apply); per account
        what it held and used, if available covers it (AccountRepository.capture); each
        reservation's compare-and-set from ACTIVE to COMMITTED with what it consumed per lot
        (ReservationRepository.finish and record_consumption); their USAGE entries
        (EntryRepository.append)."""
        rows = await self._connection.fetch(
            group_sql.CAPTURE,
            [c.lot_id for c in lot_changes], [c.held_delta for c in lot_changes],
            [c.remaining_delta for c in lot_changes],
            list(captures), [c.held for c in captures.values()],
            [c.used for c in captures.values()], [c.reservations for c in captures.values()],
            [c.reservation_id for c in commits], [c.amount for c in commits],
            [c.reservation_id for c in consumed], [c.lot_id for c in consumed],
            [c.credits for c in consumed],
            [u.account_id for u in usages], [u.amount for u in usages],
            [u.balance_after for u in usages], [u.reservation_id for u in usages],
            [columns.json_text(u.metadata) for u in usages], [u.actor for u in usages],
            [c.debt for c in captures.values()], [c.debt for c in commits],
            [u.feature for u in usages], [u.units for u in usages],
            [u.rate_card_version for u in usages],
        )
        balances: dict[str, BalanceSnapshot] = {}
        entry_ids: dict[str, int] = {}
        counts = (0, 0, 0)
        for row in rows:
            kind = row["kind"]
            if kind == 0:
                balances[row["account_id"]] = columns.balance(row)
            elif kind == 1:
                entry_ids[row["reservation_id"]] = row["entry_id"]
            else:
                counts = (row["lots"], row["reservations"], row["draws"])
        return Captured(balances, entry_ids, *counts)

    async def release(
        self,
        lot_changes: Sequence[LotChange],
        held: Mapping[str, HeldTotals],
        releases: Sequence[ReleaseOf],
    ) -> Released:
        """Write decided Releases at once: each lot's change (LotRepository.apply); per account
        what it holds no more (AccountRepository.unhold); each reservation's compare-and-set
        from ACTIVE to RELEASED with its reason (ReservationRepository.finish)."""
        rows = await self._connection.fetch(
            group_sql.RELEASE,
            [c.lot_id for c in lot_changes], [c.held_delta for c in lot_changes],
            [c.remaining_delta for c in lot_changes],
            list(held), [t.credits for t in held.values()],
            [t.reservations for t in held.values()],
            [r.reservation_id for r in releases], [r.reason for r in releases],
        )
        counts = next(row for row in rows if row["account_id"] is None)
        return Released(
            balances={row["account_id"]: columns.balance(row)
                      for row in rows if row["account_id"] is not None},
            lots=counts["lots"], reservations=counts["reservations"],
        )


def _key_arguments(method: str, keys: Sequence[KeyRecord]) -> list[Any]:
    """STORE_KEYS' arguments: the keys' columns as arrays in (scope, key) order, the method
    third."""
    ordered = sorted(keys, key=lambda k: (k.scope, k.idempotency_key))
    return [[k.scope for k in ordered], [k.idempotency_key for k in ordered], method,
            [k.request_hash for k in ordered], [k.response for k in ordered]]


@contextlib.contextmanager
def _keys_taken() -> Iterator[None]:
    """A key a concurrent transaction stored (another shard's, the unary group's, a replica's)
    fails the statement and aborts the transaction: TransientConflict, so the unit of work
    rolls back and the retry replays that key."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "pk_idempotency_keys":
            raise
        raise TransientConflict(_KEY_TAKEN) from exc

